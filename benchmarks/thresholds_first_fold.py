"""False alarms of a detector's first "cv" fold alone, from ``thresholds_raw.json``.

The "cv" calibration scores each training image with a model fitted without its fold;
the first fold's 42 scores (bottle, 209 training images) are then what
``calibration="holdout"`` gives with a fold model fitted from scratch. This recomputes
the held-out false alarms of that calibration from the stored raw scores (no fitting),
to compare with a detector whose "holdout" builds its fold model otherwise (N-pad).

Usage::

    python benchmarks/thresholds_first_fold.py --only N-pad
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main():
    from sklearn.utils import check_random_state

    from skad.detectors._base import _CV_FOLDS, conformal_offset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="N-pad")
    args = ap.parse_args()
    raw = json.loads((C.RESULTS / "thresholds_raw.json").read_text())[args.only]["splits"]
    alarms = {"auto": 0, 0.05: 0}
    n_new = 0
    for split, runs in sorted(raw.items(), key=lambda kv: int(kv[0])):
        if "cv" not in runs:
            continue
        cal, new = np.asarray(runs["cv"]["calibration"]), np.asarray(runs["cv"]["new"])
        # the folds as BaseDetector draws them (bench_thresholds sets random_state=split)
        first = np.array_split(check_random_state(int(split)).permutation(len(cal)),
                               _CV_FOLDS)[0]
        # the old code stored each fold's scores in sorted order at the fold's
        # positions: the fold's set of scores is the same either way
        for rule in alarms:
            thr = cal[first].max() if rule == "auto" else conformal_offset(cal[first], rule)
            alarms[rule] += int((new > thr).sum())
        n_new += len(new)
    print(f"{args.only}, first cv fold ({len(first)} calibration images): "
          + ", ".join(f"{r}: {k}/{n_new}" for r, k in alarms.items()))


if __name__ == "__main__":
    main()
