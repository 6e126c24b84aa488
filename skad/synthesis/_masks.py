"""Where defects go: foreground masks (MemSeg's M_I) and random regions (Lv et al.'s M)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.utils import check_random_state

from ._noise import _check_shape, _noise_field

__all__ = ["REGION_KINDS", "foreground_mask", "otsu_threshold", "random_region"]

REGION_KINDS = ("rectangle", "ellipse", "perlin")

# ITU-R BT.601 luma weights (Pillow's "L" conversion)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _as_float_image(image, name="image"):
    """One image as float32 in [0, 1]: (H, W) or (H, W, C); uint8 is divided by 255."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3)):
        raise ValueError(
            f"{name}: expected one image of shape (H, W) or (H, W, 3); got shape {a.shape}"
        )
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric image; got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def _gray(image):
    if image.ndim == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    return image @ _LUMA


def otsu_threshold(gray, *, bins=256):
    """Otsu's threshold of a grayscale image in [0, 1].

    Maximises the between-class variance over ``bins`` histogram levels.

    Parameters
    ----------
    gray : ndarray of shape (H, W)
        Values in [0, 1].
    bins : int, default=256
        Histogram levels.

    Returns
    -------
    threshold : float
        Pixels ``> threshold`` form the brighter class. An image of one gray level has
        no split: its level is returned (no pixel lies above it).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import otsu_threshold
    >>> g = np.r_[np.full(50, 0.2), np.full(50, 0.8)].reshape(10, 10)
    >>> 0.2 <= otsu_threshold(g) < 0.8
    True
    """
    g = np.asarray(gray, dtype=np.float64).ravel()
    hist, edges = np.histogram(g, bins=bins, range=(0.0, 1.0))
    p = hist / max(g.size, 1)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(p)  # class below or at level k
    mu = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    if between.max() <= 0.0:  # one gray level only: no split; nothing lies above it
        return float(g.max()) if g.size else 0.0
    k = int(np.argmax(between))
    return float(edges[k + 1])


def _check_struct_size(value, name):
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"{name}: expected a non-negative integer size in pixels (0 or 1 = off); got {value!r}"
        )
    return int(value)


def foreground_mask(image, *, threshold=None, invert=False, opening=5, closing=5):
    """Foreground of an image: binarised grayscale cleaned by opening and closing.

    MemSeg's foreground enhancement (Sec. 3.1, step 1): ``M_I`` is the binarised image
    with the binarisation noise removed by morphological opening / closing.

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, 3)
        uint8 0-255 or float 0-1; colour is reduced to luma (0.299 R + 0.587 G +
        0.114 B).
    threshold : float in [0, 1] or None, default=None
        Gray level separating foreground from background; None = Otsu's threshold of
        this image.
    invert : bool, default=False
        False: pixels brighter than the threshold are foreground (a light part on a
        dark background). True: pixels darker than it are.
    opening : int, default=5
        Side of the square structuring element of the opening, which removes
        foreground specks smaller than it (0 or 1: no opening).
    closing : int, default=5
        Side of the square structuring element of the closing (applied after the
        opening), which fills holes smaller than it (0 or 1: no closing).

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
        May be empty (a uniform image has none, with either polarity); callers decide
        what to do then.

    Notes
    -----
    MemSeg names neither the binarisation rule nor the structuring elements; Otsu's
    threshold and 5x5 squares are skad's choices. Morphology uses min/max filters with
    edge replication, so the image border is neither eroded nor grown.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import foreground_mask
    >>> img = np.zeros((32, 32), np.uint8)
    >>> img[8:24, 8:24] = 200
    >>> m = foreground_mask(img)
    >>> int(m.sum()), bool(m[16, 16]), bool(m[0, 0])
    (256, True, False)
    """
    img = _as_float_image(image)
    opening = _check_struct_size(opening, "opening")
    closing = _check_struct_size(closing, "closing")
    gray = _gray(img)
    if threshold is None:
        threshold = otsu_threshold(gray)
    elif not (isinstance(threshold, Real) and not isinstance(threshold, bool)
              and 0.0 <= threshold <= 1.0):
        raise ValueError(
            f"threshold: expected a gray level in [0, 1] or None (Otsu); got {threshold!r}"
        )
    mask = gray < threshold if invert else gray > threshold
    m = mask.view(np.uint8)
    if opening > 1:
        m = ndimage.minimum_filter(m, opening, mode="nearest")
        m = ndimage.maximum_filter(m, opening, mode="nearest")
    if closing > 1:
        m = ndimage.maximum_filter(m, closing, mode="nearest")
        m = ndimage.minimum_filter(m, closing, mode="nearest")
    return m.astype(bool)


