"""Choose the extractor's and detectors' defaults on every shared data set (issue #21).

One-factor-at-a-time around the default, plus the interactions the hidden grayscale set
pointed at. Every candidate is scored on every set with its protocol:

=============  ==============================================================  ==========
set            protocol                                                        metrics
=============  ==============================================================  ==========
bottle         MVTec AD bottle 256 -> 224, one-class (train/good -> test)      image, pixel AUROC, PRO
bottle_rto     the same after ``skad.datasets.make_rto`` (seed 0)              image, pixel AUROC
elpv_mono      ELPV mono cells: 80 % of the probability-0 cells train (seed 0), image AUROC
               test = the other 20 % + cells with probability >= 2/3;
               subsampled with seed 0 to <= 150 train, <= 100 test normals and
               <= 100 defective (the machine was shared by ~6 jobs: load 10)
elpv_poly      the same for poly cells                                         image AUROC
crackforest    blind / Ano: the 118 images with masks fitted and scored        pixel AUROC
               together (``exclude="self"``)
synth_<kind>   ``make_synthetic(kind, n_train=60, n_test=60, seed 0)``,        image, pixel AUROC
               kinds texture, object, mixed (128 px)
=============  ==============================================================  ==========

Candidate names: ``"default"`` is the extractor's current default, read from
``PatchFeatureExtractor()`` when the candidate is scored (its resolved settings are stored
in the row; ``--part report`` flags a row whose settings are no longer the default), and
``"default, ..."`` changes one factor of it. The other names change one factor of the
pre-#21 default (``"imagenet (pre-#21 default)"``: ImageNet normalisation, Lite blocks
2 + 4, 3 x 3 pooling with padding counted, 224 px), the base of the first grid.

The backbone runs once per (set, input normalisation, input size): the raw maps of
``blocks.2``, ``blocks.3``, ``blocks.4`` are cached under ``$SKAD_DEFAULTS_CACHE`` (default
``/tmp/skad-defaults-cache``), and every pooling / padding / layer / fusion candidate is
built from them with the extractor's own :class:`~skad.features.extractor.PatchFeatureModule`
(a check in ``--part extract`` asserts that the ``"default"`` candidate equals
``PatchFeatureExtractor().transform`` to float rounding). Input size: bottle is loaded
at ``round(size * 256 / 224)`` -> centre crop ``size`` (the same field of view as
256 -> 224, masks at ``size``); ELPV (300 px cells) and CrackForest (480 x 320) are
resized by the extractor from their files' size; the synthetic sets are drawn at 128 px,
so sizes above 224 only upsample them and are not run there.

Parts (each well under 10 minutes of 2-core CPU)::

    python benchmarks/bench_defaults.py --part extract --set bottle bottle_rto ... [--size 320]
    python benchmarks/bench_defaults.py --part extractor --set bottle ... [--candidate NAME ...]
    python benchmarks/bench_defaults.py --part detector --set bottle ... [--group G ...]
        [--candidate EXTRACTOR_CANDIDATE ...]
    python benchmarks/bench_defaults.py --part gray
    python benchmarks/bench_defaults.py --part report

Rows are appended to ``benchmarks/results/defaults_raw.jsonl`` (one per set, candidate and
metric group; a rerun replaces the rows of the same key); ``--part report`` writes the
tables and ranks to ``benchmarks/results/defaults_table.md``, with every column where a
group's default row (``DEFAULT_ROWS``) is more than 0.01 below the group's best candidate.
The commands behind the stored rows: ``benchmarks/results/defaults.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS, bottle_data, machine  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

CACHE = Path(os.environ.get("SKAD_DEFAULTS_CACHE", "/tmp/skad-defaults-cache"))
RAW = RESULTS / "defaults_raw.jsonl"
ALL_LAYERS = ("blocks.2", "blocks.3", "blocks.4")
SETS = ("bottle", "bottle_rto", "elpv_mono", "elpv_poly", "crackforest",
        "synth_texture", "synth_object", "synth_mixed")
SEED = 0
ELPV_MAX_TRAIN, ELPV_MAX_TEST_NORMAL, ELPV_MAX_DEFECT = 150, 100, 100

# input normalisations of [0, 1] RGB (replicated gray) images, (x - mean) / std
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMS = {
    "imagenet": IMAGENET,
    "lite": ((0.5,) * 3, (0.5,) * 3),
    # ImageNet's scale with one mean / std for the three channels: a gray image stays
    # gray after normalisation (isolates the per-channel offsets from the scale)
    "imagenet_mono": ((float(np.mean(IMAGENET[0])),) * 3, (float(np.mean(IMAGENET[1])),) * 3),
    "per_image": None,  # each image's own channel means / stds
}

# extractor candidates: (name, normalise, input size, layers, pooling, include_pad, upsample)
# the pre-#21 default, base of the first grid's names
BASE = dict(norm="imagenet", size=224, layers=("blocks.2", "blocks.4"), pooling=3,
            pad=True, upsample="bilinear")
OLD_DEFAULT = "imagenet (pre-#21 default)"
EXTRACTOR_CANDIDATES = {
    OLD_DEFAULT: {},
    "norm=lite": {"norm": "lite"},
    "norm=imagenet_mono": {"norm": "imagenet_mono"},
    "norm=per_image": {"norm": "per_image"},
    "pad=False": {"pad": False},
    "pooling=1": {"pooling": 1},
    "pooling=5": {"pooling": 5},
    "layers=2+3": {"layers": ("blocks.2", "blocks.3")},
    "size=320": {"size": 320},
    "lite, pad=False": {"norm": "lite", "pad": False},
    "lite, size=320": {"norm": "lite", "size": 320},
    "lite, layers=2+3": {"norm": "lite", "layers": ("blocks.2", "blocks.3")},
    "lite, pooling=5": {"norm": "lite", "pooling": 5},
    "lite, pooling=1": {"norm": "lite", "pooling": 1},
    "lite, layers=2+3, pooling=1": {"norm": "lite", "layers": ("blocks.2", "blocks.3"),
                                    "pooling": 1},
    # the current default and one-factor changes of it (resolved in candidate())
    "default": {},
    "default, size=320": {"size": 320},
}


def current_default():
    """The extractor's default settings in this script's terms (from PatchFeatureExtractor())."""
    from skad.features import PatchFeatureExtractor

    ext = PatchFeatureExtractor()
    p = ext.get_params(deep=False)
    mean_std = tuple(tuple(v) for v in ext._check_normalize())
    norm = [k for k, v in NORMS.items() if v is not None
            and tuple(tuple(x) for x in v) == mean_std]
    if not norm or not isinstance(p["input_size"], int):
        raise RuntimeError(f"the extractor's default is not in this script's grid: {p}")
    return {"norm": norm[0], "size": p["input_size"], "layers": tuple(ext._check_layers()),
            "pooling": p["pooling"], "pad": p["pool_include_pad"], "upsample": p["upsample"]}


def candidate(name):
    if name == "default" or name.startswith("default, "):
        return {**current_default(), **EXTRACTOR_CANDIDATES[name]}
    return {**BASE, **EXTRACTOR_CANDIDATES[name]}


def _settings(cand):
    """A row's record of the settings it was scored with (JSON-friendly)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cand.items()}


