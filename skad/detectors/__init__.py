"""Anomaly detectors: one module per method, all with the scikit-learn outlier API."""

from ._base import BaseDetector, PatchDetectorMixin

__all__ = ["BaseDetector", "PatchDetectorMixin"]
