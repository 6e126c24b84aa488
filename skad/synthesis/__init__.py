"""Defect synthesis for trained detectors (MemSeg, Lv et al.'s DGM).

Building blocks are plain functions of explicit inputs (an image, a mask, a random
source); two samplers combine them:

- :class:`AnomalySynthesizer`: MemSeg's (and DRAEM's) simulated anomalies: a Perlin
  mask, optionally limited to the foreground, filled with texture or structural noise
  blended at a random opacity.
- :class:`DefectGenerator`: Lv et al.'s DGM: a random region darkened, lightened, or
  replaced with another image's content.

skad ships no third-party images: content defaults to procedural textures, and
folders of images (DTD textures, natural photographs) are parameters.
"""

from ._dgm import DGM_OPERATIONS, DefectGenerator
from ._masks import REGION_KINDS, foreground_mask, otsu_threshold, random_region
from ._noise import perlin_mask, perlin_noise
from ._ops import blend, darken, lighten, paste, structural_noise
from ._simulation import ANOMALY_TYPES, AnomalySynthesizer
from ._sources import (
    IMAGE_EXTENSIONS,
    PROCEDURAL_KINDS,
    ImageFolderSource,
    ProceduralTextureSource,
    procedural_texture,
)

__all__ = [
    "ANOMALY_TYPES",
    "AnomalySynthesizer",
    "DGM_OPERATIONS",
    "DefectGenerator",
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "PROCEDURAL_KINDS",
    "ProceduralTextureSource",
    "REGION_KINDS",
    "blend",
    "darken",
    "foreground_mask",
    "lighten",
    "otsu_threshold",
    "paste",
    "perlin_mask",
    "perlin_noise",
    "procedural_texture",
    "random_region",
    "structural_noise",
]
