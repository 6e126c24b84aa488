"""Time the README's main command, ``skad benchmark`` with no flags, end to end.

Runs the installed console command exactly as a user would (a fresh process in an
empty working folder, default output ``skad-report/``), records its wall time, the CPU
time of the process, the machine's load average before, during and after, and writes
the results table with that timing to ``benchmarks/results/skad_benchmark_synthetic.md``.

Usage::

    python benchmarks/skad_benchmark_synthetic.py [--keep DIR] [-- extra skad flags]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from skad.benchmark import machine_description

HERE = Path(__file__).resolve().parent


def _load():
    with open("/proc/loadavg") as fh:
        return tuple(float(v) for v in fh.read().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="copy the report folder here")
    parser.add_argument("--result", default=str(HERE / "results" / "skad_benchmark_synthetic.md"))
    parser.add_argument("extra", nargs="*", help="extra flags for skad benchmark")
    args = parser.parse_args()

    skad = shutil.which("skad")
    if skad is None:
        sys.exit("the skad console command is not installed (pip install -e .)")
    work = Path(tempfile.mkdtemp(prefix="skad-bench-"))
    cmd = [skad, "benchmark", *args.extra]
    load_before = _load()
    samples, stop = [], threading.Event()

    def sample():
        while not stop.wait(10.0):
            samples.append(_load()[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = _load()
    print(proc.stdout)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(f"skad benchmark exited with {proc.returncode}")

    report = work / "skad-report"
    table = pd.read_csv(report / "results.csv")
    md_report = (report / "report.md").read_text()
    header = md_report.split("## Results", 1)[0].strip().splitlines()[1:]
    results = "## Results" + md_report.split("## Results", 1)[1].split("## Curves", 1)[0]
    cpu = usage.ru_utime + usage.ru_stime
    shown = " ".join(["skad", "benchmark", *args.extra])
    lines = [
        "# `skad benchmark` with no flags: the README's main command",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine_description()} (`nproc` = {os.cpu_count()})",
        f"- command: `{shown}` (run by `python benchmarks/skad_benchmark_synthetic.py`,"
        " in an empty folder, as a fresh process)",
        f"- wall time: **{wall:.0f} s** ({wall / 60:.1f} min); CPU time of the process "
        f"{cpu:.0f} s (user {usage.ru_utime:.0f} s + system {usage.ru_stime:.0f} s)",
        f"- load average (1/5/15 min) before: {load_before}, after: {load_after}; "
        f"1-min load sampled every 10 s during the run: min {min(samples, default=0):.1f}, "
        f"max {max(samples, default=0):.1f} (other jobs shared the 2 cores when above ~2)",
        f"- detectors: {', '.join(table['detector'])} ({len(table)}); failed: "
        f"{', '.join(table.loc[table['error'].notna(), 'detector']) or 'none'}",
        "",
        "## What the report said about the run",
        "",
        *header,
        "",
        results.strip(),
        "",
    ]
    Path(args.result).write_text("\n".join(lines))
    print(f"wrote {args.result}")
    if args.keep:
        shutil.copytree(report, args.keep, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
