"""Image alignment: Lv et al.'s image matching module as a scikit-learn transformer."""

from .matching import ImageAligner, affine_matrices, warp

__all__ = ["ImageAligner", "affine_matrices", "warp"]
