"""How hard is skad's built-in synthetic set? A trivial baseline against a patch-kNN model.

The trivial baseline is the per-pixel distance to the mean normal training image
(Euclidean over RGB, image score = max of the map). The reference is a PatchCore-like
one-class model: skad's PatchFeatureExtractor (EfficientNet-Lite0, shipped weights) and
PatchCluster with n_neighbors=1 on the full training bank (= nearest-neighbour patch
distance, PatchCore-100 %). A hard enough set shows a clear gap between the two.

Usage: python benchmarks/bench_synthetic_difficulty.py [--kinds texture object mixed]
       [--n-train 40] [--n-test 30] [--image-size 128] [--threads 2] [--no-reference]
Writes benchmarks/results/synthetic_difficulty.md (and prints it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name  # noqa: E402

from skad.datasets import make_synthetic
from skad.metrics import image_auroc, pixel_ap, pixel_auroc, pro_score


def mean_image_baseline(train, test):
    """Per-pixel Euclidean distance (RGB, 0-1) to the mean training image."""
    mean = train.astype(np.float64).mean(axis=0) / 255.0
    maps = np.sqrt(((test.astype(np.float64) / 255.0 - mean) ** 2).sum(axis=-1))
    return maps.reshape(len(test), -1).max(axis=1), maps.astype(np.float32)


def patch_knn_reference(train, test, threads):
    import torch

    from skad import make_pipeline
    from skad.detectors.patchcluster import PatchCluster
    from skad.features import PatchFeatureExtractor

    torch.set_num_threads(threads)
    pipe = make_pipeline(
        PatchFeatureExtractor("efficientnet_lite0", device="cpu"),
        PatchCluster(n_neighbors=1, exclude=None, projection_dim=None, random_state=0),
    )
    pipe.fit(train)
    scores, maps = pipe.score_and_map(test)
    return np.asarray(scores), np.asarray(maps)


def evaluate(data, scores, maps):
    row = {
        "image AUROC": image_auroc(data.test_labels, scores),
        "pixel AUROC": pixel_auroc(data.test_masks, maps),
        "PRO@0.3": pro_score(data.test_masks, maps),
        "pixel AP": pixel_ap(data.test_masks, maps),
    }
    types = np.asarray(data.test_defect_types)
    good = types == "good"
    per_type = {}
    for t in data.defect_types:
        sel = good | (types == t)
        per_type[t] = image_auroc(data.test_labels[sel], scores[sel])
    return row, per_type




def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["texture", "object", "mixed"])
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test", type=int, default=30)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "synthetic_difficulty.md"))
    args = p.parse_args(argv)

    metrics = ["image AUROC", "pixel AUROC", "PRO@0.3", "pixel AP"]
    table = ["| kind | model | " + " | ".join(metrics) + " | time (s) |",
             "|---|---|" + "---|" * (len(metrics) + 1)]
    per_type_rows = []
    gen_times = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        data = make_synthetic(n_train=args.n_train, n_test=args.n_test,
                              image_size=args.image_size, kind=kind, random_state=args.seed)
        gen_times[kind] = time.perf_counter() - t0
        models = [("mean-image distance (trivial)", lambda d: mean_image_baseline(d.train_images, d.test_images))]
        if not args.no_reference:
            models.append(("EfficientNet-Lite0 + patch 1-NN",
                           lambda d: patch_knn_reference(d.train_images, d.test_images, args.threads)))
        for name, fn in models:
            t0 = time.perf_counter()
            scores, maps = fn(data)
            elapsed = time.perf_counter() - t0
            row, per_type = evaluate(data, scores, maps)
            table.append(f"| {kind} | {name} | " + " | ".join(f"{row[m]:.3f}" for m in metrics)
                         + f" | {elapsed:.1f} |")
            per_type_rows.append(f"| {kind} | {name} | " + " | ".join(
                f"{per_type.get(t, float('nan')):.3f}" for t in ("scratch", "spot", "crack", "missing", "color")) + " |")
            print(table[-1], flush=True)

    cmd = "python benchmarks/bench_synthetic_difficulty.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        "# Difficulty of the built-in synthetic set (`skad.datasets.make_synthetic`)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores (`nproc`), {cpu_name()}, torch threads {args.threads}; "
        "shared with other jobs (times are indicative)",
        f"- load average (1, 5, 15 min) at the end of the run: "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        f"- data: make_synthetic(n_train={args.n_train}, n_test={args.n_test}, "
        f"image_size={args.image_size}, kind=..., random_state={args.seed}); half the test "
        "images defective, one defect each, types in turn (scratch, spot, crack, missing, color)",
        "- generation time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in gen_times.items()),
        "- trivial baseline: per-pixel Euclidean RGB distance to the mean normal training "
        "image; image score = max of the map",
        "- reference: `make_pipeline(PatchFeatureExtractor('efficientnet_lite0'), "
        "PatchCluster(n_neighbors=1, exclude=None, projection_dim=None))` fitted on the "
        "training normals (nearest-neighbour patch distance on the full bank, PatchCore-100 % "
        "without coreset); maps upsampled to the image size and smoothed (sigma 4)",
        f"- command: `{cmd.strip()}`",
        "",
        "## Scores",
        "",
        *table,
        "",
        "## Image AUROC per defect type (that type's images against all good images)",
        "",
        "| kind | model | scratch | spot | crack | missing | color |",
        "|---|---|---|---|---|---|---|",
        *per_type_rows,
        "",
        "## Reading",
        "",
        "The trivial model only sees intensity at fixed positions. On the texture the "
        "grain's phase changes from image to image and normal pores are as dark as the "
        "defects; on the object the part moves and rotates a little. It therefore scores "
        "clearly below the CNN patch model at image and pixel level (its pixel AUROC on "
        "the object stays fairly high because most object defects change intensity where "
        "the mean image is sharp). Low-contrast colour changes and thin scratches remain "
        "the hardest defects for both. Mixed (two products in one normal class) is the "
        "hardest set for the trivial model.",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