# ------------------------------------------------------------------------- data
def _elpv(cell_type):
    from skad.datasets import load_elpv

    d = load_elpv(DATA / "elpv", cell_type=cell_type, min_defect_probability=2 / 3,
                  ambiguous="drop")
    rng = np.random.default_rng(SEED)
    normal = np.flatnonzero(d.labels == 0)
    defect = np.flatnonzero(d.labels == 1)
    normal = rng.permutation(normal)
    n_train = int(round(0.8 * len(normal)))
    train, test_normal = normal[:n_train], normal[n_train:]
    train = np.sort(train[:ELPV_MAX_TRAIN])        # already a random order
    test_normal = test_normal[:ELPV_MAX_TEST_NORMAL]
    defect = np.sort(rng.permutation(defect)[:ELPV_MAX_DEFECT])
    test = np.concatenate([np.sort(test_normal), defect])
    return dict(train=d.images[train], test=d.images[test],
                labels=np.r_[np.zeros(len(test_normal), int), np.ones(len(defect), int)],
                masks=None, blind=False,
                note=f"{cell_type}: {len(normal)} normals, 80 % train split seed {SEED}, "
                     f"train subsampled to {len(train)}; test {len(test_normal)} of the other "
                     f"normals + {len(defect)} of the defective (p >= 2/3) cells (seed {SEED})")


