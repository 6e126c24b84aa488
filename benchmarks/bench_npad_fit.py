"""N-pad fit time against the number of training images (issue #19: close to linear).

Bottle's 209 training feature maps, replicated with flipped copies (horizontal,
vertical, both) up to the requested count, so the larger sets are as large as the
issue's 800 images without extracting new images; what fit costs depends on the
counts (the k-means cells on the features' spread). Each size is fitted in a fresh
process; per-stage seconds come from timers around N-pad's kernels.

Usage::

    python benchmarks/bench_npad_fit.py --sizes 200 800 --calibration in_sample
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def features(n):
    import _common as C

    data = C.bottle_data()
    tr = C.cached_features(data.train_images, "bottle_train", n_threads=1)
    reps = [tr, tr[..., ::-1], tr[:, :, ::-1], tr[:, :, ::-1, ::-1]]
    return np.ascontiguousarray(np.concatenate(reps)[:n])


def child(n, calibration, threads):
    import _common  # noqa: F401  (puts this checkout's skad first on the path)
    import torch

    import skad.detectors.npad as N

    print("skad", N.__file__, file=sys.stderr)

    torch.set_num_threads(threads)
    X = features(n)
    stages = defaultdict(float)

    def timed(mod, name):
        f = getattr(mod, name)

        @functools.wraps(f)
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                stages[name] += time.perf_counter() - t
        setattr(mod, name, g)

    for name in ("_gaussians", "bhattacharyya_weights", "weighted_gaussians",
                 "cholesky_factors", "whitening_factors", "inverse_cholesky_factors",
                 "partitioned_kmeans"):
        if hasattr(N, name):  # the kernels of this checkout (older ones differ)
            timed(N, name)
    timed(N.NPad, "_score")
    timed(N.NPad, "_fit")  # the model kept (the fold models of "cv" fit through it too)
    if "_fold_scores" in vars(N.NPad):
        timed(N.NPad, "_fold_scores")  # fold models and their scoring
    det = N.NPad(random_state=0, device="cpu", calibration=calibration)
    t = time.perf_counter()
    det.fit(X)
    res = {"n_images": n, "calibration": calibration, "fit_s": time.perf_counter() - t,
           "n_centroids": len(det.centroids_), **{f"{k}_s": v for k, v in stages.items()}}
    print(json.dumps(res), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 800])
    ap.add_argument("--calibration", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="npad_fit_scaling")
    ap.add_argument("--child", type=int)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.calibration, args.threads)
    import _common as C

    command = "python benchmarks/bench_npad_fit.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    rows = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--calibration",
                               args.calibration, "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        C.write_results(args.name, rows, command)
    if len(rows) > 1:
        r = rows[-1]["fit_s"] / rows[0]["fit_s"]
        notes = (f"fit time ratio {rows[-1]['n_images']} / {rows[0]['n_images']} images: "
                 f"{r:.2f} (linear: {rows[-1]['n_images'] / rows[0]['n_images']:.2f}). "
                 "Images beyond bottle's 209: flipped copies of its feature maps.")
        C.write_results(args.name, rows, command, notes=notes)


if __name__ == "__main__":
    main()
