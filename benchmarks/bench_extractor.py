"""Throughput of PatchFeatureExtractor.transform (images/s) per backbone, size, threads.

Images: the first ``--n-images`` MVTec AD bottle training images (decoded once to a
uint8 array, so PNG decoding is not timed; the 900 px -> input_size resize is), or
synthetic images when the data set is absent. For each configuration the extractor is
fitted, warmed up on a few images, then ``transform`` is timed ``--repeats`` times; the
best (least disturbed) and median rates are reported, with the machine's 1-minute load
average read before and after the timed runs (the machine may be shared).

EfficientNet-Lite rows use the shipped pretrained weights. ResNet-18 / WideResNet-50-2
use ``weights=None`` (random weights: the architectures' cost only, the pretrained files
are not available offline here) and are labelled so.

Usage::

    python benchmarks/bench_extractor.py --out benchmarks/results/extractor_speed.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name  # noqa: E402
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from skad.features import PatchFeatureExtractor  # noqa: E402
from skad.utils.validation import load_image  # noqa: E402

BACKBONES = [
    ("efficientnet_lite0", "default", "pretrained (PyPI package)"),
    ("efficientnet_lite1", "default", "pretrained (PyPI package)"),
    ("efficientnet_lite2", "default", "pretrained (PyPI package)"),
    ("resnet18", None, "random weights, timing only"),
    ("wide_resnet50_2", None, "random weights, timing only"),
]


def load_images(n, data_root):
    folder = Path(data_root) / "mvtec_ad" / "bottle" / "train" / "good"
    files = sorted(folder.glob("*.png"))[:n] if folder.is_dir() else []
    if len(files) == n:
        desc = f"MVTec AD bottle train/good, first {n} images (900x900 PNG)"
        return np.stack([load_image(f) for f in files]), desc
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 900, 900, 3), dtype=np.uint8),
            f"synthetic uniform noise, {n} images 900x900 (bottle not found at {folder})")


def load_avg():
    return os.getloadavg()[0]




def wait_for_load(max_load, timeout):
    """Sleep until the 1-minute load average is below ``max_load`` (or ``timeout`` s)."""
    t0 = time.monotonic()
    while max_load is not None and load_avg() > max_load and time.monotonic() - t0 < timeout:
        time.sleep(10)


def bench_one(backbone, weights, size, threads, X, repeats, batch_size):
    ext = PatchFeatureExtractor(backbone, weights=weights, input_size=size, device="cpu",
                                n_threads=threads, batch_size=batch_size).fit(X[:1])
    ext.transform(X[:2])  # warm-up (allocator, oneDNN kernels)
    load_before = load_avg()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = ext.transform(X)
        rates.append(len(X) / (time.perf_counter() - t0))
        cpu_rates.append(len(X) / (time.process_time() - c0))
    load_after = load_avg()
    return {
        "backbone": backbone, "weights": "pretrained" if weights == "default" else "random",
        "size": size, "threads": threads, "best": max(rates), "median": statistics.median(rates),
        "cpu": statistics.median(cpu_rates),
        "shape": tuple(out.shape[1:]), "load_before": load_before, "load_after": load_after,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=lambda v: v if v == "auto" else int(v),
                        default="auto", help="'auto' (the extractor's default) or an int")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backbones", nargs="+", default=[b for b, _, _ in BACKBONES])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=None, help="Markdown file to write")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each row, wait until the 1-min load is below this")
    parser.add_argument("--wait-timeout", type=float, default=300.0,
                        help="longest wait for --max-load per row, seconds")
    args = parser.parse_args(argv)

    X, data_desc = load_images(args.n_images, args.data_root)
    notes = {b: note for b, _, note in BACKBONES}
    weights = {b: w for b, w, _ in BACKBONES}
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            for threads in args.threads:
                wait_for_load(args.max_load, args.wait_timeout)
                row = bench_one(backbone, weights[backbone], size, threads, X,
                                args.repeats, args.batch_size)
                rows.append(row)
                print(f"{backbone:20s} {size:4d}px {threads}T  best {row['best']:7.2f} img/s  "
                      f"median {row['median']:7.2f}  per CPU-s {row['cpu']:7.2f}  "
                      f"load {row['load_before']:.1f}->"
                      f"{row['load_after']:.1f}", flush=True)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    cmd = "python " + " ".join([os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])])
    lines = [
        "# PatchFeatureExtractor throughput (transform, CPU)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}",
        f"- data: {data_desc}; decoded once, the resize to input_size is timed",
        f"- settings: batch_size={args.batch_size}, {args.repeats} timed runs of "
        f"{args.n_images} images per row, after a warm-up; default layers "
        "(Lite: blocks.2 + blocks.3 since #21, blocks.2 + blocks.4 before; ResNets: "
        "layer2 + layer3), pooling=3",
        f"- command: `{cmd}`",
        f"- load (`uptime`) at start: `{uptime_start}`",
        f"- load (`uptime`) at end: `{uptime_end}`",
        "",
        "The machine is shared with other jobs: `load` is the 1-minute load average before"
        " -> after each row's timed runs; rows measured under a load above the core count"
        " are slower (wall clock) than on an idle machine. `best` / `median`: wall-clock"
        " images per second over the runs. `img per CPU-s`: images per second of CPU time"
        " used by the process (all its threads; median over the runs), which other jobs"
        " disturb much less: with 1 thread it approximates the idle-machine rate, with 2"
        " threads the idle rate is at most twice it.",
        "",
        "| backbone | weights | input | threads | best img/s | median img/s | img per CPU-s "
        "| output (C, h, w) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {notes[r['backbone']]} | {r['size']} | {r['threads']} | "
            f"{r['best']:.1f} | {r['median']:.1f} | {r['cpu']:.1f} | {r['shape']} | "
            f"{r['load_before']:.1f} -> {r['load_after']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
