"""Baselines on MVTec AD bottle (one-class): PatchCore, PaDiM, SPADE, LOF on patches / pooled.

Default backbone (EfficientNet-Lite0 blocks 2 + 4, strides 8 + 16, 40 + 112 channels,
3x3 local pooling), images resized to 256 and centre-cropped to 224. Every detector
is evaluated in a fresh process (2 torch threads) so its peak RSS can be reported.
Also: PatchCore 10 % with normalize="imagenet" vs "lite" (to choose the extractor's
default), coreset selection time at 10 %, the backbone's forward speed in the same
run, and the pynndescent index's recall against exact search on the 10 % bank.

Usage::

    python benchmarks/bench_bottle_baselines.py [--only NAME ...] [--skip-recall]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

THREADS = 2


def make(name):
    """Detector factory (module level, so spawned children can unpickle it)."""
    from sklearn.neighbors import LocalOutlierFactor

    from skad.detectors import SPADE, PaDiM, PatchCore, PatchOutlierDetector

    return {
        "PatchCore 10%": lambda: PatchCore(coreset_ratio=0.1, random_state=0, device="cpu"),
        "PatchCore 1%": lambda: PatchCore(coreset_ratio=0.01, random_state=0, device="cpu"),
        "PaDiM (152 ch)": lambda: PaDiM(n_features=None, random_state=0, device="cpu"),
        "PaDiM (100 ch)": lambda: PaDiM(n_features=100, random_state=0, device="cpu"),
        "SPADE (K=50)": lambda: SPADE(n_neighbors=50, device="cpu"),
        "LOF on patches": lambda: PatchOutlierDetector(
            LocalOutlierFactor(n_neighbors=20, novelty=True), max_patches=10_000,
            random_state=0),
        "LOF on pooled features": lambda: PatchOutlierDetector(
            LocalOutlierFactor(n_neighbors=20, novelty=True)),
    }[name]()


def pooled(feats):
    """GlobalPool-style mean pooling: (n, C, h, w) -> (n, C) (1x1 maps for a detector)."""
    from skad.features import GlobalPool

    return GlobalPool().fit(feats[:1]).transform(feats)


def coreset_time(train_feats, ratio=0.1, repeats=1):
    import torch

    from skad._kernels import patch_rows
    from skad._kernels.coreset import greedy_coreset

    torch.set_num_threads(THREADS)
    rows = patch_rows(train_feats)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        greedy_coreset(rows, int(ratio * len(rows)), random_state=0)
        best = min(best, time.perf_counter() - t)
    return best, len(rows), int(ratio * len(rows))


def ann_recall(train_feats, test_feats, ratio=0.1, n_queries=20_000):
    """Recall@1 / @9 of the pynndescent index vs exact search on PatchCore's 10 % bank."""
    from skad._kernels import patch_rows
    from skad.detectors import PatchCore

    det = PatchCore(coreset_ratio=ratio, random_state=0, device="cpu").fit(train_feats)
    from skad._kernels.ann import build_index

    q = patch_rows(test_feats)
    q = q[np.random.default_rng(0).choice(len(q), min(n_queries, len(q)), replace=False)]
    t = time.perf_counter()
    approx = build_index(det.memory_bank_, method="approx", random_state=0)
    build_s = time.perf_counter() - t
    exact = build_index(det.memory_bank_, method="exact")
    out = {"bank": len(det.memory_bank_), "queries": len(q), "build_s": build_s}
    for k in (1, 9):
        t = time.perf_counter()
        _, ia = approx.query(q, k)
        ta = time.perf_counter() - t
        t = time.perf_counter()
        _, ie = exact.query(q, k)
        te = time.perf_counter() - t
        out[f"recall@{k}"] = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(ia, ie)]))
        out[f"approx_query_s@{k}"], out[f"exact_query_s@{k}"] = ta, te
    return out


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="row names to run")
    ap.add_argument("--features", nargs="*", default=None,
                    help="feature sets to run (imagenet, lite, 'imagenet, pooling=1')")
    ap.add_argument("--skip-recall", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    command = "python benchmarks/bench_bottle_baselines.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    data = C.bottle_data()
    # feature sets: name -> extractor parameters (default backbone, 256 -> 224)
    feature_params = {
        "imagenet": {"normalize": "imagenet"},
        "lite": {"normalize": "lite"},
        "imagenet, pooling=1": {"normalize": "imagenet", "pooling": 1},
    }
    feats = {}

    def features(key):
        if key not in feats:
            p = {**feature_params[key], "n_threads": THREADS}
            feats[key] = (C.cached_features(data.train_images, "bottle_train", **p),
                          C.cached_features(data.test_images, "bottle_test", **p))
        return feats[key]

    labels, masks = data.test_labels, data.test_masks
    backbone_ips = C.backbone_speed(data.test_images, n_images=32, n_threads=THREADS)
    print(f"backbone {backbone_ips:.1f} images/s", flush=True)

    # cheapest first, so a partial run (written after every row) still has most rows
    runs = [
        ("PaDiM (152 ch)", "imagenet", False),
        ("LOF on pooled features", "imagenet", True),
        ("PatchCore 1%", "imagenet", False),
        ("PaDiM (100 ch)", "imagenet", False),
        ("SPADE (K=50)", "imagenet", False),
        ("LOF on patches", "imagenet", False),
        ("PatchCore 10%", "imagenet", False),
        ("PatchCore 10%", "lite", False),
        ("PaDiM (152 ch)", "imagenet, pooling=1", False),
        ("PatchCore 1%", "lite", False),
    ]
    out_name = ("bottle_baselines" if not (args.only or args.features)
                else "bottle_baselines_" + "_".join(
                    (args.only or []) + (args.features or [])).replace(" ", "").replace(
                    "%", "pct").replace(",", "").replace("(", "").replace(")", "").replace("=", ""))
    rows = []
    for name, norm, pool in runs:
        if (args.only and name not in args.only) or (args.features and norm not in args.features):
            continue
        train, test = features(norm)
        if pool:
            train, test = pooled(train), pooled(test)
        load = C._sh("cat /proc/loadavg").split()[0]
        res = C.evaluate_in_subprocess(functools.partial(make, name), train, test, labels,
                                       masks,
                                       n_threads=THREADS)
        if pool:  # 1x1 maps: no localisation
            for k in ("pixel_auroc", "pro", "pixel_ap"):
                res[k] = float("nan")
        row = {"detector": name, "features": norm, **res,
               "predict/backbone time": backbone_ips / res["predict_ips"], "load1": load}
        print(json.dumps(row), flush=True)
        rows.append(row)
        C.write_results(out_name, rows, command,
                        notes=f"partial run: {len(rows)} rows so far; backbone {backbone_ips:.2f} images/s")

    extra = {}
    if not (args.only or args.features):
        extra["coreset_10pct_s"], extra["n_patches"], extra["n_selected"] = coreset_time(
            features("imagenet")[0])
        print("coreset", extra, flush=True)
        if not args.skip_recall:
            extra["ann"] = ann_recall(*features("imagenet"))
            print("ann", extra["ann"], flush=True)
    extra["backbone_ips"] = backbone_ips
    notes = "extra measurements: `" + json.dumps(extra, default=str) + "`"
    C.write_results(out_name, rows, command, notes=notes)


if __name__ == "__main__":
    main()
