"""skad: scikit-learn compatible industrial image anomaly detection and localisation."""

__version__ = "0.1.0"

from .pipeline import AnomalyPipeline, make_pipeline  # noqa: E402

__all__ = ["AnomalyPipeline", "make_pipeline", "__version__"]