def load_set(name, size=224):
    """dict(train, test, labels, masks, blind, note) of a set under its protocol.

    ``size``: the extractor's input size the set is for (bottle is cropped to it)."""
    if name.startswith("synth_") and size > 224:
        raise ValueError(f"--set {name}: drawn at 128 px; input size {size} only upsamples")
    if name in ("bottle", "bottle_rto"):
        d = bottle_data() if size == 224 else bottle_data(resize=round(size * 256 / 224),
                                                          crop=size)
        if name == "bottle_rto":
            from skad.datasets import make_rto

            d = make_rto(d, random_state=SEED)
        return dict(train=d.train_images, test=d.test_images, labels=d.test_labels,
                    masks=d.test_masks, blind=False,
                    note=f"MVTec AD bottle {round(size * 256 / 224)} -> {size}" + (", make_rto seed 0" if "rto" in name
                                                        else ""))
    if name.startswith("elpv_"):
        return _elpv(name.split("_")[1])
    if name == "crackforest":
        from skad.datasets import load_crackforest

        d = load_crackforest(DATA / "crackforest")
        return dict(train=d.images, test=d.images, labels=None, masks=d.masks, blind=True,
                    note=f"{len(d.images)} images with masks, blind (fit = scored set)")
    if name.startswith("synth_"):
        from skad.datasets import make_synthetic

        d = make_synthetic(n_train=60, n_test=60, kind=name.split("_")[1], random_state=SEED)
        return dict(train=d.train_images, test=d.test_images, labels=d.test_labels,
                    masks=d.test_masks, blind=False, note="make_synthetic 60 + 60, 128 px")
    raise ValueError(f"--set: unknown set {name!r}; expected one of {SETS}")


# ------------------------------------------------------- backbone maps, cached
def _normalise(t, norm):
    if NORMS[norm] is None:
        mean = t.mean(dim=(2, 3), keepdim=True)
        std = t.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return (t - mean) / std
    mean, std = (torch.tensor(v, dtype=t.dtype).view(1, 3, 1, 1) for v in NORMS[norm])
    return (t - mean) / std


def _raw_extractor(size):
    from skad.features import PatchFeatureExtractor

    # identity normalisation: the candidates' normalisation is applied here
    return PatchFeatureExtractor(layers=ALL_LAYERS, input_size=size, pooling=1,
                                 normalize=((0.0,) * 3, (1.0,) * 3), device="cpu")


def layer_maps(set_name, part, images, norm, size):
    """{layer: (n, C_l, h_l, w_l) float32} of the raw backbone maps, cached on disk."""
    path = CACHE / f"{set_name}_{part}_{norm}_{size}.npz"
    if path.exists():
        z = np.load(path)
        return {k: z[k.replace(".", "_")] for k in ALL_LAYERS}
    CACHE.mkdir(parents=True, exist_ok=True)
    ext = _raw_extractor(size).fit(images[:1])
    out = {k: [] for k in ALL_LAYERS}
    with torch.inference_mode():
        for start in range(0, len(images), 4):
            t = ext.to_tensor(images[start:start + 4])
            feats = ext.module_.body(_normalise(t, norm).contiguous(
                memory_format=torch.channels_last))
            for k in ALL_LAYERS:
                out[k].append(feats[k].float().numpy())
    out = {k: np.concatenate(v) for k, v in out.items()}
    np.savez(path, **{k.replace(".", "_"): v for k, v in out.items()})
    return out


class _Given(nn.Module):
    """A 'backbone' whose input already is the dict of layer maps."""

    def forward(self, maps):
        return maps


def fuse(maps, cand):
    """Patch features of a candidate from raw maps, by the extractor's own module."""
    from skad.features.extractor import PatchFeatureModule

    module = PatchFeatureModule(_Given(), cand["layers"], cand["pooling"],
                                pool_include_pad=cand["pad"], upsample=cand["upsample"])
    out = []
    with torch.inference_mode():
        n = len(next(iter(maps.values())))
        for s in range(0, n, 32):
            batch = {k: torch.from_numpy(v[s:s + 32]) for k, v in maps.items()}
            out.append(module(batch).numpy())
    return np.concatenate(out)


