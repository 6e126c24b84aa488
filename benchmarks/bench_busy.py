"""skad on a busy machine: the same work alone and beside a CPU hog, old vs new thread defaults.

The work (one fresh process per run, so each setting controls import order and
environment): PatchFeatureExtractor (EfficientNet-Lite0, 224 px) on ``--images``
synthetic images, PatchCore 10 % fit on two thirds of them, ``anomaly_map`` of the rest.

Settings:

- ``old``: skad's defaults before this change: torch imported before skad (libgomp's
  threads spin while they wait) and one thread per core (``n_threads=-1``);
- ``passive``: one thread per core, waiting threads sleep (``import skad`` first);
- ``auto``: spinning threads, but the ``"auto"`` count (free cores);
- ``new``: today's defaults (``import skad`` first, nothing set: both of the above);
- ``one``: one thread (the reference the issue compared against).

Each round runs every setting once alone and once beside a hog (``while True: pass``
in another process, unpinned, as a user's other job), in alternation, so a ratio is
taken between runs seconds apart on a machine other people share. The hog's CPU share
while it ran beside each setting says what skad cost the other job.

Run: ``python benchmarks/bench_busy.py --rounds 3`` (under the benchmark lock on the
shared machine) -> ``benchmarks/results/busy_machine.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SETTINGS = ("old", "passive", "auto", "new", "one")

_WORK = r"""
import os, sys, time
setting, n_images = sys.argv[1], int(sys.argv[2])
if setting in ("old", "auto"):
    import torch  # before skad: libgomp has read its (unset) wait policy: spinning
import skad
from skad.utils import passive_wait_active, thread_limits
import numpy as np
import skad.detectors
from skad.detectors import PatchCore
from skad.features import PatchFeatureExtractor
threads = {"old": -1, "passive": -1, "auto": None, "new": None, "one": 1}[setting]
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (n_images, 224, 224, 3), dtype=np.uint8)
n_fit = 2 * n_images // 3
t0 = time.perf_counter()
with thread_limits(threads) as n:
    ext = PatchFeatureExtractor(device="cpu", batch_size=4).fit(X[:1])
    pc = PatchCore(coreset_ratio=0.1, random_state=0, device="cpu").fit(ext.transform(X[:n_fit]))
    maps = pc.anomaly_map(ext.transform(X[n_fit:]), output_size=224)
import torch
print(time.perf_counter() - t0, passive_wait_active(), n if n is not None
      else torch.get_num_threads())
"""


def _proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(setting, n_images, hog):
    env = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS"):
        env.pop(k, None)
    hog_proc = None
    if hog:
        hog_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        hog_cpu0, hog_t0 = _proc_cpu_s(hog_proc.pid), time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", _WORK, setting, str(n_images)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if hog_proc is not None:
            hog_share = (_proc_cpu_s(hog_proc.pid) - hog_cpu0) / (time.monotonic() - hog_t0)
            hog_proc.kill()
            hog_proc.wait()
    seconds, passive, threads = out.stdout.split()[-3:]
    return {"s": float(seconds), "passive": passive == "True", "threads": int(threads),
            "hog_share": hog_share if hog else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--name", default="busy_machine")
    ap.add_argument("--from-log", default=None,
                    help="write the results from the printed lines of an interrupted run "
                         "(complete rounds only)")
    args = ap.parse_args(argv)
    settings = args.settings.split(",")
    runs = {(s, h): [] for s in settings for h in (False, True)}
    if args.from_log:
        import ast

        lines = [ln.split(maxsplit=4) for ln in open(args.from_log) if ln.startswith("round ")]
        per_round = 2 * len(settings)
        n_rounds = len(lines) // per_round
        for _, r, s, hog, res in lines[:n_rounds * per_round]:
            runs[s, hog == "hog=True"].append(ast.literal_eval(res))
        args.rounds = n_rounds
    for r in range(0 if args.from_log else args.rounds):
        for s in settings:
            for hog in (False, True):
                res = run_once(s, args.images, hog)
                runs[s, hog].append(res)
                print(f"round {r} {s:8s} hog={hog!s:5s} {res}", flush=True)

    from _common import write_results

    rows = []
    for s in settings:
        alone = [x["s"] for x in runs[s, False]]
        busy = [x["s"] for x in runs[s, True]]
        one_busy = [x["s"] for x in runs["one", True]] if "one" in settings else busy
        rows.append({
            "setting": s,
            "passive wait": runs[s, True][0]["passive"],
            "threads alone / beside hog": f"{runs[s, False][0]['threads']} / "
                                          f"{runs[s, True][0]['threads']}",
            "alone s (median)": statistics.median(alone),
            "beside hog s (median)": statistics.median(busy),
            "beside hog / alone (median of rounds)": statistics.median(
                b / a for a, b in zip(alone, busy)),
            "beside hog / one thread beside hog": statistics.median(
                b / o for b, o in zip(busy, one_busy)),
            "hog's CPU share (median)": statistics.median(
                x["hog_share"] for x in runs[s, True]),
        })
    cmd = ("flock /tmp/skad-bench.lock python benchmarks/bench_busy.py "
           f"--rounds {args.rounds} --images {args.images}")
    if args.from_log:
        cmd += (f" (run with --rounds 3, stopped after {args.rounds} complete round(s) "
                "for lack of time; table written with --from-log LOG)")
    notes = ("Per round every setting ran alone and beside the hog, in alternation; "
             "ratios are medians over rounds of per-round ratios. 'hog's CPU share': CPU "
             "seconds the hog got per wall second while skad ran beside it (1.0 = a whole "
             "core; the other engineers' jobs on this shared machine take their part too).")
    write_results(args.name, rows, cmd, notes=notes, data=f"{args.images} random 224 px images")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
