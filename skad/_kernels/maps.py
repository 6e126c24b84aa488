"""Anomaly-map post-processing: bilinear upsampling and Gaussian smoothing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["check_output_size", "gaussian_smooth", "upsample_maps"]


def check_output_size(output_size, *, name: str = "output_size") -> tuple[int, int]:
    """Return ``output_size`` as ``(H, W)`` of positive ints; an int means a square."""
    if isinstance(output_size, (int, np.integer)):
        output_size = (int(output_size), int(output_size))
    try:
        h, w = (int(v) for v in output_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: expected an int or a pair (H, W) of positive ints; got {output_size!r}"
        ) from exc
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected positive sizes; got {output_size!r}")
    return h, w


def upsample_maps(maps: np.ndarray, output_size) -> np.ndarray:
    """Bilinearly resize maps ``(n, h, w)`` to ``(n, H, W)`` (half-pixel centres).

    Uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    the resampling PatchCore and PaDiM use.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.maps import upsample_maps
    >>> upsample_maps(np.ones((2, 3, 3), np.float32), (12, 12)).shape
    (2, 12, 12)
    """
    import torch
    import torch.nn.functional as F

    h, w = check_output_size(output_size)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == (h, w):
        return maps.copy()
    t = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
    out = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each map ``(n, H, W)`` over its two spatial axes (truncated at 4 sigma).

    ``sigma <= 0`` returns the maps unchanged (a copy).
    """
    maps = np.asarray(maps, dtype=np.float32)
    if sigma <= 0:
        return maps.copy()
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma), mode="reflect", truncate=4.0)