def features(set_name, data, cand):
    maps_tr = layer_maps(set_name, "train", data["train"], cand["norm"], cand["size"])
    tr = fuse(maps_tr, cand)
    if data["blind"]:
        return tr, tr
    maps_te = layer_maps(set_name, "test", data["test"], cand["norm"], cand["size"])
    return tr, fuse(maps_te, cand)


class _Sets:
    """The sets under their protocol, loaded once per (set, input size)."""

    def __init__(self):
        self._data = {}

    def __call__(self, name, size=224):
        key = (name, size if name in ("bottle", "bottle_rto") else 224)
        if key not in self._data:
            self._data[key] = load_set(name, size)
            self._data[key]["pro"] = name == "bottle"
        return self._data[key]


# ------------------------------------------------------------------- scoring
def score(detector, data, train, test):
    from skad.metrics import image_auroc, pixel_auroc, pro_score

    t0 = time.perf_counter()
    detector.fit(train)
    masks = data["masks"]
    out_size = masks.shape[1:] if masks is not None else None
    if out_size is None:
        scores = detector.anomaly_score(test)
        maps = None
    else:
        scores, maps = detector.score_and_map(test, output_size=out_size)
    res = {"seconds": round(time.perf_counter() - t0, 2)}
    if data["labels"] is not None:
        res["image_auroc"] = float(image_auroc(data["labels"], scores))
    if maps is not None:
        res["pixel_auroc"] = float(pixel_auroc(masks, maps))
        if data.get("pro"):
            res["pro"] = float(pro_score(masks, maps))
    return res


def patchcore(data, **params):
    from skad.detectors import PatchCore

    params = {"coreset_ratio": 0.1, "random_state": SEED, "device": "cpu", **params}
    if data["blind"]:
        params["exclude"] = "self"
    return PatchCore(**params)


def padim(data, **params):
    from skad.detectors import PaDiM

    return PaDiM(**{"random_state": SEED, "device": "cpu", **params})


def _append(rows):
    RAW.parent.mkdir(parents=True, exist_ok=True)
    old = []
    if RAW.exists():
        old = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    keys = {(r["set"], r["group"], r["candidate"]) for r in rows}
    old = [r for r in old if (r["set"], r["group"], r["candidate"]) not in keys]
    RAW.write_text("".join(json.dumps(r) + "\n" for r in old + rows))


def _log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------------- parts
def part_extract(sets, norms, sizes):
    from skad.features import PatchFeatureExtractor

    for s in sets:
        for size in sizes:
            data = load_set(s, size)
            for norm in norms:
                t = time.perf_counter()
                layer_maps(s, "train", data["train"], norm, size)
                if not data["blind"]:
                    layer_maps(s, "test", data["test"], norm, size)
                _log(f"{s} {norm} {size}: {time.perf_counter() - t:.1f} s")
        default = candidate("default")
        if default["norm"] in norms and default["size"] in sizes:
            # the cached path equals the extractor (default candidate, first images)
            ext = PatchFeatureExtractor(device="cpu").fit(data["train"][:1])
            ref = ext.transform(data["train"][:4])
            got = fuse({k: v[:4] for k, v in layer_maps(s, "train", data["train"],
                                                         default["norm"], default["size"]
                                                         ).items()}, default)
            err = float(np.abs(ref - got).max() / np.abs(ref).max())
            _log(f"{s}: cached default {default} vs PatchFeatureExtractor(): max rel. diff "
                 f"{err:.2e}")
            assert err < 1e-4, err


def part_extractor(sets, names):
    load = _Sets()
    for s in sets:
        rows = []
        for name in names:
            cand = candidate(name)
            data = load(s, cand["size"])
            tr, te = features(s, data, cand)
            res = score(patchcore(data), data, tr, te)
            rows.append({"set": s, "group": "extractor (PatchCore 10 %)", "candidate": name,
                         **res, "settings": _settings(cand)})
            _log(f"{s} | {name}: {res}")
        _append(rows)


