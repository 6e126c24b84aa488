"""Scale: fit cost against the number of images, streamed accuracy, peak memory, dask.

Parts (each well under 10 minutes on the shared 2-core machine; run them one by one
under the benchmark lock):

- ``accuracy``: MVTec AD bottle, PatchCore 10 % and PaDiM fitted in memory (``fit``)
  against the chunked coreset (``coreset_chunk_size`` forcing 4 chunks) and the streamed
  fit (``partial_fit`` over 4 chunks of images): pixel / image AUROC.
  -> results/scale_accuracy.md
- ``fit``: PatchCore 10 % fit time at 200 / 1,000 / 5,000 images. The images' features
  are bottle's training features resampled with replacement plus Gaussian noise (30 %
  of the feature std: with 5 % the near-copies make the greedy's pruning unrealistically
  effective), so the bank has bottle's structure at any size without running the
  backbone 5,000 times. The default fit (chunks of 200k patches) beside the exact
  single-chunk greedy (up to 1,000 images: it is quadratic). 5,000 images are fed by
  ``partial_fit`` in chunks of 250 (2.4 GB of features never exist at once).
  -> results/scale_fit.md
- ``fit_all``: the same for PaDiM, SPADE, N-pad and PatchCluster with their defaults
  (in memory up to ``--max-in-memory`` images, ``partial_fit`` in chunks of 250 above
  it where the detector streams; the others are listed as not run).
  -> results/scale_fit_all.md
- ``memory``: peak RSS of :func:`skad.scale.fit_streaming` on N random 64 px PNG files
  written to disk (extractor at 64 px input), N = 1,000 and 10,000, PaDiM and PatchCore,
  each in a fresh process. -> results/scale_memory.md
- ``recall``: PatchCluster (blind, full bank) on 330 resampled bottle images (259k
  patches, above its ``approx_threshold``): fit and scoring time with the approximate
  self-excluded search, and its recall@1 against the exact search on sampled queries.
  -> results/scale_recall.md
- ``dask``: :func:`skad.scale.score_on_dask` of 400 images on a LocalCluster of 1 and
  of 2 single-threaded worker processes, alternating. -> results/scale_dask.md

Command: ``python benchmarks/bench_scale.py --part accuracy`` (and ``fit``,
``memory``, ``dask``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import REPO, bottle_data, cached_features, metrics, write_results  # noqa: E402


def _bottle_features():
    d = bottle_data()
    return (d, cached_features(d.train_images, "bottle_train"),
            cached_features(d.test_images, "bottle_test"))


def part_accuracy(args):
    from skad.detectors import PaDiM, PatchCore

    d, train, test = _bottle_features()
    out = d.test_masks.shape[1:]
    n_rows = train.shape[0] * train.shape[2] * train.shape[3]
    rows = []
    cases = [
        ("PatchCore 10 %", "in memory (fit, exact greedy)",
         lambda: PatchCore(random_state=0), "fit"),
        ("PatchCore 10 %", "chunked coreset, 4 chunks (fit)",
         lambda: PatchCore(random_state=0, coreset_chunk_size=-(-n_rows // 4)), "fit"),
        ("PatchCore 10 %", "streamed, partial_fit x 4", lambda: PatchCore(random_state=0),
         "stream"),
        ("PaDiM", "in memory (fit)", lambda: PaDiM(random_state=0), "fit"),
        ("PaDiM", "streamed, partial_fit x 4", lambda: PaDiM(random_state=0), "stream"),
    ]
    for method, how, make, mode in cases:
        det = make()
        t = time.perf_counter()
        if mode == "fit":
            det.fit(train)
        else:
            for part in np.array_split(np.arange(len(train)), 4):
                det.partial_fit(train[part])
        fit_s = time.perf_counter() - t
        scores, maps = det.score_and_map(test, output_size=out)
        m = metrics(scores, maps, d.test_labels, d.test_masks)
        rows.append({"detector": method, "bank / statistics": how,
                     "pixel_auroc": m["pixel_auroc"], "image_auroc": m["image_auroc"],
                     "pro": m["pro"], "fit_s": fit_s})
        print(rows[-1], flush=True)
    for r in rows:
        ref = next(x for x in rows if x["detector"] == r["detector"])
        r["pixel_auroc - in memory"] = r["pixel_auroc"] - ref["pixel_auroc"]
    write_results("scale_accuracy", rows, "python benchmarks/bench_scale.py --part accuracy",
                  notes="Bottle: 209 training images x 784 patches = 164k rows (one chunk "
                        "by default, so the default fit is the exact greedy); the chunked "
                        "row forces 4 chunks of whole images.")


def _resampled(train, n, rng, noise):
    idx = rng.integers(0, len(train), n)
    eps = rng.standard_normal((n,) + train.shape[1:], dtype=np.float32)
    return train[idx] + eps * (noise * float(train.std()))


def part_fit(args):
    from skad.detectors import PatchCore

    _, train, _ = _bottle_features()
    rng = np.random.default_rng(0)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    exact = [int(s) for s in args.exact_sizes.split(",") if s]
    for n in sizes:
        variants = [("default (chunks of 200k patches)", {})]
        if n in exact:
            variants.append(("exact greedy (one chunk)", {"coreset_chunk_size": 10**9}))
        for how, params in variants:
            det = PatchCore(random_state=0, **params)
            if n <= 1000:
                X = _resampled(train, n, rng, args.noise)
                t = time.perf_counter()
                det.fit(X)
                fit_s = time.perf_counter() - t
                mode = "fit"
            else:
                fit_s, gen_s = 0.0, 0.0
                for s in range(0, n, 250):
                    t = time.perf_counter()
                    X = _resampled(train, min(250, n - s), rng, args.noise)
                    gen_s += time.perf_counter() - t
                    t = time.perf_counter()
                    det.partial_fit(X)
                    fit_s += time.perf_counter() - t
                    del X
                t = time.perf_counter()
                # the first scoring builds the search index: one image's score_samples
                det.score_samples(_resampled(train, 1, rng, args.noise))
                fit_s += time.perf_counter() - t
                mode = "partial_fit x 250 images"
            rows.append({"images": n, "patches": n * 784, "coreset": how, "mode": mode,
                         "bank rows": len(det.memory_bank_), "fit_s": fit_s,
                         "fit ms / image": 1000 * fit_s / n})
            print(rows[-1], flush=True)
            del det
    write_results(args.name or "scale_fit", rows,
                  f"python benchmarks/bench_scale.py --part fit --sizes {args.sizes} "
                  f"--exact-sizes {args.exact_sizes} --noise {args.noise}",
                  data=f"bottle training features (the extractor's defaults, {train.shape[1]} "
                       f"ch, 28x28) resampled, plus Gaussian noise of {args.noise} x their std",
                  notes="fit_s includes the coreset, the search index and the calibration "
                        "scores (everything fit does after the backbone).")


_FIT_ALL = {
    "PaDiM": ("skad.detectors", "PaDiM", {"random_state": 0}),
    "SPADE": ("skad.detectors", "SPADE", {}),
    "N-pad": ("skad.detectors", "NPad", {"random_state": 0}),
    "PatchCluster": ("skad.detectors", "PatchCluster", {"random_state": 0}),
}


def part_fit_all(args):
    """Default fit time of the other detectors against the number of images."""
    import importlib

    _, train, _ = _bottle_features()
    rng = np.random.default_rng(0)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for name in args.detectors.split(","):
        module, cls, params = _FIT_ALL[name]
        make = getattr(importlib.import_module(module), cls)
        for n in sizes:
            det = make(**params)
            streaming = hasattr(det, "partial_fit")
            if n > args.max_in_memory and not streaming:
                rows.append({"detector": name, "images": n, "mode": "not run",
                             "fit_s": float("nan"), "fit ms / image": float("nan"),
                             "note": f"no partial_fit; {n} images' features would be "
                                     f"{n * train[0].nbytes / 1e9:.1f} GB at once"})
                print(rows[-1], flush=True)
                continue
            if n <= args.max_in_memory:
                X = _resampled(train, n, rng, args.noise)
                t = time.perf_counter()
                det.fit(X)
                fit_s = time.perf_counter() - t
                mode = "fit"
                del X
            else:
                fit_s = 0.0
                for s in range(0, n, 250):
                    X = _resampled(train, min(250, n - s), rng, args.noise)
                    t = time.perf_counter()
                    det.partial_fit(X)
                    fit_s += time.perf_counter() - t
                    del X
                mode = "partial_fit x 250 images"
            rows.append({"detector": name, "images": n, "mode": mode, "fit_s": fit_s,
                         "fit ms / image": 1000 * fit_s / n, "note": ""})
            print(rows[-1], flush=True)
            del det
    for r in rows:
        ref = next(x for x in rows if x["detector"] == r["detector"])
        r["time / (smallest N time x N ratio)"] = (
            r["fit_s"] / (ref["fit_s"] * r["images"] / ref["images"]))
    write_results(args.name or "scale_fit_all", rows,
                  f"python benchmarks/bench_scale.py --part fit_all --detectors "
                  f"{args.detectors} --sizes {args.sizes} --max-in-memory "
                  f"{args.max_in_memory} --noise {args.noise}",
                  data="bottle training features (the extractor's defaults, cached) "
                       f"resampled, plus Gaussian noise of {args.noise} x their std",
                  notes="Default parameters (calibration included: it is part of fit). "
                        "Last column: 1.0 = exactly linear from the smallest size.")


_MEMORY_CHILD = r"""
import json, sys, time
import numpy as np
from pathlib import Path
import skad
from skad import make_pipeline
from skad.detectors import PaDiM, PatchCore
from skad.features import PatchFeatureExtractor
from skad.scale import fit_streaming
import pickle
folder, n, method, ratio = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
paths = sorted(str(p) for p in Path(folder).glob("*.png"))[:n]
det = (PaDiM(random_state=0) if method == "padim"
       else PatchCore(coreset_ratio=ratio, random_state=0))
