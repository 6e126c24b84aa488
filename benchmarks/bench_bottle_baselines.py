"""Baselines on MVTec AD bottle (one-class): PatchCore, PaDiM, SPADE, LOF on patches / pooled.

The extractor's default features (EfficientNet-Lite0 blocks 2 + 3, strides 8 + 16,
40 + 80 channels, Lite normalisation, 3x3 local pooling with zero padding counted,
bilinear layer fusion; bottle_baselines.md was measured with the pre-#21 defaults,
blocks 2 + 4 and ImageNet statistics; the results file's header names the defaults a run
used), images resized to 256 and centre-cropped to 224. Every detector is evaluated in a fresh process (2 torch
threads) so its peak RSS can be reported. Also: the paper's PaDiM features (no
pooling, nearest layer fusion), the pooling-padding ablation that chose the
extractor's default, coreset selection times at 1 % and 10 %, the backbone's forward
speed in the same run, PatchCore 10 %'s predict/backbone ratio timed in alternation
(``paired_speed``), and the recall of the approximate indexes (cells, faiss IVF,
pynndescent) against exact search on the 10 % bank.

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

#: the peer's figures on the same CPU type, data and backbone (from the issue and
#: ../shared/peers/README.md; anomalib 2.7.0 run by ../shared/peers/run_anomalib.py)
ANOMALIB_NOTE = """\
Reference, anomalib 2.7.0 on the same CPU type, data and backbone (from the issue /
`../shared/peers/README.md`, not re-measured here): PaDiM (152 ch) image / pixel AUROC /
AUPRO 1.0 / 0.9792 / 0.9106, fit 14-24 s, predict 13-23 images/s end to end;
PatchCore 1 % 1.0 / 0.9835 / 0.9190, fit 291 s (coreset 263 s), predict 3.5-4.6
images/s end to end; PatchCore 10 %: coreset alone about 52 min. anomalib's AUPRO
resamples each region's ROC on an index grid before averaging, skad's PRO is the MVTec
definition (mean per-region overlap at each global FPR, integrated to 0.3), so PRO
columns are close but not identical definitions; pixel AUROC is the same definition.
Column meanings: `predict_ips` = images/s of `score_and_map` after the backbone;
`detector/backbone time` = detector time per image / backbone forward time per image
(backbone measured at the top of this run); `end-to-end` = backbone + detector.
"""


def make(name):
    """Detector factory (module level, so spawned children can unpickle it)."""
    from sklearn.neighbors import LocalOutlierFactor

    from skad.detectors import SPADE, PaDiM, PatchCore, PatchOutlierDetector

    return {
        "PatchCore 10%": lambda: PatchCore(coreset_ratio=0.1, random_state=0, device="cpu"),
        "PatchCore 10% (exact kNN)": lambda: PatchCore(coreset_ratio=0.1, nn_method="exact",
                                                       random_state=0, device="cpu"),
        "PatchCore 10% (faiss IVF)": lambda: PatchCore(coreset_ratio=0.1, nn_method="ivf",
                                                       random_state=0, device="cpu"),
        "PatchCore 1%": lambda: PatchCore(coreset_ratio=0.01, random_state=0, device="cpu"),
        "PaDiM (all ch)": lambda: PaDiM(n_features=None, random_state=0, device="cpu"),
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


def coreset_time(train_feats, ratio=0.1, repeats=2):
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


def ann_recall(train_feats, test_feats, masks=None, ratio=0.1, n_images=None):
    """Recall@1 / @9 of the approximate indexes vs exact search on PatchCore's 10 % bank.

    Recall@1 is also given separately for the patches of defective test images
    inside their ground-truth masks (``recall@1 defect``).

    Queries: every patch of the test images; times in ms per test image (784 patches).
    """
    from skad._kernels import patch_rows
    from skad._kernels.ann import build_index
    from skad.detectors import PatchCore

    det = PatchCore(coreset_ratio=ratio, random_state=0, device="cpu").fit(train_feats)
    q = patch_rows(test_feats if n_images is None else test_feats[:n_images])
    n_img = len(q) / (test_feats.shape[2] * test_feats.shape[3])
    exact = build_index(det.memory_bank_, method="exact")
    ref, t_exact = {}, {}
    for k in (1, 9):
        t = time.perf_counter()
        ref[k] = exact.query(q, k)
        t_exact[k] = 1000 * (time.perf_counter() - t) / n_img
    defect = None
    if masks is not None:  # a patch is a defect patch if most of its pixels are
        n, _, h, w = test_feats.shape
        mk = np.asarray(masks[:len(q) // (h * w)], np.float32)
        defect = mk.reshape(len(mk), h, mk.shape[1] // h, w, mk.shape[2] // w).mean(
            axis=(2, 4)).ravel() > 0.5
    out = {"bank": len(det.memory_bank_), "query_patches": len(q),
           "exact_ms_per_image@1": t_exact[1], "exact_ms_per_image@9": t_exact[9]}
    configs = ([("cells", {"n_list_neighbors": t}) for t in (16, 32, 64)]
               + [("ivf", {"n_probe": p}) for p in (4, 8, 16)] + [("nndescent", {})])
    for method, kw in configs:
        name = method + "".join(f" {k}={v}" for k, v in kw.items())
        t = time.perf_counter()
        index = build_index(det.memory_bank_, method=method, random_state=0, **kw)
        res = {"build_s": time.perf_counter() - t}
        for k in (1, 9):
            index.query(q[:784], k)  # warm-up (numba compiles pynndescent's query)
            t = time.perf_counter()
            d, i = index.query(q, k)
            res[f"ms_per_image@{k}"] = 1000 * (time.perf_counter() - t) / n_img
            d_e, i_e = ref[k]
            res[f"recall@{k}"] = float(np.mean([len(set(a) & set(e)) / k
                                                for a, e in zip(i, i_e)]))
            res[f"mean_distance_ratio@{k}"] = float(np.mean(
                d[:, 0] / np.maximum(d_e[:, 0], 1e-12)))
            if k == 1 and defect is not None:
                res["recall@1 defect"] = float(np.mean(i[defect, 0] == i_e[defect, 0]))
                res["defect_patches"] = int(defect.sum())
        out[name] = res
        print("ann", name, res, flush=True)
    return out



def paired_speed(images, train_feats, test_feats, pairs=15):
    """PatchCore 10 % predict vs backbone forward, timed in alternation in one process.

    This machine's speed drifts by up to ~30 % over minutes (the backbone's speed
    more than the detector's), so the backbone and the detector are timed back to
    back ``pairs`` times. A round runs, for each of ``predict`` (labels: the image
    scores; what the issue's target names) and ``score_and_map`` (scores and maps
    upsampled to the mask size), the backbone (32 images) before and after it:
    ``clean`` follows a backbone run, ``after`` follows the detector. The round's
    ratio is ``1 + detector / clean`` (median round and range reported); ``after /
    clean`` checks that the detector leaves nothing behind that slows the next
    batch's backbone (numpy's OpenBLAS threads did: they spin after each product).
    Single backbone runs vary by +-25 % here, so ``(detector + after) / clean`` per
    round is reported beside, not alone.
    """
    import torch

    from skad.detectors import PatchCore

    torch.set_num_threads(THREADS)
    ext = C._extractor(n_threads=THREADS).fit(images[:1])
    ext.transform(images[:2])
    det = PatchCore(coreset_ratio=0.1, random_state=0, device="cpu").fit(train_feats)
    out_size = images.shape[1:3]
    calls = {"predict": lambda: det.predict(test_feats),
             "score_and_map": lambda: det.score_and_map(test_feats, output_size=out_size)}
    for f in calls.values():
        f()

    def ms_per_image(f, n):
        t = time.perf_counter()
        f()
        return 1000 * (time.perf_counter() - t) / n

    backbone = functools.partial(ms_per_image, lambda: ext.transform(images[:32]), 32)
    times = {name: ([], [], []) for name in calls}  # clean, detector, after
    backbone()
    for _ in range(pairs):
        for name, f in calls.items():
            clean, dd, after = times[name]
            clean.append(backbone())
            dd.append(ms_per_image(f, len(test_feats)))
            after.append(backbone())
    res = {"nn_method_": det.nn_method_, "pairs": pairs}
    for name, series in times.items():
        clean, dd, after = map(np.array, series)
        ratio = 1 + dd / clean
        mid = np.argsort(ratio)[len(ratio) // 2]
        res[name] = {"end_to_end_over_backbone_median": float(ratio[mid]),
                     "end_to_end_over_backbone_min": float(ratio.min()),
                     "end_to_end_over_backbone_max": float(ratio.max()),
                     "backbone_after_detector_over_clean_median": float(
                         np.median(after / clean)),
                     "with_next_backbone_over_backbone_median": float(
                         np.median((dd + after) / clean)),
                     "backbone_ms_per_image_median_pair": float(clean[mid]),
                     "detector_ms_per_image_median_pair": float(dd[mid])}
    print("paired", res, flush=True)
    return res


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="row names to run")
    ap.add_argument("--features", nargs="*", default=None,
                    help="feature sets to run (keys of feature_params)")
    ap.add_argument("--skip-recall", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    command = "python benchmarks/bench_bottle_baselines.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    data = C.bottle_data()
    # feature sets: name -> extractor parameters (default backbone, 256 -> 224)
    feature_params = {
        "default": {},
        "PaDiM paper (no pooling, nearest fusion)": {"pooling": 1, "upsample": "nearest"},
        "pooling without padding": {"pool_include_pad": False},
        "old defaults (imagenet, blocks 2-4)": {"normalize": "imagenet",
                                                "layers": ("blocks.2", "blocks.4")},
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
        ("PaDiM (all ch)", "PaDiM paper (no pooling, nearest fusion)", False),
        ("PaDiM (all ch)", "default", False),
        ("LOF on pooled features", "default", True),
        ("PatchCore 1%", "default", False),
        ("PatchCore 1%", "pooling without padding", False),
        ("PatchCore 10%", "default", False),
        ("PatchCore 10% (exact kNN)", "default", False),
        ("PatchCore 10% (faiss IVF)", "default", False),
        ("SPADE (K=50)", "default", False),
        ("LOF on patches", "default", False),
        ("PaDiM (100 ch)", "default", False),
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
        ratio = backbone_ips / res["predict_ips"]  # detector time / backbone time
        row = {"detector": name, "features": norm, **res,
               "detector/backbone time": ratio,
               "end-to-end images/s": backbone_ips / (1 + ratio),
               "end-to-end/backbone time": 1 + ratio, "load1": load}
        print(json.dumps(row), flush=True)
        rows.append(row)
        C.write_results(out_name, rows, command,
                        notes=f"partial run: {len(rows)} rows so far; backbone {backbone_ips:.2f} images/s")

    extra = {}
    if not (args.only or args.features):
        for ratio in (0.01, 0.1):
            extra[f"coreset_{ratio:.0%}_s"], extra["n_patches"], _ = coreset_time(
                features("default")[0], ratio)
        print("coreset", extra, flush=True)
        extra["paired_speed_patchcore_10pct"] = paired_speed(
            data.test_images, *features("default"))
        if not args.skip_recall:
            extra["ann"] = ann_recall(*features("default"), masks=masks)
    extra["backbone_ips"] = backbone_ips
    notes = ANOMALIB_NOTE + "\nextra measurements: `" + json.dumps(extra, default=str) + "`"
    C.write_results(out_name, rows, command, notes=notes)


if __name__ == "__main__":
    main()