DETECTOR_CANDIDATES = {
    # group: {candidate: (extractor candidate, detector factory, params)}; a candidate
    # equal to an extractor-grid row (PatchCore's defaults) reuses that row
    "PatchCore coreset_ratio": {
        f"{ext_name} | coreset={r}": (ext_name, patchcore, {"coreset_ratio": r})
        for ext_name in (OLD_DEFAULT, "norm=lite", "default") for r in (0.01, 0.1)
    },
    # K: b of eq. 7, the neighbourhood N_b(m*) of the image score's reweighting (the patch
    # score is the distance to the single nearest bank patch, as in the paper). b = 1 is
    # not a candidate: N_b(m*) = {m*} makes the weight 1 - exp(u) / exp(u) = 0 for every
    # image (constant image scores)
    "PatchCore n_neighbors (eq. 7 b)": {
        f"default | K={k}": ("default", patchcore, {"n_neighbors": k}) for k in (3, 9, 27)
    },
    "PaDiM channels / features": {
        **{f"{ext_name} | n_features={nf}": (ext_name, padim, {"n_features": nf})
           for ext_name in (OLD_DEFAULT, "norm=lite", "paper (pool 1, nearest)",
                            "lite, paper (pool 1, nearest)")
           for nf in (100, 152)},
        # with the default's 120 channels: PaDiM's default 100 and all of them, on the
        # default features and on the paper's fusion of the default layers
        **{f"{ext_name} | n_features={nf or 'all'}": (ext_name, padim, {"n_features": nf})
           for ext_name in ("default", "default, paper (pool 1, nearest)")
           for nf in (100, None)},
    },
}
EXTRACTOR_CANDIDATES["paper (pool 1, nearest)"] = {"pooling": 1, "upsample": "nearest"}
EXTRACTOR_CANDIDATES["lite, paper (pool 1, nearest)"] = {"norm": "lite", "pooling": 1,
                                                         "upsample": "nearest"}
EXTRACTOR_CANDIDATES["default, paper (pool 1, nearest)"] = {"pooling": 1, "upsample": "nearest"}


#: the row of each group that is skad's default (extractor and detector defaults together)
DEFAULT_ROWS = {
    "extractor (PatchCore 10 %)": "default",
    "PatchCore coreset_ratio": "default | coreset=0.1",
    "PatchCore n_neighbors (eq. 7 b)": "default | K=9",
    "PaDiM channels / features": "default | n_features=100",
}


def _existing(set_name, candidate_name):
    if not RAW.exists():
        return None
    for line in RAW.read_text().splitlines():
        r = json.loads(line)
        if (r["set"], r["group"], r["candidate"]) == (set_name, "extractor (PatchCore 10 %)",
                                                       candidate_name):
            return r
    return None


def part_detector(sets, groups, ext_names=None):
    from skad.detectors import PatchCore

    defaults = PatchCore(coreset_ratio=0.1).get_params()
    load = _Sets()
    for s in sets:
        for group in groups:
            rows = []
            for name, (ext_name, factory, params) in DETECTOR_CANDIDATES[group].items():
                if ext_names and ext_name not in ext_names:
                    continue
                cand = candidate(ext_name)
                data = load(s, cand["size"])
                if factory is padim and data["blind"]:
                    continue  # PaDiM has no blind mode (a Gaussian per position of the set)
                same = _existing(s, ext_name) if (
                    factory is patchcore and all(defaults[k] == v for k, v in params.items())
                ) else None
                if same is not None and same.get("settings", _settings(cand)) == _settings(
                        cand):
                    res = {k: v for k, v in same.items() if k not in ("set", "group",
                                                                      "candidate",
                                                                      "settings")}
                else:
                    tr, te = features(s, data, cand)
                    res = score(factory(data, **params), data, tr, te)
                rows.append({"set": s, "group": group, "candidate": name, **res,
                             "settings": _settings(cand)})
                _log(f"{s} | {name}: {res}")
            _append(rows)


def part_gray(sets):
    """Why ImageNet mean/std behaves differently on gray input: stem statistics.

    For each normalisation, the stem convolution + BN output before its ReLU6
    (``conv_stem`` / ``bn1`` of timm's Lite) on the first 32 training images: the
    fraction of units clipped at 0 and at 6, and the input range and channel spread.
    """
    from skad.features.backbones import build_backbone

    model = build_backbone("efficientnet_lite0").eval()
    rows = []
    for s in sets:
        data = load_set(s)
        ext = _raw_extractor(224).fit(data["train"][:1])
        x01 = ext.to_tensor(data["train"][:32])
        for norm in NORMS:
            x = _normalise(x01, norm)
            bn = model.bn1  # BatchNormAct2d: batch norm, then ReLU6; take it before the act
            with torch.inference_mode():
                pre = torch.nn.functional.batch_norm(
                    model.conv_stem(x), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                    False, 0.0, bn.eps)
            rows.append({
                "set": s, "norm": norm,
                "input min": float(x.min()), "input max": float(x.max()),
                "input channel spread": float((x.max(1).values - x.min(1).values).mean()),
                "stem <= 0": float((pre <= 0).float().mean()),
                "stem >= 6": float((pre >= 6).float().mean()),
                "stem mean": float(pre.clamp(0, 6).mean()),
            })
            _log(rows[-1])
    (RESULTS / "defaults_gray.json").write_text(json.dumps({"machine": machine(),
                                                            "rows": rows}, indent=1))


