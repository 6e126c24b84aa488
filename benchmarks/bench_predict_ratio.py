"""Predict time over the backbone's, paired, for two code versions in one run (issue #19).

For each detector and each skad checkout (``--skad PATH``, e.g. this tree and a
worktree of an older commit), a fresh process fits the detector on bottle's cached
training features, then alternates ``rounds`` times: the backbone on 32 test images,
the detector's ``predict`` on ``--n-time`` test features (default all 83),
``score_and_map`` (maps at mask size). Each round's ratio is ``1 + detector / backbone`` per image (end to end over
backbone); the median round is reported. The versions run one after the other in the
same run and write their scores and maps, so accuracy (image / pixel AUROC, PRO) and
the largest score difference between versions come out of the same run.

Usage::

    python benchmarks/bench_predict_ratio.py --skad . /tmp/old --detectors npad spade \\
        --rounds 5 --name predict_ratio
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make(name, **kw):
    from skad.detectors import SPADE, NPad

    return {"npad": lambda: NPad(random_state=0, device="cpu", **kw),
            "spade": lambda: SPADE(device="cpu", **kw)}[name]()


def child(args):
    """One version, one detector: fit, paired rounds, scores and maps to ``args.out``."""
    sys.path.insert(0, str(HERE))
    import _common as C  # noqa: E402  (puts this tree's skad first: replaced below)

    sys.path.insert(0, os.path.abspath(args.skad))
    for mod in [m for m in sys.modules if m == "skad" or m.startswith("skad.")]:
        del sys.modules[mod]
    import skad

    data, train, test, ext = C.bottle_timing_setup(args.threads)
    cal = args.calibration
    if cal is not None and cal not in ("auto", "in_sample", "cv"):
        cal = float(cal)  # a held-out fraction
    det = make(args.detector, **({} if cal is None else {"calibration": cal}))
    t = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t
    out_size = data.test_masks.shape[1:]
    scores, maps = det.score_and_map(test, output_size=out_size)
    raw = det.anomaly_map(test)  # patch-level maps (recall of an approximate search)
    det.predict(test[:2])

    def per_image(f, n):
        t = time.perf_counter()
        f()
        return 1000 * (time.perf_counter() - t) / n

    timed = test[:args.n_time]
    rounds = {"backbone": [], "predict": [], "score_and_map": []}
    for _ in range(args.rounds):
        rounds["backbone"].append(per_image(lambda: ext.transform(data.test_images[:32]), 32))
        rounds["predict"].append(per_image(lambda: det.predict(timed), len(timed)))
        rounds["score_and_map"].append(per_image(
            lambda: det.score_and_map(timed, output_size=out_size), len(timed)))
    b = np.array(rounds["backbone"])
    res = {"skad": os.path.dirname(skad.__file__), "detector": args.detector,
           "fit_s": fit_s, "backbone_ms_median": float(np.median(b))}
    for key in ("predict", "score_and_map"):
        r = 1 + np.array(rounds[key]) / b
        res[f"{key}_ms_median"] = float(np.median(rounds[key]))
        res[f"{key}/backbone_median"] = float(np.median(r))
        res[f"{key}/backbone_range"] = [float(r.min()), float(r.max())]
    res.update(C.metrics(-det.score_samples(test), maps, data.test_labels, data.test_masks))
    np.savez(args.out, scores=scores, maps=maps.astype(np.float32), raw=raw)
    print(json.dumps(res), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skad", nargs="+", default=["."], help="skad checkouts (first = new)")
    ap.add_argument("--detectors", nargs="+", default=["npad", "spade"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-time", type=int, default=83,
                    help="test images per timed call (accuracy always on all 83)")
    ap.add_argument("--calibration", default=None,
                    help="the detectors' calibration (default: theirs); fit_s includes it")
    ap.add_argument("--name", default="predict_ratio")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--skad-one", dest="skad_one")
    ap.add_argument("--detector")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.child:
        args.skad = args.skad_one
        return child(args)
    sys.path.insert(0, str(HERE))
    import _common as C

    command = "python benchmarks/bench_predict_ratio.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    rows = []
    for det in args.detectors:
        outs = []
        for i, path in enumerate(args.skad):
            out = C.CACHE / f"_ratio_{args.name}_{det}_{i}.npz"
            proc = subprocess.run(
                [sys.executable, __file__, "--child", "--skad-one", path, "--detector", det,
                 "--rounds", str(args.rounds), "--threads", str(args.threads),
                 "--n-time", str(args.n_time),
                 *([] if args.calibration is None else ["--calibration", args.calibration]),
                 "--out", str(out)], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["version"] = "new" if i == 0 else f"old {i}"
            outs.append(np.load(out))
            if i:
                ref = outs[0]
                row["max |score - new|"] = float(np.abs(ref["scores"] - outs[i]["scores"]).max())
                row["max |map - new| / max map"] = float(
                    np.abs(ref["maps"] - outs[i]["maps"]).max() / np.abs(ref["maps"]).max())
                # patches whose distance is the old one (to float rounding): the recall
                # of an approximate new search against an exact old one
                row["patches equal to new"] = float(np.mean(np.isclose(
                    ref["raw"], outs[i]["raw"], rtol=1e-5, atol=1e-6)))
            print(json.dumps(row), flush=True)
            rows.append(row)
            C.write_results(args.name, rows, command)
    C.write_results(args.name, rows, command,
                    notes="`*/backbone` = 1 + detector ms per image / backbone ms per image, "
                          "median of the alternated rounds (range beside); fit_s includes "
                          "the calibration fits.")


if __name__ == "__main__":
    main()
