"""Old vs new PatchCore 10 % / PatchCluster 25 % scoring, alternated in one process (issue 18).

The old tree is imported as ``skad_old`` from ``SKAD_OLD_PKG`` (a folder holding the old
``skad`` package renamed ``skad_old``; skad imports itself relatively), the new one as
``skad`` (this repository). Both detectors are fitted identically (same bank), then
``predict`` and ``score_and_map(output_size=(224, 224))`` are timed alternately (ABAB /
BABA), 8 rounds, one thread::

    mkdir -p /tmp/skad_oldpkg && git archive 011824d skad | tar -x -C /tmp/skad_oldpkg
    mv /tmp/skad_oldpkg/skad /tmp/skad_oldpkg/skad_old
    SKAD_OLD_PKG=/tmp/skad_oldpkg PYTHONPATH=$PWD python benchmarks/refactor_check_speed.py
"""
import sys, time, json, os
from pathlib import Path
import numpy as np
sys.path.insert(0, os.environ["SKAD_OLD_PKG"])
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
torch.set_num_threads(1)
import _common as C
import skad, skad_old
from skad.detectors import PatchCore as New, PatchCluster as NewC
from skad_old.detectors import PatchCore as Old, PatchCluster as OldC
print("new", skad.__file__, "old", skad_old.__file__, flush=True)
d = C.bottle_data()
tr = C.cached_features(d.train_images, "bottle_train")
te = C.cached_features(d.test_images, "bottle_test")
blind = np.concatenate([tr[:30], te[::6]])
res = {}
for label, cls_old, cls_new, kw, Xf, Xs in [
        ("patchcore10", Old, New, dict(coreset_ratio=0.1), tr, te),
        ("patchcluster25", OldC, NewC, dict(coreset_ratio=0.25), blind, te[1::8])]:
    dets = {"old": cls_old(random_state=0, device="cpu", **kw).fit(Xf),
            "new": cls_new(random_state=0, device="cpu", **kw).fit(Xf)}
    assert np.array_equal(dets["old"].memory_bank_, dets["new"].memory_bank_)
    for call in ("predict", "score_and_map"):
        f = {k: (lambda det=det: det.predict(Xs)) if call == "predict" else
             (lambda det=det: det.score_and_map(Xs, output_size=(224, 224))) for k, det in dets.items()}
        a, b = f["old"](), f["new"]()
        same = all(np.array_equal(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else np.array_equal(a, b)
        t = {"old": [], "new": []}
        for r in range(8):
            for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
                s = time.perf_counter(); f[k](); t[k].append(time.perf_counter() - s)
        old, new = np.array(t["old"]), np.array(t["new"])
        res[f"{label} {call}"] = {
            "identical_output": bool(same),
            "old_ms_per_image_median": round(1000 * float(np.median(old)) / len(Xs), 3),
            "new_ms_per_image_median": round(1000 * float(np.median(new)) / len(Xs), 3),
            "new_over_old_median_of_pairs": round(float(np.median(new / old)), 3),
            "new_over_old_range": [round(float((new / old).min()), 3), round(float((new / old).max()), 3)]}
        print(label, call, json.dumps(res[f"{label} {call}"]), flush=True)