# ---------------------------------------------------------------------- report
METRICS = (("image_auroc", "I"), ("pixel_auroc", "P"))


def _columns(rows):
    cols = []
    for s in SETS:
        for key, short in METRICS:
            if any(r["set"] == s and key in r for r in rows):
                cols.append((s, key, f"{s} {short}"))
    return cols


def _ranks(values):
    """Average ranks (1 = best, higher value better) of values rounded to 4 decimals."""
    v = np.round(np.asarray(values, float), 4)
    order = (-v).argsort(kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for u in np.unique(v):
        ranks[v == u] = ranks[v == u].mean()
    return ranks


def rank_table(rows):
    """Markdown table of one group: every candidate's value per (set, metric), its mean
    and worst rank, and its largest loss against the column's best candidate."""
    cols = _columns(rows)
    cands = list(dict.fromkeys(r["candidate"] for r in rows))
    val = {(r["candidate"], r["set"], k): r[k] for r in rows for k, _ in METRICS if k in r}
    complete = [c for c in cands if all((c, s, k) in val for s, k, _ in cols)]
    ranks = {c: [] for c in complete}
    loss = {c: [] for c in complete}
    for s, k, name in cols:
        vs = [val[(c, s, k)] for c in complete]
        for c, r in zip(complete, _ranks(vs)):
            ranks[c].append(r)
            loss[c].append((max(vs) - val[(c, s, k)], name))
    head = ["candidate"] + [n for _, _, n in cols] + ["mean rank", "worst rank",
                                                      "max loss (set)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(cands, key=lambda c: (np.mean(ranks[c]) if c in ranks else np.inf))
    for c in order:
        cells = [f"{val[(c, s, k)]:.4f}" if (c, s, k) in val else "" for s, k, _ in cols]
        if c in ranks:
            worst = max(loss[c])
            cells += [f"{np.mean(ranks[c]):.2f}", f"{max(ranks[c]):.1f}",
                      f"{worst[0]:.4f} ({worst[1]})"]
        else:  # run on some sets only: its loss where it ran
            worst = max((max(val[(o, s, k)] for o in cands if (o, s, k) in val)
                         - val[(c, s, k)], name) for s, k, name in cols if (c, s, k) in val)
            cells += ["-", "-", f"{worst[0]:.4f} ({worst[1]}; sets where run)"]
        lines.append("| " + " | ".join([_cell(c)] + cells) + " |")
    return "\n".join(lines)


def _cell(text):
    return text.replace("|", "\\|")


def _describe(c):
    layers = "+".join(n.split(".")[-1] for n in c["layers"])
    return (f"normalize {c['norm']}, layers {layers}, pooling {c['pooling']}, include_pad "
            f"{c['pad']}, upsample {c['upsample']}, {c['size']} px")


def _merge_default_aliases(rows):
    """Rows of a candidate that is today's default under another name (scored before it
    became the default) are shown once, as ``default (= name)``, when their values agree
    with the default's rows (so the ranks do not count one setting twice)."""
    default = candidate("default")
    keys = ("image_auroc", "pixel_auroc", "pro")
    for alias in EXTRACTOR_CANDIDATES:
        if alias == "default" or candidate(alias) != default:
            continue
        mine = {(r["set"], r["group"]): r for r in rows if r["candidate"] == alias}
        ref = {(r["set"], r["group"]): r for r in rows if r["candidate"] == "default"}
        if mine and all(k in ref and all(ref[k].get(m) == r.get(m) for m in keys)
                        for k, r in mine.items()):
            rows = [r for r in rows if r["candidate"] != alias]
            rows = [{**r, "candidate": f"default (= {alias})"} if r["candidate"] == "default"
                    else r for r in rows]
    return rows


def report(command):
    rows = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    stale = sorted({(r["set"], r["candidate"]) for r in rows
                    if r["candidate"].split(" | ")[0].split(",")[0] == "default"
                    and r.get("settings") != _settings(candidate(r["candidate"].split(" | ")[0]))})
    if stale:
        raise SystemExit(f"rows of 'default' candidates scored with other settings than "
                         f"today's default {current_default()}: {stale}; rerun them")
    m = machine()
    out = ["# defaults: every candidate on every shared set (issue #21)", "",
           f"- machine: {m['nproc']} cores, {m['cpu']}; torch {m['torch']}; load at write "
           f"time `{m['uptime']}`",
           f"- rows: `{RAW.relative_to(RESULTS.parent.parent)}`; this table: `{command}`",
           "- I = image AUROC, P = pixel AUROC; ranks: 1 = best, ties (4 decimals) share "
           "their average rank; max loss = largest shortfall against the best candidate "
           "of a column",
           (f"- `default` = today's `PatchFeatureExtractor()` ({_describe(current_default())})"
            " and PatchCore's defaults (10 % coreset in this grid, K = 9); `default, ...` "
            f"changes one factor of it; the other names change one factor of `{OLD_DEFAULT}` "
            f"({_describe(BASE)})"), ""]
    rows = _merge_default_aliases(rows)
    for g in groups:
        out += [f"## {g}", "", rank_table([r for r in rows if r["group"] == g]), ""]
    out += ["## The defaults' losses above 0.01", "",
            ("Every (set, metric) column where a group's default row is more than 0.01 "
             "below the group's best candidate (the issue's criterion; the trade-offs are "
             "discussed in `defaults.md`)."), "",
            "| group | default row | column | default | best | loss | best candidate |",
            "|---|---|---|---|---|---|---|"]
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        name = next((r["candidate"] for r in mine if r["candidate"] == DEFAULT_ROWS.get(g)
                     or r["candidate"].startswith(f"{DEFAULT_ROWS.get(g)} (=")), None)
        if name is None:
            continue
        for s, k, col in _columns(mine):
            vals = {r["candidate"]: r[k] for r in mine if r["set"] == s and k in r}
            best = max(vals, key=vals.get)
            if name in vals and round(vals[best] - vals[name], 4) > 0.01:
                out.append(f"| {g} | {_cell(name)} | {col} | {vals[name]:.4f} | "
                           f"{vals[best]:.4f} | {vals[best] - vals[name]:.4f} | "
                           f"{_cell(best)} |")
    out.append("")
    pro = [r for r in rows if "pro" in r]
    if pro:
        out += ["## bottle PRO (FPR <= 0.3)", "", "| group | candidate | PRO |", "|---|---|---|"]
        out += [f"| {r['group']} | {_cell(r['candidate'])} | {r['pro']:.4f} |" for r in pro]
    (RESULTS / "defaults_table.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", required=True,
                   choices=["extract", "extractor", "detector", "gray", "report"])
    p.add_argument("--set", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--norm", nargs="+", default=list(NORMS), choices=list(NORMS))
    p.add_argument("--size", nargs="+", type=int, default=[224])
    p.add_argument("--candidate", nargs="+", default=None,
                   help="extractor candidates (default: all); with --part detector: only "
                        "the group candidates on these extractor candidates")
    p.add_argument("--group", nargs="+", default=list(DETECTOR_CANDIDATES),
                   choices=list(DETECTOR_CANDIDATES))
    a = p.parse_args(argv)
    torch.manual_seed(SEED)
    if a.part == "extract":
        part_extract(a.set, a.norm, a.size)
    elif a.part == "extractor":
        names = a.candidate or [n for n in EXTRACTOR_CANDIDATES if "paper" not in n]
        unknown = set(names) - set(EXTRACTOR_CANDIDATES)
        if unknown:
            p.error(f"--candidate: unknown {sorted(unknown)}; expected {list(EXTRACTOR_CANDIDATES)}")
        part_extractor(a.set, names)
    elif a.part == "detector":
        part_detector(a.set, a.group, a.candidate)
    elif a.part == "gray":
        part_gray(a.set)
    else:
        report(" ".join(["python benchmarks/bench_defaults.py"] + sys.argv[1:]))


if __name__ == "__main__":
    main()
