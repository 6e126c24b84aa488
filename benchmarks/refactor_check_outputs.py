"""Bit-equality check of detector outputs before/after a refactor (issue 18): `save` with the
old tree (SKAD_TREE=/path/to/old/tree), `check` with the new; cached bottle features."""
import sys, time, warnings
import numpy as np
import os
sys.path.insert(0, os.environ["SKAD_TREE"])  # before _common, which adds /work/wt18
import skad
assert skad.__file__.startswith(os.environ["SKAD_TREE"]), skad.__file__
sys.path.insert(1, "/work/wt18/benchmarks")
import _common as C
from skad.detectors import PatchCore, PatchCluster, SPADE, NPad, PaDiM
print("skad from", skad.__file__, flush=True)
mode = sys.argv[1]
only = sys.argv[2:] or None
d = C.bottle_data()
tr = C.cached_features(d.train_images, "bottle_train")
te = C.cached_features(d.test_images, "bottle_test")
sub_tr, sub_te = tr[:40], te[::4]
blind = np.concatenate([tr[:30], te[::6]])
cases = {
    "pc10_cells": lambda: (PatchCore(coreset_ratio=0.1, random_state=0, device="cpu"), tr, [te]),
    "pc1": lambda: (PatchCore(coreset_ratio=0.01, random_state=0, device="cpu"), tr, [te]),
    "pcl25": lambda: (PatchCluster(coreset_ratio=0.25, random_state=0, device="cpu"), blind, [blind, te[1::8]]),
    "spade": lambda: (SPADE(device="cpu"), tr, [te]),
    "npad": lambda: (NPad(random_state=0, device="cpu"), sub_tr, [sub_te]),
    "padim": lambda: (PaDiM(random_state=0, device="cpu"), tr, [te]),
}
bad = 0
for name, mk in cases.items():
    if only and name not in only:
        continue
    t = time.time()
    det, Xf, tests = mk()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        det.fit(Xf)
    out = {"offset": np.array(det.offset_)}
    for j, Xt in enumerate(tests):
        out[f"score{j}"] = det.score_samples(Xt)
        out[f"map{j}"] = det.anomaly_map(Xt)
    path = f"/tmp/ref18_{name}.npz"
    if mode == "save":
        np.savez(path, **out)
        print(name, "saved", f"{time.time()-t:.1f}s", flush=True)
    else:
        ref = np.load(path)
        for k, v in out.items():
            if not np.array_equal(ref[k], v):
                bad += 1
                rel = np.max(np.abs(ref[k] - v) / np.maximum(np.abs(ref[k]), 1e-12))
                print(name, k, "DIFFERS max rel", rel, flush=True)
        print(name, "checked", f"{time.time()-t:.1f}s", "warnings:", [str(x.message)[:60] for x in w], flush=True)
print("ALL EQUAL" if bad == 0 else f"{bad} DIFFER")
