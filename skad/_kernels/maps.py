"""Anomaly-map post-processing: bilinear upsampling and Gaussian smoothing."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["check_output_size", "gaussian_smooth", "upsample_maps", "resize_smooth"]


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


@lru_cache(maxsize=64)
def _resize_smooth_operator(n_in: int, n_out: int, sigma: float):
    """Matrix ``(n_out, n_in)`` of 1-D bilinear resampling followed by Gaussian smoothing."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n_in, dtype=torch.float64)[None]  # impulses as channels
    U = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.numpy()
    if sigma > 0:
        # column j of G = the smoothed unit impulse e_j, so G @ v smooths v
        G = ndimage.gaussian_filter1d(np.eye(n_out), sigma, axis=0, mode="reflect", truncate=4.0)
        U = G @ U
    return torch.from_numpy(np.ascontiguousarray(U, dtype=np.float32))


def resize_smooth(maps: np.ndarray, output_size, sigma: float) -> np.ndarray:
    """``gaussian_smooth(upsample_maps(maps, output_size), sigma)`` as two small products.

    Bilinear resampling and Gaussian smoothing are both separable linear operators,
    so each map ``M`` becomes ``A_h @ M @ A_w.T`` with ``A = G @ U`` (``U``: 1-D
    bilinear resampling matrix, ``G``: 1-D Gaussian with reflected borders, truncated
    at 4 sigma). Same result up to float rounding, a few times faster than filtering
    the upsampled maps (the operators are cached per size and sigma).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.maps import gaussian_smooth, resize_smooth, upsample_maps
    >>> m = np.random.default_rng(0).random((2, 7, 5)).astype(np.float32)
    >>> ref = gaussian_smooth(upsample_maps(m, (30, 20)), 2.0)
    >>> bool(np.allclose(resize_smooth(m, (30, 20), 2.0), ref, atol=1e-5))
    True
    """
    import torch

    H, W = check_output_size(output_size)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps: expected an array of shape (n, h, w); got shape {maps.shape}")
    n, h, w = maps.shape
    sigma = float(sigma)
    Ah = _resize_smooth_operator(h, H, sigma)
    Aw = _resize_smooth_operator(w, W, sigma)
    with torch.inference_mode():
        out = torch.matmul(Ah, torch.matmul(torch.from_numpy(maps), Aw.T))
    return out.numpy()
