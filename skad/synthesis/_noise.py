"""Gradient (Perlin) noise and the thresholded Perlin masks of DRAEM and MemSeg.

Perlin noise (Perlin 1985) puts a random unit gradient on every lattice point and
interpolates the dot products of the gradients with the offsets to the four corners of
each cell with the quintic fade ``6t^5 - 15t^4 + 10t^3``. Everything here is evaluated
for all pixels at once from integer lattice indices and fractional offsets: no loop
over pixels.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["perlin_mask", "perlin_noise"]

# Draws of the Perlin field before perlin_mask gives up on the threshold (see Notes).
_MAX_TRIES = 8
# Share of pixels kept by the fallback (top quantile of the last field).
_FALLBACK_SHARE = 0.1


def _fade(t):
    # Perlin's improved interpolant 6t^5 - 15t^4 + 10t^3 (zero 1st/2nd derivative at 0, 1)
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _perlin_eval(u, v, angles, periodic):
    """Perlin noise at lattice coordinates ``(u, v)`` (rows, columns; any broadcastable
    shapes) from gradient angles on a lattice ``angles`` of shape ``(ny, nx)``.

    With ``periodic`` the lattice indices wrap modulo its size; otherwise the caller
    guarantees ``0 <= u < ny - 1`` and ``0 <= v < nx - 1``. Returns float32 values in
    [-1, 1] (the sqrt(2) factor of DRAEM's ``rand_perlin_2d``: the raw 2-D bound is
    sqrt(2)/2).
    """
    ny, nx = angles.shape
    gy = np.sin(angles).astype(np.float32).ravel()
    gx = np.cos(angles).astype(np.float32).ravel()
    iu = np.floor(u)
    iv = np.floor(v)
    fu = (u - iu).astype(np.float32)
    fv = (v - iv).astype(np.float32)
    i0 = iu.astype(np.intp)
    j0 = iv.astype(np.intp)
    if periodic:
        i1, j1 = (i0 + 1) % ny, (j0 + 1) % nx
        i0, j0 = i0 % ny, j0 % nx
        r0, r1 = i0 * nx, i1 * nx
        k00, k10, k01, k11 = r0 + j0, r1 + j0, r0 + j1, r1 + j1
    else:
        # flat lattice indices of the four corners; one gather per corner and component
        k00 = i0 * nx + j0
        k10, k01, k11 = k00 + nx, k00 + 1, k00 + (nx + 1)
    fu1 = fu - np.float32(1.0)
    fv1 = fv - np.float32(1.0)
    n00 = gy.take(k00) * fu + gx.take(k00) * fv
    n10 = gy.take(k10) * fu1 + gx.take(k10) * fv
    n01 = gy.take(k01) * fu + gx.take(k01) * fv1
    n11 = gy.take(k11) * fu1 + gx.take(k11) * fv1
    su = _fade(fu)
    sv = _fade(fv)
    n0 = n00 + su * (n10 - n00)
    n1 = n01 + su * (n11 - n01)
    out = n0 + sv * (n1 - n0)
    out *= np.float32(np.sqrt(2.0))
    return out


def _check_shape(shape, name="shape"):
    try:
        h, w = (int(s) for s in shape)
        ok = all(isinstance(s, Integral) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(f"{name}: expected (height, width) with positive integers; got {shape!r}")
    return h, w


def _check_scale(scale, periodic):
    pair = (scale, scale) if isinstance(scale, Real) else scale
    try:
        sy, sx = pair
        ok = isinstance(sy, Real) and isinstance(sx, Real) and sy > 0 and sx > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"scale: expected a positive number of lattice cells or a pair (rows, columns); "
            f"got {scale!r}"
        )
    if periodic and (float(sy) != int(sy) or float(sx) != int(sx)):
        raise ValueError(
            f"scale: periodic noise needs a whole number of lattice cells; got {scale!r}"
        )
    return float(sy), float(sx)


def _noise_field(shape, scale, rng, periodic, angle):
    h, w = shape
    sy, sx = scale
    y = np.arange(h, dtype=np.float32)
    x = np.arange(w, dtype=np.float32)
    if angle:
        # Sample the plane on a grid rotated about the image centre: the same field as
        # rotating the noise image, with no resampling and no empty corners.
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        c = np.float32(np.cos(np.deg2rad(angle)))
        s = np.float32(np.sin(np.deg2rad(angle)))
        dy, dx = (y - cy)[:, None], (x - cx)[None, :]
        y = c * dy - s * dx + cy
        x = s * dy + c * dx + cx
    else:
        y, x = y[:, None], x[None, :]
    u = y * np.float32(sy / h)
    v = x * np.float32(sx / w)
    if periodic:
        ny, nx = int(sy), int(sx)
    else:
        u0, v0 = np.floor(u.min()), np.floor(v.min())
        u, v = u - u0, v - v0
        ny, nx = int(np.floor(u.max())) + 2, int(np.floor(v.max())) + 2
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ny, nx))
    return _perlin_eval(u, v, angles, periodic)


def perlin_noise(shape, scale, rng=None, *, periodic=False, angle=0.0):
    """2-D gradient (Perlin) noise.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of the field.
    scale : float or tuple of float
        Number of lattice cells along each axis (one number for both, or
        ``(rows, columns)``): 1 gives one smooth bump across the image, 32 fine blobs.
    rng : int, RandomState instance or None, default=None
        Source of the random gradients (:func:`sklearn.utils.check_random_state`).
    periodic : bool, default=False
        Wrap the lattice so the field tiles seamlessly (needs whole-number ``scale``).
    angle : float, default=0.0
        Rotate the sampling grid by this many degrees about the image centre (the
        field of a rotated noise image, without its empty corners).

    Returns
    -------
    noise : ndarray of float32, shape (height, width)
        Values in [-1, 1] (DRAEM's scaling: the 2-D Perlin bound sqrt(2)/2 times
        sqrt(2)); most values lie within about [-0.7, 0.7].

    Examples
    --------
    >>> from skad.synthesis import perlin_noise
    >>> n = perlin_noise((64, 96), 4, rng=0)
    >>> n.shape, n.dtype, bool(abs(n).max() <= 1)
    ((64, 96), dtype('float32'), True)
    >>> p = perlin_noise((32, 32), 2, rng=0, periodic=True)
    >>> bool(abs(p[0] - p[-1]).max() < 0.5)   # rows 0 and 32 coincide; row 31 is close
    True
    """
    shape = _check_shape(shape)
    scale = _check_scale(scale, periodic)
    if not isinstance(angle, Real):
        raise TypeError(f"angle: expected a number of degrees; got {type(angle).__name__}")
    rng = check_random_state(rng)
    return _noise_field(shape, scale, rng, bool(periodic), float(angle))


def _check_perlin_params(threshold, min_scale, max_scale):
    if not (isinstance(threshold, Real) and not isinstance(threshold, bool)
            and -1.0 < threshold < 1.0):
        raise ValueError(
            f"threshold: expected a number in (-1, 1) (Perlin values lie in [-1, 1]; DRAEM "
            f"and MemSeg use 0.5); got {threshold!r}"
        )
    for name, val in (("min_scale", min_scale), ("max_scale", max_scale)):
        if not isinstance(val, Integral) or isinstance(val, bool) or val < 0:
            raise ValueError(f"{name}: expected a non-negative integer exponent; got {val!r}")
    if max_scale <= min_scale:
        raise ValueError(
            f"max_scale: expected an exponent above min_scale={min_scale} (scales are "
            f"2**u with u in [min_scale, max_scale)); got max_scale={max_scale}"
        )


def _perlin_mask(shape, threshold, min_scale, max_scale, rotate, rng, within=None):
    """Thresholded Perlin field, retried until it meets ``within`` (a bool mask).

    Returns the bool mask; the fallback (see :func:`perlin_mask`) keeps the top
    ``_FALLBACK_SHARE`` of the last field's values (inside ``within``).
    """
    for _ in range(_MAX_TRIES):
        # DRAEM: one exponent per axis, scale 2**u, u uniform in [min_scale, max_scale)
        sy, sx = 2.0 ** rng.randint(min_scale, max_scale, size=2)
        angle = rng.uniform(-90.0, 90.0) if rotate else 0.0  # DRAEM: rotate (-90, 90)
        noise = _noise_field(shape, (sy, sx), rng, False, angle)
        mask = noise > threshold  # M_P: Perlin noise binarised by T (MemSeg, step 1)
        if within is not None:
            mask &= within
        if mask.any():
            return mask
    values = noise if within is None else noise[within]
    cut = np.quantile(values, 1.0 - _FALLBACK_SHARE)
    mask = noise >= cut
    if within is not None:
        mask &= within
    return mask


def perlin_mask(shape, *, threshold=0.5, min_scale=0, max_scale=6, rotate=True, rng=None):
    """Binary Perlin-noise mask as in DRAEM and MemSeg (never empty).

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    threshold : float in (-1, 1), default=0.5
        Pixels whose noise exceeds it are in the mask (``T`` of MemSeg, step 1; DRAEM's
        0.5). Higher gives fewer, smaller blobs.
    min_scale, max_scale : int, default=0, 6
        Lattice sizes are ``2**u`` cells per axis, ``u`` drawn uniformly from the
        integers in ``[min_scale, max_scale)``, independently for rows and columns
        (DRAEM's defaults: 1 to 32 cells).
    rotate : bool, default=True
        Rotate the noise by an angle uniform in [-90, 90) degrees (DRAEM).
    rng : int, RandomState instance or None, default=None
        Random source.

    Returns
    -------
    mask : ndarray of bool, shape (height, width)

    Notes
    -----
    A field can stay below ``threshold`` everywhere (mostly at 1 or 2 lattice cells).
    The field is then redrawn, up to 8 times in all; if every draw is empty (only
    plausible for thresholds near 1), the last field's top 10 % of pixels form the mask.
    Redrawing favours slightly larger masks than DRAEM's single draw, which can be
    empty.

    Examples
    --------
    >>> from skad.synthesis import perlin_mask
    >>> m = perlin_mask((64, 64), rng=0)
    >>> m.dtype, m.shape, bool(m.any())
    (dtype('bool'), (64, 64), True)
    """
    shape = _check_shape(shape)
    _check_perlin_params(threshold, min_scale, max_scale)
    rng = check_random_state(rng)
    return _perlin_mask(shape, float(threshold), int(min_scale), int(max_scale), bool(rotate), rng)
