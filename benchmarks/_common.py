"""Shared helpers of the benchmark scripts: data, cached features, evaluation, reports.

Stable API (other benchmark scripts import it):

- ``bottle_data(resize=256, crop=224)`` -> Bunch of MVTec AD bottle (cached load);
- ``cached_features(images, key, **extractor_params)`` -> (n, C, h, w) float32, cached
  as ``benchmarks/.cache/<key>_<params hash>.npy``;
- ``backbone_speed(images, n_images=32, **extractor_params)`` -> images/s of the
  extractor's forward pass (the floor of any feature-based detector);
- ``evaluate(detector, train_feats, test_feats, test_labels, test_masks, ...)`` -> dict
  of image AUROC, pixel AUROC, PRO, pixel AP, fit s, predict images/s;
- ``evaluate_in_subprocess(...)``: the same in a fresh process, adding its peak RSS;
- ``metrics(scores, maps, labels, masks)`` -> image / pixel AUROC, PRO, pixel AP;
- ``paired_predict(models, images, pairs)`` -> images/s of ``predict`` per model, the
  models timed in alternation (and the per-round seconds);
- ``machine()``, ``write_results(name, rows, command, notes=...)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
DATA = Path(os.environ.get("SKAD_SHARED_DATA", REPO.parent / "shared" / "data"))
BACKBONE = "efficientnet_lite0"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# skad.detectors before skad.features: with NPad exported, importing skad.features
# first hits a circular import (features.pooling -> detectors -> npad -> features.pooling)
import skad.detectors  # noqa: E402,F401


def bottle_data(resize=256, crop=224, category="bottle"):
    """MVTec AD ``category`` (default bottle) at ``resize`` -> centre ``crop``; cached .npz."""
    from sklearn.utils import Bunch

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"mvtec_{category}_{resize}_{crop}.npz"
    if not path.exists():
        from skad.datasets import load_mvtec

        d = load_mvtec(DATA / "mvtec_ad", category, resize=resize, crop=crop)
        np.savez(path, train_images=d.train_images, test_images=d.test_images,
                 test_labels=d.test_labels, test_masks=d.test_masks)
    z = np.load(path)
    return Bunch(**{k: z[k] for k in z.files}, category=category)


def _params_key(params):
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def _extractor(**params):
    from skad.features import PatchFeatureExtractor

    params = {"backbone": BACKBONE, "device": "cpu", **params}
    return PatchFeatureExtractor(**params)


def cached_features(images, key, **extractor_params):
    """Patch features of ``images`` (n, C, h, w) float32, cached under benchmarks/.cache/.

    ``key`` names the image set (e.g. "bottle_train"); all the extractor's parameters
    that change features (the given ones and the package defaults) are hashed into the
    file name, so different settings -- or changed defaults -- never share a cache file.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    runtime = {"n_threads", "batch_size", "verbose", "device"}
    ext = _extractor(**extractor_params)
    full = {k: v for k, v in ext.get_params(deep=False).items() if k not in runtime}
    if full.get("layers") is None:  # the default layers changed once (#21): resolve them
        full["layers"] = list(ext._check_layers())
    path = CACHE / f"{key}_{_params_key(full)}.npy"
    if not path.exists():
        ext = _extractor(**extractor_params)
        np.save(path, ext.fit(images[:1]).transform(images))
    return np.load(path)


def bottle_timing_setup(threads):
    """Bottle data, cached default train / test features and a warmed-up extractor (the
    timed backbone) at ``threads`` torch threads: what the paired predict benchmarks
    share."""
    import torch

    torch.set_num_threads(threads)
    data = bottle_data()
    p = {"n_threads": threads}
    train = cached_features(data.train_images, "bottle_train", **p)
    test = cached_features(data.test_images, "bottle_test", **p)
    ext = _extractor(**p).fit(data.test_images[:1])
    ext.transform(data.test_images[:2])  # warm-up
    return data, train, test, ext


def backbone_speed(images, n_images=32, repeats=5, **extractor_params):
    """Forward images/s of the extractor (best of ``repeats`` over ``n_images`` images).

    Best-of timings: this shared 2-core machine's timings of one workload vary by
    up to ~30 % from run to run; the minimum is the repeatable figure.
    """
    ext = _extractor(**extractor_params).fit(images[:1])
    ext.transform(images[:2])  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        ext.transform(images[:n_images])
        best = min(best, time.perf_counter() - t)
    return n_images / best


def evaluate(detector, train_feats, test_feats, test_labels, test_masks, *,
             n_images_for_speed=None, repeats=5, max_seconds=20.0):
    """Fit on ``train_feats``, score ``test_feats``; accuracy and timings.

    Predict time covers ``score_and_map`` with upsampling to the mask size and the
    detector's Gaussian smoothing (everything after the backbone), best of
    ``repeats`` runs over ``n_images_for_speed`` test images (default: all), fewer
    (at least 2) once ``max_seconds`` of timed runs have passed.
    """
    from skad.metrics import image_auroc, pixel_ap, pixel_auroc, pro_score

    t = time.perf_counter()
    detector.fit(train_feats)
    fit_s = time.perf_counter() - t
    out_size = test_masks.shape[1:]
    scores, maps = detector.score_and_map(test_feats, output_size=out_size)
    n = len(test_feats) if n_images_for_speed is None else int(n_images_for_speed)
    best = np.inf
    spent = 0.0
    for i in range(repeats):
        if i >= 2 and spent > max_seconds:
            break
        t = time.perf_counter()
        detector.score_and_map(test_feats[:n], output_size=out_size)
        best = min(best, time.perf_counter() - t)
        spent += time.perf_counter() - t
    return {
        "image_auroc": float(image_auroc(test_labels, scores)),
        "pixel_auroc": float(pixel_auroc(test_masks, maps)),
        "pro": float(pro_score(test_masks, maps)),
        "pixel_ap": float(pixel_ap(test_masks, maps)),
        "fit_s": fit_s,
        "predict_ips": n / best,
    }