pipe = make_pipeline(PatchFeatureExtractor(input_size=64, device="cpu"), det)
t = time.perf_counter()
fit_streaming(pipe, paths, chunk_size=250, calibration=0.05, random_state=0)
fit_s = time.perf_counter() - t
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
bank = len(det.memory_bank_) if method == "patchcore" else 0
if method == "patchcore":
    det.score_samples(pipe[0].transform(paths[:1]))  # build the search index
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
model_mb = len(pickle.dumps(det, protocol=5)) / 2**20
print(json.dumps({"coreset_ratio": ratio if method == "patchcore" else None,
                  "peak_rss_mb": hwm, "model_mb (pickled detector)": model_mb,
                  "fit_s": fit_s, "bank_rows": bank}))
"""


def part_memory(args):
    from PIL import Image

    sizes = [int(s) for s in args.sizes.split(",")]
    folder = Path(args.folder or tempfile.mkdtemp(prefix="skad_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    have = len(list(folder.glob("*.png")))
    for i in range(have, max(sizes)):
        base = rng.integers(90, 140, 3)
        img = np.clip(base + rng.normal(0, 12, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    rows = []
    runs = [(m, n, 0.1) for m in args.methods.split(",") for n in sizes]
    if "patchcore" in args.methods.split(",") and len(sizes) > 1:
        # the same bank size at the largest N as at the smallest: what the streaming
        # itself costs, apart from the bank the coreset ratio asks for
        runs.append(("patchcore", max(sizes), 0.1 * min(sizes) / max(sizes)))
    for method, n, ratio in runs:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(folder), str(n),
                              method, str(ratio)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        res = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"detector": method, "images": n, **res})
        print(rows[-1], flush=True)
    for r in rows:
        ref = next(x for x in rows if x["detector"] == r["detector"])
        r["peak RSS / smallest N"] = r["peak_rss_mb"] / ref["peak_rss_mb"]
    write_results("scale_memory", rows,
                  f"python benchmarks/bench_scale.py --part memory --sizes {args.sizes}",
                  data="random 64 px PNG files on disk (extractor input 64 px: 8x8 patches)",
                  notes="Each row a fresh process running skad.scale.fit_streaming "
                        "(chunks of 250 images, 5 % held out for the threshold), then for "
                        "PatchCore one image scored (it builds the search index); peak "
                        "RSS = VmHWM; model = the size of the pickled detector. The last "
                        "PatchCore row keeps the bank of the smallest N (coreset_ratio "
                        "scaled down).")


def part_dask(args):
    from dask.distributed import Client, LocalCluster
    from PIL import Image

    from skad import make_pipeline
    from skad.detectors import PatchCore
    from skad.features import PatchFeatureExtractor
    from skad.scale import score_on_dask

    folder = Path(tempfile.mkdtemp(prefix="skad_dask_"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.n_images):
        img = rng.integers(80, 160, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        paths.append(str(folder / f"{i:04d}.png"))
    pipe = make_pipeline(PatchFeatureExtractor(input_size=128, device="cpu"),
                         PatchCore(random_state=0)).fit(paths[:20])
    ref = pipe.anomaly_score(paths[:8])
    times = {1: [], 2: []}
    clusters = {k: LocalCluster(n_workers=k, threads_per_worker=1, processes=True,
                                dashboard_address=":0") for k in (1, 2)}
    try:
        clients = {k: Client(c) for k, c in clusters.items()}
        for k, c in clients.items():  # warm-up: workers import torch, get the model
            got = score_on_dask(pipe, paths[:8], c, partition_size=4)
            np.testing.assert_allclose(got, ref, rtol=1e-4)
        for _ in range(args.rounds):
            for k, c in clients.items():
                t = time.perf_counter()
                score_on_dask(pipe, paths, c, partition_size=25)
                times[k].append(time.perf_counter() - t)
                print(k, times[k][-1], flush=True)
    finally:
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()
    rows = [{"workers": k, "images": len(paths), "seconds (median)": statistics.median(v),
             "images/s": len(paths) / statistics.median(v)} for k, v in times.items()]
    speedup = statistics.median(a / b for a, b in zip(times[1], times[2]))
    for r in rows:
        r["speed-up vs 1 worker (median of rounds)"] = 1.0 if r["workers"] == 1 else speedup
    write_results("scale_dask", rows,
                  f"python benchmarks/bench_scale.py --part dask --n-images {args.n_images} "
                  f"--rounds {args.rounds}",
                  data=f"{args.n_images} random 128 px PNG files",
                  notes="LocalCluster(n_workers=k, threads_per_worker=1, processes=True); "
                        "PatchCore 10 % fitted on 20 images, model scattered once per "
                        "worker, 25 paths per task; the 1- and 2-worker clusters timed in "
                        "alternation.")


def part_recall(args):
    from skad._kernels import patch_rows
    from skad._kernels.knn import knn_search
    from skad.detectors import PatchCluster

    _, train, _ = _bottle_features()
    rng = np.random.default_rng(0)
    n = int(args.sizes)
    X = _resampled(train, n, rng, args.noise)
    det = PatchCluster(random_state=0, approx_threshold=args.threshold)
    t = time.perf_counter()
    det.fit(X)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    det.score_samples(X)  # blind use: score the fitted set (self-excluded)
    score_s = time.perf_counter() - t
    rows_all = patch_rows(X)
    q = np.sort(rng.choice(len(rows_all), args.n_queries, replace=False))
    bank_groups = det.coreset_indices_
    k = 1
    d_ex, i_ex = knn_search(rows_all[q], det.memory_bank_, k, query_groups=q,
                            bank_groups=bank_groups)
    d_ap, i_ap = det.index_.query(rows_all[q], k, query_groups=q, bank_groups=bank_groups)
    hit = (i_ap[:, 0] == i_ex[:, 0]) | np.isclose(d_ap[:, 0], d_ex[:, 0], rtol=1e-5)
    ratio = d_ap[:, 0] / np.maximum(d_ex[:, 0], 1e-12)
    rows = [{"images": n, "patches": len(rows_all), "nn_method_": det.nn_method_,
             "fit_s": fit_s, "score_samples(X) s": score_s,
             "recall@1 (self-excluded, sampled queries)": float(hit.mean()),
             "distance ratio approx/exact: median": float(np.median(ratio)),
             "p99": float(np.percentile(ratio, 99)), "queries": len(q)}]
    print(rows[0], flush=True)
    write_results("scale_recall", rows,
                  f"python benchmarks/bench_scale.py --part recall --sizes {args.sizes} "
                  f"--threshold {args.threshold} --n-queries {args.n_queries}",
                  data="bottle training features resampled with Gaussian noise of "
                       f"{args.noise} x their std (blind use: the fitted set is scored)",
                  notes="Recall: the approximate index's nearest non-self bank patch "
                        "against the exact one (knn_search with the same exclusion) for "
                        "randomly sampled query patches.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True, choices=["accuracy", "fit", "fit_all", "memory", "dask", "recall"])
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--methods", default="padim,patchcore")
    ap.add_argument("--folder", default=None)
    ap.add_argument("--n-images", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--exact-sizes", default="200,1000")
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--name", default=None)
    ap.add_argument("--threshold", type=int, default=250_000)
    ap.add_argument("--n-queries", type=int, default=2000)
    ap.add_argument("--detectors", default="PaDiM,SPADE,N-pad,PatchCluster")
    ap.add_argument("--max-in-memory", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.sizes is None:
        args.sizes = {"fit": "200,1000,5000", "fit_all": "200,1000,5000", "memory": "1000,10000",
                      "recall": "330"}.get(args.part, "")
    {"accuracy": part_accuracy, "fit": part_fit, "fit_all": part_fit_all, "memory": part_memory,
     "dask": part_dask, "recall": part_recall}[args.part](args)


if __name__ == "__main__":
    main()
