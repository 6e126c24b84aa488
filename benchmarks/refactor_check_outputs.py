"""Bit-equality check of detector outputs before/after a refactor (issue 18).

Each tree (``SKAD_TREE``: the ``skad`` package's parent folder, e.g. a ``git archive``
of the old commit) saves ``offset_``, ``score_samples`` and ``anomaly_map`` (feature
resolution) of six cases on the cached bottle features (EfficientNet-Lite0, ImageNet
normalisation: the same file for both trees) to ``PREFIX_<case>.npz``;
``compare`` then checks the two sets with ``np.array_equal`` and gives the image and
pixel AUROC of each side (maps upsampled to 224 px, sigma 4, as the benchmarks do).
The two saves can run at the same time (one thread each)::

    git archive 011824d skad | tar -x -C /tmp/skad_old
    SKAD_TREE=/tmp/skad_old OMP_NUM_THREADS=1 python benchmarks/refactor_check_outputs.py save /tmp/ref_old
    SKAD_TREE=$PWD OMP_NUM_THREADS=1 python benchmarks/refactor_check_outputs.py save /tmp/ref_new
    SKAD_TREE=$PWD python benchmarks/refactor_check_outputs.py compare /tmp/ref_old /tmp/ref_new

``save PREFIX CASE ...`` saves only the cases named. ``check PREFIX`` recomputes with
``SKAD_TREE`` and compares in one step (the form of the first runs).
"""
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ["SKAD_TREE"])  # before _common, which adds this repository
import skad  # noqa: E402

assert skad.__file__.startswith(os.environ["SKAD_TREE"]), skad.__file__
sys.path.insert(1, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from skad.detectors import NPad, PaDiM, PatchCluster, PatchCore, SPADE  # noqa: E402

CASES = {
    "pc10_cells": lambda tr, te, blind: (
        PatchCore(coreset_ratio=0.1, random_state=0, device="cpu"), tr, [te]),
    "pc1": lambda tr, te, blind: (
        PatchCore(coreset_ratio=0.01, random_state=0, device="cpu"), tr, [te]),
    "pcl25": lambda tr, te, blind: (
        PatchCluster(coreset_ratio=0.25, random_state=0, device="cpu"), blind,
        [blind, te[1::8]]),
    "spade": lambda tr, te, blind: (SPADE(device="cpu"), tr, [te]),
    "npad": lambda tr, te, blind: (NPad(random_state=0, device="cpu"), tr[:40], [te[::4]]),
    "padim": lambda tr, te, blind: (PaDiM(random_state=0, device="cpu"), tr, [te]),
}
FULL_TEST = ("pc10_cells", "pc1", "spade", "padim")  # score0 / map0: all 83 test images
# Both trees must score the same features: the extractor's defaults may differ between
# them (011824d normalised with ImageNet statistics; normalize="auto" came later), and
# the cache key follows the defaults. These are the features of the first checks.
FEATURES = {"normalize": "imagenet"}


def outputs(name, tr, te, blind):
    det, Xf, tests = CASES[name](tr, te, blind)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        det.fit(Xf)
    out = {"offset": np.array(det.offset_)}
    for j, Xt in enumerate(tests):
        out[f"score{j}"] = det.score_samples(Xt)
        out[f"map{j}"] = det.anomaly_map(Xt)
    return out, [str(x.message)[:60] for x in w]


def differences(ref, out, name):
    bad = 0
    for k, v in out.items():
        if not np.array_equal(ref[k], v):
            bad += 1
            rel = np.max(np.abs(ref[k] - v) / np.maximum(np.abs(ref[k]), 1e-12))
            print(name, k, "DIFFERS max rel", rel, flush=True)
    return bad


def accuracy(res, d):
    from skad._kernels.maps import gaussian_smooth, upsample_maps
    from skad.metrics import image_auroc, pixel_auroc

    up = gaussian_smooth(upsample_maps(res["map0"].astype(np.float32), d.test_masks.shape[1:]),
                         4.0)
    return (float(image_auroc(d.test_labels, -res["score0"])),
            float(pixel_auroc(d.test_masks, up)))


def main():
    mode, prefix, *rest = sys.argv[1:]
    print("skad from", skad.__file__, flush=True)
    d = C.bottle_data()
    if mode == "compare":
        other, bad = rest[0], 0
        for name in CASES:
            a, b = np.load(f"{prefix}_{name}.npz"), np.load(f"{other}_{name}.npz")
            n = differences(a, dict(b), name)
            bad += n
            line = f"{name}: {'equal' if n == 0 else f'{n} arrays differ'}"
            if name in FULL_TEST:
                (ia, pa), (ib, pb) = accuracy(a, d), accuracy(b, d)
                line += (f"; image AUROC {ia:.4f} / {ib:.4f}, pixel AUROC {pa:.4f} / {pb:.4f}"
                         " (first / second)")
            print(line, flush=True)
        print("ALL EQUAL" if bad == 0 else f"{bad} DIFFER")
        return
    tr = C.cached_features(d.train_images, "bottle_train", **FEATURES)
    te = C.cached_features(d.test_images, "bottle_test", **FEATURES)
    blind = np.concatenate([tr[:30], te[::6]])
    bad = 0
    for name in rest or CASES:
        t = time.time()
        out, warned = outputs(name, tr, te, blind)
        if mode == "save":
            np.savez(f"{prefix}_{name}.npz", **out)
            print(name, "saved", f"{time.time() - t:.1f}s", "warnings:", warned, flush=True)
        else:
            bad += differences(np.load(f"{prefix}_{name}.npz"), out, name)
            print(name, "checked", f"{time.time() - t:.1f}s", "warnings:", warned, flush=True)
    if mode == "check":
        print("ALL EQUAL" if bad == 0 else f"{bad} DIFFER")


if __name__ == "__main__":
    main()
