"""PatchCluster (blind anomaly detection) vs PatchCore, SPADE, PaDiM and LOF on real data.

Reproduces the comparisons of the PatchCluster paper on the shared data:

- blind settings built from MVTec AD bottle with ``skad.datasets.blind_setting``:
  Mix (train + test), Test (test only), Ano (defective test images only; no image
  AUROC); every method is fitted on the set and scores the same set, no labels;
- CrackForest (every image has a crack): blind, pixel metrics only;
- the one-class setting (fit on train/good, score test);
- the K sweep (paper Table 5) and the coreset sweep (Table 7) on one setting;
- ``coreset_share``: the share of defect patches the greedy coreset keeps (why coresets
  hurt blind scoring).

Methods: PatchCluster full bank (K = 100) and 25 % coreset (K = 25), PatchCore-10 %
blind (with and without ``exclude_self``), SPADE with the image itself excluded, PaDiM,
and LOF over the full patch bank with 100 neighbours
(``PatchOutlierDetector(LocalOutlierFactor(n_neighbors=100), max_patches=None)``).

Features: efficientnet_lite0, blocks 2+4 (strides 8 + 16, 40 + 112 = 152 channels),
3x3 local pooling (border windows without the padding, ``pool_include_pad=False``),
ImageNet normalisation; bottle resized to 256 and centre-cropped to
224 (28x28 patches); CrackForest resized from 320x480 to 224x336 (H x W, aspect kept,
28x42 patches). Features are cached under ``benchmarks/.cache/``.

Each stage appends JSON lines to ``benchmarks/results/patchcluster.jsonl``;
``--report`` turns them into ``benchmarks/results/patchcluster.md``.

Usage::

    python benchmarks/bench_patchcluster.py --stages test ano
    python benchmarks/bench_patchcluster.py --stages mix --max-images 100
    python benchmarks/bench_patchcluster.py --stages crackforest coreset_share
    python benchmarks/bench_patchcluster.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
JSONL = RESULTS / "patchcluster.jsonl"
DATA = Path(os.environ.get("SKAD_SHARED_DATA", REPO.parent / "shared" / "data"))
BACKBONE = "efficientnet_lite0"
CRACK_SIZE = (224, 336)  # CrackForest 320x480 -> 224x336 (H x W), aspect ratio kept
SEED = 0


# -- data and features ----------------------------------------------------------------
def _extract(images, input_size, threads):
    from skad.features import PatchFeatureExtractor

    # pool_include_pad=False, blocks 2 + 4, ImageNet statistics: the features every row
    # of results/patchcluster.md was measured on (the extractor's defaults of the time;
    # the cache files' names do not hold the parameters)
    ext = PatchFeatureExtractor(
        backbone=BACKBONE, input_size=input_size, device="cpu", batch_size=8, n_threads=threads,
        pool_include_pad=False, layers=("blocks.2", "blocks.4"), normalize="imagenet",
    )
    return ext.fit(images[:1]).transform(images)


def bottle(threads):
    """Bottle images / masks (256 -> 224) and cached features (train, test)."""
    from skad.datasets import load_mvtec

    data = load_mvtec(DATA / "mvtec_ad", "bottle", resize=256, crop=224)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {}
    for part in ("train", "test"):
        path = CACHE / f"patchcluster_bottle_{part}_{BACKBONE}.npy"
        if not path.exists():
            np.save(path, _extract(data[f"{part}_images"], 224, threads))
        out[part] = np.load(path)
    data.train_features, data.test_features = out["train"], out["test"]
    return data


def crackforest(threads):
    from skad.datasets import load_crackforest

    data = load_crackforest(DATA / "crackforest", resize=CRACK_SIZE)
    path = CACHE / f"patchcluster_crackforest_{BACKBONE}_{CRACK_SIZE[0]}x{CRACK_SIZE[1]}.npy"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        np.save(path, _extract(data.images, CRACK_SIZE, threads))
    return np.load(path), np.asarray(data.labels), np.asarray(data.masks)


def blind_features(data, setting):
    """Features, labels and masks of a blind setting, in blind_setting's order."""
    from skad.datasets import blind_setting

    feats = data.test_features
    if setting == "mix":
        feats = np.concatenate([data.train_features, data.test_features])
    elif setting == "ano":
        feats = feats[np.asarray(data.test_labels) == 1]
    _, labels, masks = blind_setting(data, setting)
    return feats, np.asarray(labels), np.asarray(masks)


