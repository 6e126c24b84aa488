"""Anomaly detectors: one module per method, all with the scikit-learn outlier API."""

from ._base import (
    BaseDetector,
    BlindModeMixin,
    ClippedParameterWarning,
    ImageDetectorMixin,
    PatchDetectorMixin,
    blind_offset,
    clip_to_data,
)
from .local_occ import LocalOCC
from .memseg import MemSeg
from .npad import NPad
from .padim import PaDiM
from .patch_outlier import PatchOutlierDetector
from .patchcluster import PatchCluster
from .patchcore import PatchCore
from .smcc import SMCC
from .spade import SPADE

__all__ = [
    "BaseDetector",
    "BlindModeMixin",
    "ClippedParameterWarning",
    "ImageDetectorMixin",
    "LocalOCC",
    "MemSeg",
    "NPad",
    "PaDiM",
    "PatchCluster",
    "PatchCore",
    "PatchDetectorMixin",
    "PatchOutlierDetector",
    "SMCC",
    "SPADE",
    "blind_offset",
    "clip_to_data",
]
