"""skad: scikit-learn compatible industrial image anomaly detection and localisation."""

__version__ = "0.1.0"

# before anything imports torch: OpenMP threads that sleep rather than spin while they
# wait, so a busy machine does not slow skad (or the other job) down several times
# (skad/utils/_threads.py; the user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT win)
from .utils._threads import prefer_passive_wait as _prefer_passive_wait  # noqa: E402

_prefer_passive_wait()

from ._persist import ModelFileError, load, save  # noqa: E402
from .pipeline import AnomalyPipeline, make_pipeline  # noqa: E402

__all__ = ["AnomalyPipeline", "ModelFileError", "make_pipeline", "save", "load",
           "__version__"]
