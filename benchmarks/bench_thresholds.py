"""False alarms on held-out good bottles: in-sample vs unbiased calibration, conformal rates.

The 209 train/good and 20 test/good images of MVTec AD bottle (cached default
features) are pooled; each of ``--splits`` random splits fits every detector on 209 of
them and counts how many of the other 20 ``predict`` flags (false alarms). Thresholds:

- ``in-sample auto``: ``calibration="in_sample", contamination="auto"`` (skad before
  the calibration parameter: the least normal training score; PatchCore and SPADE
  already left each image out of its own bank there);
- ``auto``: the defaults now (``calibration="auto"``: leave-one-image-out for PatchCore
  and SPADE, 5-fold cross-fitted scores for PaDiM, N-pad and LOF), ``contamination="auto"``;
- ``far=a``: ``false_alarm_rate=a`` (split-conformal quantile), with the default
  calibration and with ``calibration=0.2`` (a held-out fifth; the model is fitted on
  the other 167 images: the exact split-conformal setting).

One fit per (detector, split, calibration mode): the rules are applied to the same
calibration scores (``skad.detectors._base.conformal_offset``), which is what ``fit``
does with those parameters.

Usage::

    python benchmarks/bench_thresholds.py [--splits 10] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RATES = (0.05, 0.01)


def make(name):
    from sklearn.neighbors import LocalOutlierFactor

    from skad.detectors import SPADE, NPad, PaDiM, PatchCore, PatchOutlierDetector

    return {
        "PatchCore 10%": lambda: PatchCore(coreset_ratio=0.1, random_state=0, device="cpu"),
        "PaDiM (100 ch)": lambda: PaDiM(n_features=100, random_state=0, device="cpu"),
        "SPADE (K=50)": lambda: SPADE(n_neighbors=50, device="cpu"),
        "N-pad": lambda: NPad(random_state=0, device="cpu"),
        "LOF on pooled features": lambda: PatchOutlierDetector(
            LocalOutlierFactor(n_neighbors=20, novelty=True)),
        "LOF on patches": lambda: PatchOutlierDetector(
            LocalOutlierFactor(n_neighbors=20, novelty=True), max_patches=10_000,
            random_state=0),
    }[name]()


POOLED = {"LOF on pooled features"}


def run_split(name, feats, fit_idx, new_idx, seed):
    """Calibration and held-out anomaly scores of one detector on one split, per mode."""
    det0 = make(name)
    modes = ["in_sample", 0.2]
    if det0._default_calibration() != "in_sample":
        modes.insert(1, "cv")
    out = {}
    for mode in modes:
        det = make(name).set_params(calibration=mode)
        if "random_state" in det.get_params():
            det.set_params(random_state=seed)
        t = time.perf_counter()
        det.fit(feats[fit_idx])
        fit_s = time.perf_counter() - t
        out[str(mode)] = {
            "calibration": (-det.calibration_scores_).tolist(),
            "new": det.anomaly_score(feats[new_idx]).tolist(),
            "fit_s": fit_s,
        }
    out["auto"] = out["cv"] if "cv" in out else out["in_sample"]
    return out


def rate(cal, new, rule):
    from skad.detectors._base import conformal_offset

    cal = np.asarray(cal)
    new = np.asarray(new)
    thr = cal.max() if rule == "auto" else conformal_offset(cal, rule)
    return float(np.mean(new > thr))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    # N-pad (fit about 9 min on bottle here, 6 fits with "cv") and LOF on patches are
    # available with --only; their calibration is checked on synthetic data in
    # tests/test_thresholds.py
    names = args.only or ["PatchCore 10%", "PaDiM (100 ch)", "SPADE (K=50)",
                          "LOF on pooled features"]

    data = C.bottle_data()
    train = C.cached_features(data.train_images, "bottle_train")
    test = C.cached_features(data.test_images, "bottle_test")
    good = np.concatenate([train, test[data.test_labels == 0]])
    n_new = int((data.test_labels == 0).sum())
    print(f"pool: {len(good)} good images, {n_new} held out per split", flush=True)
    pooled = None

    raw = {}
    rng = np.random.default_rng(0)
    splits = [rng.permutation(len(good)) for _ in range(args.splits)]
    for name in names:
        feats = good
        if name in POOLED:
            if pooled is None:
                pooled = good.mean(axis=(2, 3))
            feats = pooled
        raw[name] = []
        for s, perm in enumerate(splits):
            t = time.perf_counter()
            raw[name].append(run_split(name, feats, np.sort(perm[n_new:]),
                                       np.sort(perm[:n_new]), s))
            print(f"{name} split {s}: {time.perf_counter() - t:.1f} s", flush=True)

    rows = []
    for name, per_split in raw.items():
        def fa(mode, rule):
            rates = [rate(r[mode]["calibration"], r[mode]["new"], rule) for r in per_split]
            return float(np.mean(rates)), sum(round(x * n_new) for x in rates)

        row = {"detector": name, "auto calibration": "cv" if "cv" in per_split[0]
               else "leave-one-image-out"}
        total = n_new * len(per_split)
        for label, mode, rule in [("in-sample auto", "in_sample", "auto"),
                                  ("auto", "auto", "auto"),
                                  ("far=0.05", "auto", 0.05),
                                  ("far=0.01", "auto", 0.01),
                                  ("split 0.2, auto", "0.2", "auto"),
                                  ("split 0.2, far=0.05", "0.2", 0.05)]:
            m, k = fa(mode, rule)
            row[label] = f"{m:.3f} ({k}/{total})"
        row["fit s (in-sample / auto)"] = (
            f"{np.mean([r['in_sample']['fit_s'] for r in per_split]):.1f} / "
            f"{np.mean([r['auto']['fit_s'] for r in per_split]):.1f}")
        rows.append(row)
        print(row, flush=True)

    n_cal = len(good) - n_new
    total = n_new * args.splits
    sd = 2 * (total * 0.05 * 0.95) ** 0.5
    notes = f"""\
Each cell: mean false-alarm rate on the {n_new} held-out good images over
{args.splits} random splits of the {len(good)} good bottle images (fit on {n_cal}), and
false alarms / held-out goods in total. Targets: `auto` = at most 1/(n_cal+1) =
{1 / (n_cal + 1):.4f} (1/{int(0.2 * n_cal + 0.5) + 1} = {1 / (round(0.2 * n_cal) + 1):.3f}
with the 0.2 split), `far=a` = at most a. Sampling error: with {total} held-out goods
in total, a true rate of 0.05 is observed as {0.05 * total:.0f} +- {sd:.0f} (2 sd) alarms
(binomial; the splits share images, so the spread is somewhat larger). `in-sample auto` is
the threshold before calibration existed (PatchCore and SPADE already left each image
out of their bank then, so their rows do not change). Raw scores:
`benchmarks/results/thresholds_raw.json`.
"""
    C.write_results("thresholds", rows, "flock /tmp/skad-bench.lock env OMP_NUM_THREADS=2 "
                    ".venv/bin/python benchmarks/bench_thresholds.py "
                    + shlex.join(sys.argv[1:]), notes=notes)
    (C.RESULTS / "thresholds_raw.json").write_text(json.dumps(raw))


if __name__ == "__main__":
    main()