def subsample(feats, labels, masks, max_images, seed=SEED):
    """Stratified random subset of at most ``max_images`` images (proportions kept)."""
    n = len(labels)
    if max_images is None or max_images >= n:
        return feats, labels, masks, None
    rng = np.random.default_rng(seed)
    keep = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        k = max(1, int(round(max_images * idx.size / n)))
        keep.append(rng.choice(idx, size=min(k, idx.size), replace=False))
    keep = np.sort(np.concatenate(keep))
    return feats[keep], labels[keep], masks[keep], keep.tolist()


# -- LOF baseline ----------------------------------------------------------------------
def lof_blind(X, n_neighbors=100):
    """The paper's LOF baseline: each patch's LOF among all patches of X (blind).

    ``PatchOutlierDetector(LocalOutlierFactor(n_neighbors=100), max_patches=None)``:
    scikit-learn's ``novelty=False`` LOF on the full patch bank, with the exact
    self-excluded 100-NN graph from skad's shared kNN kernel (``metric="precomputed"``).
    """
    from sklearn.neighbors import LocalOutlierFactor

    from skad.detectors import PatchOutlierDetector

    det = PatchOutlierDetector(LocalOutlierFactor(n_neighbors=n_neighbors), max_patches=None,
                               device="cpu").fit(X)
    return det.anomaly_score(X), det.anomaly_map(X)


# -- evaluation ------------------------------------------------------------------------
def evaluate(scores, maps, labels, masks, sigma=4.0):
    from skad._kernels.maps import gaussian_smooth, upsample_maps
    from skad.metrics import image_auroc, pixel_auroc, pro_score

    up = gaussian_smooth(upsample_maps(np.asarray(maps, np.float32), masks.shape[1:]), sigma)
    out = {
        "pixel_auroc": float(pixel_auroc(masks, up)),
        "pro": float(pro_score(masks, up)),
    }
    if len(np.unique(labels)) == 2:
        out["image_auroc"] = float(image_auroc(labels, scores))
    return out


def command():
    """The command line of this run, as written beside its numbers in the report."""
    return " ".join(["python", "benchmarks/bench_patchcluster.py"] + sys.argv[1:])


