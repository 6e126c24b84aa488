"""Does N-pad's model kept change between two skad checkouts? (issue #19)

Fits ``NPad(random_state=0, device="cpu")`` (in-sample calibration: the calibration
does not touch the model kept) on bottle's 209 cached training feature maps with each
checkout in a fresh process (1 thread), scores the 83 test images, and compares the
fitted arrays, the image scores and maps, and image / pixel AUROC.

Usage::

    python benchmarks/check_npad_model.py --skad /path/to/old/checkout .
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ATTRS = ("weights_", "means_a_", "whiten_a_", "means_b_", "whiten_b_", "centroids_")


def child(out, root):
    sys.path.insert(0, str(Path(root).resolve() / "benchmarks"))
    import _common as C  # puts that checkout's skad first on the path
    import torch

    from skad.detectors import NPad

    torch.set_num_threads(1)
    data = C.bottle_data()
    train = C.cached_features(data.train_images, "bottle_train", n_threads=1)
    test = C.cached_features(data.test_images, "bottle_test", n_threads=1)
    print("skad from", sys.modules["skad"].__file__, flush=True)
    det = NPad(random_state=0, device="cpu", calibration="in_sample").fit(train)
    scores = det.anomaly_score(test)
    maps = det.anomaly_map(test, output_size=data.test_masks.shape[1:])
    np.savez(out, scores=scores, maps=maps, labels=data.test_labels,
             masks=data.test_masks > 0, **{a: getattr(det, a) for a in ATTRS})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skad", nargs=2, required=True, help="old and new checkout")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    from sklearn.metrics import roc_auc_score

    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, root in enumerate(args.skad):
            out = f"{tmp}/{i}.npz"
            subprocess.run([sys.executable, str(HERE / "check_npad_model.py"), "--skad",
                            *args.skad, "--child", out, root], check=True,
                           env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            res.append(dict(np.load(out)))
    old, new = res
    for k in (*ATTRS, "scores", "maps"):
        a, b = old[k].astype(np.float64), new[k].astype(np.float64)
        if a.shape != b.shape:
            print(f"{k}: shapes differ {a.shape} {b.shape}")
            continue
        diff = np.abs(a - b)
        print(f"{k}: largest difference {diff.max():.3g} ({diff.max() / np.abs(a).max():.3g} "
              f"of the largest value), equal {np.mean(a == b):.1%}")
    for name, r in zip(("old", "new"), res):
        print(f"{name}: image AUROC {roc_auc_score(r['labels'], r['scores']):.6f}, pixel AUROC "
              f"{roc_auc_score(r['masks'].ravel(), r['maps'].ravel()):.6f}")


if __name__ == "__main__":
    main()
