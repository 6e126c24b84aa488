"""``skad fit`` + ``skad predict`` reproduce ``skad benchmark``'s scores on MVTec AD bottle.

Runs three console commands on ``../shared/data/mvtec_ad/bottle`` (or
``$SKAD_SHARED_DATA/mvtec_ad/bottle``):

1. ``skad benchmark --data <mvtec_ad> --category bottle --detectors DET``
2. ``skad fit --train <bottle> --detector DET -o model.joblib``
3. ``skad predict --model model.joblib --images <bottle>/test --recursive -o scores.csv``

and compares the per-image anomaly scores of (1) and (3), file by file. Writes
``benchmarks/results/cli_bottle_reproduce.md``.

Usage::

    python benchmarks/cli_bottle_reproduce.py [--detectors patchcore,padim]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from skad.metrics import image_auroc
from skad.benchmark import machine_description

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SKAD_SHARED_DATA", HERE.parent.parent / "shared" / "data"))


def run(cmd, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="patchcore")
    parser.add_argument("--threads", default=None, help="torch threads for every command")
    parser.add_argument("--bench-dir", default=None,
                        help="reuse the output folder of an earlier run of step 1")
    parser.add_argument("--result", default=str(HERE / "results" / "cli_bottle_reproduce.md"))
    args = parser.parse_args()
    root = DATA / "mvtec_ad"
    bottle = root / "bottle"
    if not bottle.is_dir():
        sys.exit(f"MVTec AD bottle not found at {bottle}")
    skad = shutil.which("skad") or sys.exit("skad console command not installed")
    work = Path(tempfile.mkdtemp(prefix="skad-repro-"))
    names = [n.strip() for n in args.detectors.split(",")]
    threads = ["--threads", args.threads] if args.threads else []

    bench_cmd = ["skad", "benchmark", "--data", str(root), "--category", "bottle",
                 "--detectors", ",".join(names), "--out", "bench", "--quiet", *threads]
    if args.bench_dir:
        bench_dir, t_bench = Path(args.bench_dir), float("nan")
    else:
        t_bench = run([skad, *bench_cmd[1:]], work)
        bench_dir = work / "bench"
    bench = pd.read_csv(bench_dir / "scores.csv")
    results = pd.read_csv(bench_dir / "results.csv").set_index("detector")

    rows, cmds = [], [" ".join(bench_cmd)]
    for name in names:
        fit_cmd = ["skad", "fit", "--train", str(bottle), "--detector", name,
                   "-o", f"{name}.joblib", "--quiet", *threads]
        pred_cmd = ["skad", "predict", "--model", f"{name}.joblib", "--images",
                    str(bottle / "test"), "--recursive", "-o", f"{name}_scores.csv", "--quiet", *threads]
        t_fit = run([skad, *fit_cmd[1:]], work)
        t_pred = run([skad, *pred_cmd[1:]], work)
        cmds += [" ".join(fit_cmd), " ".join(pred_cmd)]
        pred = pd.read_csv(work / f"{name}_scores.csv")
        merged = bench[["file", "label", name]].merge(pred, on="file", how="outer",
                                                     indicator=True)
        if not (merged["_merge"] == "both").all():
            sys.exit(f"file lists differ:\n{merged[merged['_merge'] != 'both']}")
        a = merged[name].to_numpy(float)
        b = merged["anomaly_score"].to_numpy(float)
        rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
        rows.append({
            "detector": name,
            "images": len(merged),
            "max abs. diff": f"{np.abs(a - b).max():.3g}",
            "max rel. diff": f"{rel.max():.3g}",
            "same ranking": bool((np.argsort(a, kind="stable") == np.argsort(b, kind="stable")).all()),
            "image AUROC benchmark": f"{image_auroc(merged['label'], a):.4f}",
            "image AUROC fit+predict": f"{image_auroc(merged['label'], b):.4f}",
            "benchmark pixel AUROC": f"{results.loc[name, 'pixel_auroc']:.4f}",
            "fit s (command)": f"{t_fit:.0f}",
            "predict s (command, 83 images)": f"{t_pred:.0f}",
        })
    table = pd.DataFrame(rows)
    md = [
        "# `skad fit` + `skad predict` reproduce `skad benchmark` on MVTec AD bottle",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_description()}",
        "- data: MVTec AD bottle from ../shared/data (512x512 files), one-class protocol; the "
        "benchmark loads images with resize 256 + centre crop 224, the saved model applies the "
        "same geometry itself (`ResizeCrop` step) to the raw files",
        "- backbone: efficientnet_lite0 at 224 px (default), registry defaults, seed 0",
        f"- script: `python benchmarks/cli_bottle_reproduce.py --detectors {args.detectors}"
        f"{' --threads ' + args.threads if args.threads else ''}` "
        f"(benchmark command took {t_bench:.0f} s)",
        "",
        "Commands (run in an empty folder):",
        "",
        "```bash",
        *cmds,
        "```",
        "",
        "Per-image anomaly scores, benchmark vs. fit + predict, matched by file path:",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)),
        "",
    ]
    Path(args.result).write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