def _check_size_range(size_range, name="size_range"):
    try:
        lo, hi = (float(v) for v in size_range)
        ok = 0.0 < lo <= hi <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: expected (low, high) with 0 < low <= high <= 1 (fractions of the "
            f"image side); got {size_range!r}"
        )
    return lo, hi


def _region(shape, kind, size_range, rng):
    """One random region: ``(rows slice, cols slice, bool mask of that box)``.

    The box sides are ``U[size_range]`` times the image's height / width (at least one
    pixel); the box lies wholly inside the image.
    """
    h, w = shape
    lo, hi = size_range
    bh = min(h, max(1, int(round(rng.uniform(lo, hi) * h))))
    bw = min(w, max(1, int(round(rng.uniform(lo, hi) * w))))
    y0 = rng.randint(0, h - bh + 1)
    x0 = rng.randint(0, w - bw + 1)
    box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
    if kind == "rectangle":
        return box + (np.ones((bh, bw), dtype=bool),)
    if kind == "ellipse":
        # an ellipse of random orientation inscribed in the box's circle of directions:
        # semi-axes so that it fits the box whatever its angle is drawn
        theta = rng.uniform(0.0, np.pi)
        yy = (np.arange(bh, dtype=np.float32) - (bh - 1) / 2.0)[:, None]
        xx = (np.arange(bw, dtype=np.float32) - (bw - 1) / 2.0)[None, :]
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        a = max(bh, bw) / 2.0  # semi-axis along theta, then scaled to fit the box
        b = min(bh, bw) / 2.0
        # bounding half-extents of the rotated ellipse: sqrt(a^2 c^2 + b^2 s^2) etc.
        fit = min((bw / 2.0) / np.hypot(a * c, b * s), (bh / 2.0) / np.hypot(a * s, b * c))
        a, b = a * fit, b * fit
        u = xx * c + yy * s
        v = -xx * s + yy * c
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if not inside.any():
            inside[bh // 2, bw // 2] = True
        return box + (inside,)
    if kind == "perlin":
        # an irregular blob: the box's pixels where a coarse Perlin field (2 or 4
        # lattice cells per axis) exceeds its own 60th percentile (40 % of the box)
        scale = (2.0 ** rng.randint(1, 3), 2.0 ** rng.randint(1, 3))
        field = _noise_field((bh, bw), scale, rng, False, 0.0)
        return box + (field >= np.quantile(field, 0.6),)
    raise ValueError(f"region: unknown region kind {kind!r}; choose from {REGION_KINDS}")


def random_region(shape, *, kind="rectangle", size_range=(0.1, 0.4), rng=None):
    """A random region mask: a rectangle, a rotated ellipse or a Perlin blob.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of the image.
    kind : {"rectangle", "ellipse", "perlin"}, default="rectangle"
        "rectangle": the axis-aligned box itself; "ellipse": an ellipse of random
        orientation, as large as fits in the box; "perlin": the 40 % of the box where a
        coarse Perlin field is highest (an irregular blob, possibly in pieces).
    size_range : tuple of float, default=(0.1, 0.4)
        The box's height and width are drawn independently, uniform in this range
        times the image's height and width.
    rng : int, RandomState instance or None, default=None
        Random source.

    Returns
    -------
    mask : ndarray of bool, shape (height, width)
        Never empty.

    Examples
    --------
    >>> from skad.synthesis import random_region
    >>> m = random_region((64, 64), kind="ellipse", rng=0)
    >>> m.shape, bool(m.any())
    ((64, 64), True)
    """
    shape = _check_shape(shape)
    if kind not in REGION_KINDS:
        raise ValueError(f"kind: expected one of {REGION_KINDS}; got {kind!r}")
    size_range = _check_size_range(size_range)
    rng = check_random_state(rng)
    ys, xs, local = _region(shape, kind, size_range, rng)
    mask = np.zeros(shape, dtype=bool)
    mask[ys, xs] = local
    return mask