def metrics(scores, maps, labels, masks):
    """Image AUROC, pixel AUROC, PRO and pixel AP of anomaly ``scores`` and ``maps``."""
    from skad.metrics import image_auroc, pixel_ap, pixel_auroc, pro_score

    return {"image_auroc": float(image_auroc(labels, scores)),
            "pixel_auroc": float(pixel_auroc(masks, maps)),
            "pro": float(pro_score(masks, maps)),
            "pixel_ap": float(pixel_ap(masks, maps))}


def paired_predict(models, images, pairs):
    """images/s of ``predict`` end to end (median round), the models timed in alternation.

    Returns ``({name: images/s}, {name: [seconds per round]})``.
    """
    times = {name: [] for name in models}
    for m in models.values():
        m.predict(images[:4])
    for _ in range(pairs):
        for name, m in models.items():
            t = time.perf_counter()
            m.predict(images)
            times[name].append(time.perf_counter() - t)
    return {name: len(images) / float(np.median(v)) for name, v in times.items()}, times


def _peak_rss_mb():
    """This process's peak resident set (VmHWM of /proc/self/status), in MB.

    (``getrusage``'s ru_maxrss is not used: on Linux a spawned child can report the
    parent's high-water mark.)
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(conn, make_detector, feats_paths, labels_masks_path, n_threads, kwargs):
    import torch

    torch.set_num_threads(n_threads)
    train, test = (np.load(p) for p in feats_paths)
    z = np.load(labels_masks_path)
    try:
        res = evaluate(make_detector(), train, test, z["labels"], z["masks"], **kwargs)
        res["peak_rss_mb"] = _peak_rss_mb()
        conn.send(res)
    except Exception as exc:  # report the failure to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    conn.close()


def evaluate_in_subprocess(make_detector, train_feats, test_feats, test_labels, test_masks,
                           *, n_threads=2, **kwargs):
    """:func:`evaluate` in a fresh spawned process; adds ``peak_rss_mb`` (its VmHWM).

    The peak includes the interpreter, torch and the features the child loads
    (train + test arrays), so it is an upper bound of the detector's own memory.
    ``make_detector`` must be picklable (a module-level function or a partial).
    """
    import multiprocessing as mp

    CACHE.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in (("train", train_feats), ("test", test_feats)):
        key = hashlib.sha1(np.ascontiguousarray(arr[:2]).tobytes()).hexdigest()[:10]
        p = CACHE / f"_eval_{name}_{arr.shape[0]}_{arr.shape[1]}_{key}.npy"
        if not p.exists():
            np.save(p, arr)
        paths.append(p)
    lm = CACHE / f"_eval_labels_masks_{len(test_labels)}.npz"
    np.savez(lm, labels=test_labels, masks=test_masks)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, make_detector, paths, lm, n_threads, kwargs))
    proc.start()
    res = parent.recv()
    proc.join()
    if "error" in res:
        raise RuntimeError(res["error"])
    return res


def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def cpu_name():
    """The CPU model from ``lscpu`` (``platform.processor()`` when unavailable)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine():
    """Cores, CPU model, load (``uptime``), torch / numpy versions."""
    import torch

    return {
        "nproc": _sh("nproc"),
        "cpu": cpu_name(),
        "uptime": _sh("uptime"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def default_features():
    """One line naming the extractor's default features (``PatchFeatureExtractor()`` on
    BACKBONE), so a results file says which defaults its figures were measured with."""
    ext = _extractor()
    layers = ext._check_layers()
    mean, std = ext._check_normalize()
    p = ext.get_params(deep=False)
    return (f"layers {' + '.join(layers)}, normalize {p['normalize']!r} (mean {mean[0]:g}.., "
            f"std {std[0]:g}..), pooling {p['pooling']}, pool_include_pad "
            f"{p['pool_include_pad']}, upsample {p['upsample']!r}, input_size {p['input_size']}")


def write_results(name, rows, command, *, notes="", backbone=None, data="MVTec AD bottle"):
    """Write ``benchmarks/results/<name>.md`` (table of ``rows``) and ``<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    m = machine()
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = [
        f"# {name}",
        "",
        f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {m['nproc']} cores, {m['cpu']}; load at write time: `{m['uptime']}`",
        f"- software: python {m['python']}, torch {m['torch']}, numpy {m['numpy']}",
        f"- backbone: {backbone or BACKBONE}; extractor defaults: {default_features()}",
        f"- data: {data}",
        f"- command: `{command}`",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    if notes:
        lines += ["", notes.strip(), ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": m, "command": command,
                                                      "rows": rows}, indent=1, default=str))
