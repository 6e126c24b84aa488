"""Patch features from pretrained CNNs: :class:`PatchFeatureExtractor`, :class:`GlobalPool`.

See :mod:`skad.features.backbones` for the built-in backbones and their offline weights.
"""

from .extractor import PatchFeatureExtractor, PatchFeatureModule
from .pooling import GlobalPool, local_average_pool

__all__ = ["GlobalPool", "PatchFeatureExtractor", "PatchFeatureModule", "local_average_pool"]