def record(stage, setting, method, metrics, seconds, **extra):
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    row = {"stage": stage, "setting": setting, "method": method, **metrics,
           "seconds": round(seconds, 1), **extra, "command": command(),
           "load": round(load, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(JSONL, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_method(stage, setting, name, fn, labels, masks, **extra):
    t0 = time.perf_counter()
    scores, maps = fn()
    seconds = time.perf_counter() - t0
    record(stage, setting, name, evaluate(scores, maps, labels, masks), seconds, **extra)


def pc(X, **params):
    """PatchCluster fitted on X and scoring X (blind)."""
    from skad.detectors.patchcluster import PatchCluster

    det = PatchCluster(random_state=SEED, device="cpu", **params).fit(X)
    return det.anomaly_score(X), det.anomaly_map(X)


#: PatchCluster's image score of eq. 3 for each ``reweight`` (the report's labels)
READINGS = {None: "max patch (no reweight)", "mean": "eq. 3 as printed",
            "nearest": "PatchCore weight"}


def run_pc(stage, setting, name, X, labels, masks, extra, **params):
    """Blind PatchCluster, one fit per image score of eq. 3 (``reweight``).

    The patch maps do not depend on ``reweight`` (checked: the fits give the same maps),
    so the pixel metrics are computed once; each reading's time is its own fit and
    scoring.
    """
    from skad.metrics import image_auroc

    pix = maps = None
    for reweight, label in READINGS.items():
        t0 = time.perf_counter()
        scores, maps_r = pc(X, reweight=reweight, **params)
        seconds = time.perf_counter() - t0
        if maps is None:
            maps = maps_r
            pix = evaluate(np.zeros(len(labels)), maps, labels, masks)
            np.save(CACHE / f"patchcluster_maps_{stage}_{name.split()[0]}.npy", maps)
        np.testing.assert_array_equal(maps_r, maps)
        row = dict(pix)
        if "image_auroc" in row:
            row["image_auroc"] = float(image_auroc(labels, scores))
        record(stage, setting, f"{name} [{label}]", row, seconds, **extra)


def blind_methods(stage, setting, X, labels, masks, methods, extra):
    from skad.detectors import PaDiM, PatchCore, SPADE

    if "pc100" in methods:
        run_pc(stage, setting, "PatchCluster-100% (K=100)", X, labels, masks, extra)
    if "pc25" in methods:
        run_pc(stage, setting, "PatchCluster-25% (K=25)", X, labels, masks, extra,
               coreset_ratio=0.25)
    if "patchcore" in methods:
        for excl in (None, "self"):
            # one fit each: exclude is resolved in fit (exclude_); exact search as every
            # other method here (PatchCore's "auto" would use an IVF index from 10k
            # bank rows)
            t0 = time.perf_counter()
            core = PatchCore(coreset_ratio=0.1, nn_method="exact", exclude=excl,
                             random_state=SEED, device="cpu").fit(X)
            s, m = core.anomaly_score(X), core.anomaly_map(X)
            name = "PatchCore-10%" + (" exclude_self" if excl else "")  # earlier rows' name
            record(stage, setting, name, evaluate(s, m, labels, masks),
                   time.perf_counter() - t0, nn_method=core.nn_method_, **extra)
    if "spade" in methods:
        def spade():
            det = SPADE(exclude="self", device="cpu").fit(X)
            return det.anomaly_score(X), det.anomaly_map(X)
        run_method(stage, setting, "SPADE (own image excluded)", spade, labels, masks, **extra)
    if "padim" in methods:
        def padim():
            det = PaDiM(random_state=SEED, device="cpu").fit(X)
            return det.anomaly_score(X), det.anomaly_map(X)
        run_method(stage, setting, "PaDiM", padim, labels, masks, **extra)
    if "lof" in methods:
        run_method(stage, setting, "LOF (full bank, 100 nn)", lambda: lof_blind(X), labels,
                   masks, **extra)


ALL = ["pc100", "pc25", "patchcore", "spade", "padim", "lof"]


def stage_blind(setting, args):
    data = bottle(args.threads)
    X, labels, masks = blind_features(data, setting)
    X, labels, masks, keep = subsample(X, labels, masks, args.max_images)
    extra = {"n_images": int(len(labels)), "n_anomalous": int(labels.sum())}
    if keep is not None:
        extra["subsample_seed"] = SEED
    blind_methods(setting, setting, X, labels, masks, args.methods, extra)


def stage_crackforest(args):
    X, labels, masks = crackforest(args.threads)
    X, labels, masks, keep = subsample(X, labels, masks, args.max_images)
    extra = {"n_images": int(len(labels)), "n_anomalous": int(labels.sum())}
    if keep is not None:
        extra["subsample_seed"] = SEED
    blind_methods("crackforest", "crackforest", X, labels, masks, args.methods, extra)


def stage_oneclass(args):
    from skad.detectors import PatchCore
    from skad.detectors.patchcluster import PatchCluster

    data = bottle(args.threads)
    Xtr, Xte = data.train_features, data.test_features
    labels, masks = np.asarray(data.test_labels), np.asarray(data.test_masks)
    extra = {"n_train": len(Xtr), "n_images": len(Xte)}
    r = args.oneclass_ratio
    pct = f"{r * 100:g}%"
    for name, make in [
        (f"PatchCluster-{pct}", lambda: PatchCluster(coreset_ratio=r, random_state=SEED,
                                                     device="cpu")),
        (f"PatchCore-{pct}", lambda: PatchCore(coreset_ratio=r, nn_method="exact",
                                               random_state=SEED, device="cpu")),
    ]:
        def fn(make=make):
            det = make().fit(Xtr)
            return det.anomaly_score(Xte), det.anomaly_map(Xte)
        run_method("oneclass", "one-class", name, fn, labels, masks, **extra)


def stage_ksweep(args):
    """Table 5: PatchCluster-100% for several K from ONE exact search with K = max(K).

    The patch map of ``PatchCluster(n_neighbors=K)`` is the mean of the first K
    ascending self-excluded distances, so one search with the largest K gives every
    map exactly (pixel AUROC / PRO identical to separate fits; the K = 100 row can be
    compared with the main table). Image scores here are the maximum patch score
    (no eq. 3 reweighting, which would need each K's own nearest-neighbour sets).
    """
    from skad._kernels import patch_rows
    from skad._kernels.knn import knn_search

    data = bottle(args.threads)
    X, labels, masks = blind_features(data, args.sweep_setting)
    n, _, h, w = X.shape
    rows = patch_rows(X)
    ids = np.arange(rows.shape[0])
    t0 = time.perf_counter()
    dist, _ = knn_search(rows, rows, max(args.k_values), query_groups=ids, bank_groups=ids)
    search_s = time.perf_counter() - t0
    csum = np.cumsum(dist.astype(np.float64), axis=1)
    for k in sorted(args.k_values):
        maps = (csum[:, k - 1] / k).astype(np.float32).reshape(n, h, w)  # eq. 2
        record("ksweep", args.sweep_setting, f"PatchCluster-100% K={k}",
               evaluate(maps.reshape(n, -1).max(1), maps, labels, masks), search_s,
               K=k, n_images=int(n), note="one shared exact search; image score = max patch")


def stage_coreset_sweep(args):
    data = bottle(args.threads)
    X, labels, masks = blind_features(data, args.sweep_setting)
    extra = {"n_images": int(len(labels))}
    for r in args.ratios:
        run_method("coreset_sweep", args.sweep_setting, f"PatchCluster-{int(r * 100)}%",
                   lambda r=r: pc(X, coreset_ratio=r), labels, masks, ratio=r, **extra)


def stage_coreset_share(args):
    """Why coresets hurt blind scoring: the share of defect patches the greedy coreset keeps.

    A patch (8x8 pixel cell of the 224 px image at stride 8) is a defect patch when
    any pixel of its cell is in the ground-truth mask. The selection is the one
    ``PatchCluster(coreset_ratio=r, random_state=0)`` makes (same kernel, same seed
    derivation as its ``_fit``).
    """
    from sklearn.utils import check_random_state

    from skad._kernels import patch_rows
    from skad._kernels.coreset import greedy_coreset

    data = bottle(args.threads)
    for setting in args.share_settings:
        X, labels, masks = blind_features(data, setting)
        n, _, h, w = X.shape
        H, W = masks.shape[1:]
        cell = (masks.reshape(n, h, H // h, w, W // w) > 0).any(axis=(2, 4)).reshape(-1)
        rows = patch_rows(X)
        for r in args.ratios:
            rng = check_random_state(SEED)
            t0 = time.perf_counter()
            sel = greedy_coreset(rows, max(1, int(round(r * rows.shape[0]))), projection_dim=128,
                                 random_state=rng.randint(np.iinfo(np.int32).max), device="cpu")
            seconds = time.perf_counter() - t0
            kept = np.zeros(rows.shape[0], bool)
            kept[np.asarray(sel)] = True
            record("coreset_share", setting, f"greedy coreset {r * 100:g}%",
                   {"defect_share_all": float(cell.mean()),
                    "defect_share_bank": float(cell[kept].mean()),
                    "kept_of_defect": float(kept[cell].mean()),
                    "kept_of_normal": float(kept[~cell].mean())},
                   seconds, ratio=r, n_images=int(n), n_anomalous=int(labels.sum()))


# -- report ----------------------------------------------------------------------------
BEGIN, END = "<!-- report:begin (generated by --report) -->", "<!-- report:end -->"
STAGES = ["mix", "test", "ano", "crackforest", "oneclass", "ksweep", "coreset_sweep",
          "coreset_share"]
BLIND = ["mix", "test", "ano", "crackforest"]
PC_IMAGE = "[PatchCore weight]"  # PatchCluster's default image score (reweight="nearest")


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def _groups(rows):
    """Rows with a recorded command, by (stage, setting, images, subsample); last run wins."""
    groups = {}
    for r in rows:
        if "command" not in r:
            continue
        key = (r["stage"], r["setting"], r.get("n_images"), r.get("subsample_seed"))
        groups.setdefault(key, {})[r["method"]] = r
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -(kv[0][2] or 0)))


def _title(key, r0):
    stage, setting, n, seed = key
    head = f"{stage} ({setting}, {n} images"
    if "n_anomalous" in r0:
        head += f", {r0['n_anomalous']} defective"
    if "n_train" in r0:
        head += f", fitted on {r0['n_train']} train/good"
    if seed is not None:
        head += f", stratified random subsample, seed {seed}"
    return head + ")"


def _summary(groups):
    """PatchCluster vs each competitor in the blind settings (differences per metric)."""
    lines = ["| setting | metric | PatchCluster-100% | PatchCluster-25% | PatchCore-10% | "
             "PatchCore-10% exclude_self | SPADE | PaDiM | LOF | PC-100% - PatchCore | "
             "PC-25% - PatchCore | PC-100% - best other | PC-25% - best other |",
             "|---" * 13 + "|"]
    cols = [("PatchCluster-100%", f"PatchCluster-100% (K=100) {PC_IMAGE}"),
            ("PatchCluster-25%", f"PatchCluster-25% (K=25) {PC_IMAGE}"),
            ("PatchCore-10%", "PatchCore-10%"),
            ("PatchCore-10% exclude_self", "PatchCore-10% exclude_self"),
            ("SPADE", "SPADE (own image excluded)"), ("PaDiM", "PaDiM"),
            ("LOF", "LOF (full bank, 100 nn)")]
    for key, methods in groups:
        if key[0] not in BLIND:
            continue
        name = f"{key[0]} ({key[2]} images{', subsample' if key[3] is not None else ''})"
        for metric in ("image_auroc", "pixel_auroc", "pro"):
            vals = {c: methods.get(m, {}).get(metric) for c, m in cols}
            if all(v is None for v in vals.values()):
                continue
            others = [v for c, v in vals.items()
                      if not c.startswith("PatchCluster") and v is not None]
            best = max(others) if others else None

            def diff(a, b):
                return "-" if a is None or b is None else f"{a - b:+.3f}"

            pc100, pc25 = vals["PatchCluster-100%"], vals["PatchCluster-25%"]
            core = vals["PatchCore-10%"]
            lines.append(
                f"| {name} | {metric.replace('_', ' ')} | "
                + " | ".join(_fmt(v) for v in vals.values())
                + f" | {diff(pc100, core)} | {diff(pc25, core)} | {diff(pc100, best)} | "
                f"{diff(pc25, best)} |")
    return lines


def report(path=None):
    """Tables of the JSON lines, written between the markers of ``path`` (and returned)."""
    rows = [json.loads(line) for line in open(JSONL)]
    groups = _groups(rows)
    n_skipped = sum("command" not in r for r in rows)
    lines = [BEGIN, "",
             f"Generated from `benchmarks/results/patchcluster.jsonl` by "
             f"`python benchmarks/bench_patchcluster.py --report`. Each row's `command` is "
             f"the run that measured it; `seconds` is wall-clock on the shared 2-core "
             f"machine (load average in the `load` column, where recorded), not a speed "
             f"claim. {n_skipped} older rows without a recorded command (superseded by "
             f"reruns) are left out. The image AUROC of PatchCluster rows is the one in "
             f"brackets (`{PC_IMAGE}` = the default `reweight=\"nearest\"`).", "",
             "### Summary: PatchCluster vs the others in the blind settings", ""]
    lines += _summary(groups) + [""]
    share = [r for key, methods in groups if key[0] == "coreset_share"
             for r in methods.values()]
    groups = [(k, m) for k, m in groups if k[0] != "coreset_share"]
    for key, methods in groups:
        r0 = next(iter(methods.values()))
        lines += [f"### {_title(key, r0)}", "",
                  "| method | image AUROC | pixel AUROC | PRO | seconds | load | command |",
                  "|---|---|---|---|---|---|---|"]
        for m, r in methods.items():
            dagger = " (+)" if "command_note" in r else ""
            lines.append(f"| {m} | {_fmt(r.get('image_auroc'))} | {_fmt(r['pixel_auroc'])} | "
                         f"{_fmt(r['pro'])} | {r['seconds']} | {r.get('load', '-')} | "
                         f"`{r['command']}`{dagger} |")
        notes = sorted({r["note"] for r in methods.values() if "note" in r}
                       | {"(+) " + r["command_note"] for r in methods.values()
                          if "command_note" in r})
        lines += [""] + [f"Note: {n}" for n in notes] + ([""] if notes else [])
    if share:
        lines += ["### coreset_share (defect patches kept by the greedy coreset, bottle)", "",
                  "| setting | coreset | defect share, all patches | defect share, coreset | "
                  "kept of defect patches | kept of normal patches | command |",
                  "|---|---|---|---|---|---|---|"]
        for r in share:
            lines.append(f"| {r['setting']} ({r['n_images']} images) | {r['method']} | "
                         f"{r['defect_share_all']:.4f} | {r['defect_share_bank']:.4f} | "
                         f"{r['kept_of_defect']:.3f} | {r['kept_of_normal']:.3f} | "
                         f"`{r['command']}` |")
        lines.append("")
    lines.append(END)
    text = "\n".join(lines)
    if path is not None:
        old = Path(path).read_text() if Path(path).exists() else ""
        if BEGIN in old and END in old:
            text = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        Path(path).write_text(text if text.endswith("\n") else text + "\n")
    return text


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {cpu}, {platform.platform()}, load average {load:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", nargs="*", default=[],
                   choices=["mix", "test", "ano", "crackforest", "oneclass", "ksweep",
                            "coreset_sweep", "coreset_share"])
    p.add_argument("--methods", nargs="*", default=ALL, choices=ALL)
    p.add_argument("--oneclass-ratio", type=float, default=0.25,
                   help="coreset ratio of both PatchCluster and PatchCore in the one-class stage")
    p.add_argument("--max-images", type=int, default=None,
                   help="stratified random subset of the setting's images (seed 0)")
    p.add_argument("--sweep-setting", default="ano", choices=["mix", "test", "ano"])
    p.add_argument("--k-values", type=int, nargs="*", default=[1, 5, 25, 50, 100, 200])
    p.add_argument("--ratios", type=float, nargs="*", default=[0.01, 0.1, 0.25])
    p.add_argument("--share-settings", nargs="*", default=["mix", "test", "ano"],
                   choices=["mix", "test", "ano"], help="settings of the coreset_share stage")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}", flush=True)
    print("# " + " ".join([sys.executable.split("/")[-1]] + sys.argv), flush=True)
    for stage in args.stages:
        if stage in ("mix", "test", "ano"):
            stage_blind(stage, args)
        elif stage == "crackforest":
            stage_crackforest(args)
        elif stage == "oneclass":
            stage_oneclass(args)
        elif stage == "ksweep":
            stage_ksweep(args)
        elif stage == "coreset_sweep":
            stage_coreset_sweep(args)
        elif stage == "coreset_share":
            stage_coreset_share(args)
    if args.report:
        print(report(RESULTS / "patchcluster.md"))


if __name__ == "__main__":
    main()
