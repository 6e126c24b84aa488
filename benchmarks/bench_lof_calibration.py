"""Why cross-fitted ("cv") calibration failed for LOF on subsampled patches.

``bench_thresholds.py`` measured ``PatchOutlierDetector(LocalOutlierFactor(novelty=True),
max_patches=10_000)`` on bottle: with ``calibration="cv"`` and ``false_alarm_rate=0.05``
it flagged 12 of 40 held-out good images (all in split 1). This script separates two
explanations of a fold model scoring differently from the final model:

- *n*: a model fitted on 4/5 of the images (167) scores on another scale than one
  fitted on all 209;
- *the draw*: ``max_patches`` draws 10 000 of the ~164 000 training patches at random,
  and each draw gives the image score (the max of 784 patch LOFs) its own scale.

For splits 0 and 1 of ``bench_thresholds.py`` it fits models on all 209 fit images and on
the 167 images of the first cross-fitting fold, each with ``--seeds`` patch draws, and
scores the 20 held-out good images: the spread across draws at one n against the shift
between the two n. It also records, for each model, which bank patch is the nearest
neighbour of each held-out image's highest-scoring patch: when one bank patch serves
most images, the image score is set by that patch of the draw.

Usage::

    python benchmarks/bench_lof_calibration.py [--splits 0 1] [--seeds 5]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_thresholds import good_pool, split_indices  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    command = ("flock /tmp/skad-bench.lock env OMP_NUM_THREADS=2 .venv/bin/python "
               "benchmarks/bench_lof_calibration.py " + shlex.join(sys.argv[1:]))

    from sklearn.neighbors import LocalOutlierFactor

    from skad._kernels import patch_rows
    from skad.detectors import PatchOutlierDetector
    from skad.detectors._base import _CV_FOLDS

    good, n_new = good_pool()
    rows = []
    for s in args.splits:
        fit_idx, new_idx = split_indices(len(good), n_new, s)
        # the first fold's training set, as BaseDetector._cross_fit_scores draws it
        # (random_state=s, as bench_thresholds.py sets it)
        folds = np.array_split(np.random.RandomState(s).permutation(len(fit_idx)),
                               _CV_FOLDS)
        fold_train = fit_idx[np.setdiff1d(np.arange(len(fit_idx)), folds[0])]
        for label, idx in [("all", fit_idx), ("fold 1", fold_train)]:
            for seed in range(args.seeds):
                t = time.perf_counter()
                det = PatchOutlierDetector(LocalOutlierFactor(n_neighbors=20, novelty=True),
                                           max_patches=10_000, random_state=seed,
                                           calibration="in_sample", device="cpu")
                det._validate_params()
                X = det._validate_input(good[idx], reset=True)
                det._fit(X)
                new = good[new_idx]
                scores, maps = det._score(new)
                top = maps.reshape(len(new), -1).argmax(axis=1)
                top_rows = patch_rows(new)[np.arange(len(new)) * maps[0].size + top]
                nn = det.estimator_.kneighbors(top_rows, n_neighbors=1,
                                               return_distance=False)[:, 0]
                _, counts = np.unique(nn, return_counts=True)
                rows.append({
                    "split": s, "fit on": f"{label} ({len(idx)} images)", "patch draw": seed,
                    "median new score": float(np.median(scores)),
                    "min / max new score": f"{scores.min():.3f} / {scores.max():.3f}",
                    "new images whose top patch has the commonest bank neighbour":
                        f"{counts.max()}/{len(new)}",
                    "s": round(time.perf_counter() - t, 1),
                })
                print(rows[-1], flush=True)

    lines = []
    for s in args.splits:
        for label in ("all", "fold 1"):
            m = [r["median new score"] for r in rows
                 if r["split"] == s and r["fit on"].startswith(label)]
            lines.append(f"- split {s}, fit on {label}: median new-image score over "
                         f"{len(m)} draws {np.mean(m):.3f} (sd {np.std(m, ddof=1):.3f}, "
                         f"range {min(m):.3f}-{max(m):.3f})")
    notes = ("Per split and training set, across patch draws:\n\n" + "\n".join(lines) + """

The held-out images are the same 20 in every row of a split; only the training set
(all 209 fit images or the first fold's 167) and the 10 000-patch draw change.
Interpretation: doc/operating.md, "LOF on patches".""")
    C.write_results("lof_calibration", rows, command, notes=notes)


if __name__ == "__main__":
    main()
