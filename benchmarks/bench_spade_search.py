"""SPADE's pixel search on bottle: exact vs a cap on the cells visited (issue #19).

Fits SPADE (defaults) once on bottle's cached training features, then for each
``--n-probe`` value (``none`` = the exact search) scores all 83 test images:
detector time per image of ``score_and_map`` (maps at mask size) on the first
``--n-time`` test images beside the backbone's forward time of the same images
(alternated, median of ``--rounds``), and, against the exact search of the same run,
the fraction of test patches whose search ended by the exact criterion, recall@1
(returned neighbour = the exact nearest), quantiles of the distance ratio
approx / exact, and image AUROC, pixel AUROC, PRO on all 83 images.

Usage::

    python benchmarks/bench_spade_search.py --n-probe none 16 8 4 --name spade_search
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-probe", nargs="+", default=["none", "16", "8", "4"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-time", type=int, default=16)
    ap.add_argument("--name", default="spade_search")
    args = ap.parse_args(argv)
    command = "python benchmarks/bench_spade_search.py " + " ".join(
        sys.argv[1:] if argv is None else argv)

    from skad._kernels import patch_rows
    from skad._kernels.refine import ball_knn
    from skad.detectors import SPADE

    data, train, test, ext = C.bottle_timing_setup(args.threads)
    out_size = data.test_masks.shape[1:]
    det = SPADE(device="cpu", calibration="in_sample", random_state=0).fit(train)
    n, _, h, w = test.shape
    nbr = det._image_level(test, exclude_own=False)[1]
    allowed = np.zeros((n, train.shape[0]), bool)
    allowed[np.arange(n)[:, None], nbr] = True
    q = patch_rows(test)
    qg = np.repeat(np.arange(n), h * w)
    timed = test[:args.n_time]
    rows, ref = [], None
    for value in args.n_probe:
        cap = None if value == "none" else int(value)
        det.set_params(n_probe=cap)
        d, i, exact = ball_knn(q, det.index_.bank_, det.n_pixel_neighbors_, det.partition_,
                               qg, allowed, max_cells=cap, return_exact=True)
        if ref is None:
            assert cap is None, "the first --n-probe must be none (the exact reference)"
            ref = d[:, 0], i[:, 0]
        ratio = d[:, 0] / ref[0]
        scores, maps = det.score_and_map(test, output_size=out_size)
        det.score_and_map(timed, output_size=out_size)  # warm
        bb, sm = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            ext.transform(data.test_images[:args.n_time])
            bb.append(1000 * (time.perf_counter() - t) / args.n_time)
            t = time.perf_counter()
            det.score_and_map(timed, output_size=out_size)
            sm.append(1000 * (time.perf_counter() - t) / args.n_time)
        r = 1 + np.array(sm) / np.array(bb)
        row = {"n_probe": value, "backbone_ms_median": float(np.median(bb)),
               "score_and_map_ms_median": float(np.median(sm)),
               "score_and_map/backbone_median": float(np.median(r)),
               "score_and_map/backbone_range": [float(r.min()), float(r.max())],
               "exact_terminated": float(exact.mean()),
               "exact_terminated_first16": float(exact[:args.n_time * h * w].mean()),
               "recall@1": float(np.mean(i[:, 0] == ref[1])),
               "distance_equal": float(np.mean(np.isclose(d[:, 0], ref[0], rtol=1e-5))),
               "ratio_p50": float(np.percentile(ratio, 50)),
               "ratio_p99": float(np.percentile(ratio, 99)),
               "ratio_p999": float(np.percentile(ratio, 99.9)),
               "ratio_max": float(ratio.max()), "ratio_min": float(ratio.min())}
        row.update(C.metrics(scores, maps, data.test_labels, data.test_masks))
        print(row, flush=True)
        rows.append(row)
        C.write_results(args.name, rows, command, notes=(
            "`score_and_map/backbone` = 1 + SPADE ms per image / backbone ms per image on "
            f"the first {args.n_time} test images (broken_large), alternated, median of "
            f"{args.rounds} rounds; recall and ratios against the exact search of the same "
            "run over all 83 x 784 test patches; accuracy on all 83 test images."))


if __name__ == "__main__":
    main()
