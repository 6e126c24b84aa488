"""Peak-memory column of ``skad benchmark``: with and without returning freed heap first.

Three detectors fitted and scored one after the other on random bottle-sized patch
tensors (30 x 152 x 28 x 28 to fit, 20 to score), as ``run_benchmark`` does, each inside
:class:`skad.benchmark.PeakMemory`. ``notrim`` replaces the release of freed heap
(``gc.collect`` + glibc ``malloc_trim(0)``) by ``gc.collect`` alone, the measure before
issue 18: the later detectors then reuse pages their predecessors freed and read low.

    python benchmarks/check_peak_memory.py trim
    python benchmarks/check_peak_memory.py notrim
"""
import gc
import sys
import warnings

import numpy as np
from sklearn.pipeline import make_pipeline

import skad.benchmark as B
from skad.registry import make_detector_steps

mode = sys.argv[1] if len(sys.argv) > 1 else "trim"
if mode == "notrim":
    B._release_free_heap = gc.collect
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
X_fit = rng.normal(size=(30, 152, 28, 28)).astype(np.float32)
X_eval = rng.normal(size=(20, 152, 28, 28)).astype(np.float32)
for name in ("patchcore", "padim", "lof"):
    head = make_pipeline(*make_detector_steps(name, random_state=0))
    with B.PeakMemory() as mem:
        head.fit(X_fit)
        head.score_samples(X_eval)
    print(mode, name, f"{mem.peak_mb:.2f} MB", flush=True)
    del head
