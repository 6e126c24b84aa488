"""skad: scikit-learn compatible industrial image anomaly detection and localisation."""

__version__ = "0.1.0"

from ._persist import ModelFileError, load, save  # noqa: E402
from .pipeline import AnomalyPipeline, make_pipeline  # noqa: E402

__all__ = ["AnomalyPipeline", "ModelFileError", "make_pipeline", "save", "load",
           "__version__"]
