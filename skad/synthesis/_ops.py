"""Image operations of the two defect syntheses, each a plain function of its inputs.

MemSeg (Yang et al. 2023, Sec. 3.1): :func:`structural_noise` (the structural noise
image) and :func:`blend` (eq. 1-2). Lv et al. (DGM, Sec. II.C): :func:`darken`,
:func:`lighten` and :func:`paste` inside a region.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.utils import check_random_state

from ._masks import _as_float_image

__all__ = ["blend", "darken", "lighten", "paste", "structural_noise"]

# RGB -> YIQ (NTSC); hue is the angle in the I-Q plane, saturation its radius.
_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ_INV = np.linalg.inv(_YIQ)


def _color_matrix(brightness, saturation, hue_turns):
    """3x3 RGB matrix: scale luma and chroma by ``brightness``, chroma by ``saturation``,
    rotate hue by ``hue_turns`` of a full turn (all linear: one matrix product)."""
    phi = 2.0 * np.pi * hue_turns
    c, s = np.cos(phi), np.sin(phi)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    scale = np.diag([brightness, brightness * saturation, brightness * saturation])
    return (_YIQ_INV @ scale @ rot @ _YIQ).astype(np.float32)


def _check_rgb(image, name):
    img = _as_float_image(image, name)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def _check_grid(grid, shape=None, name="grid"):
    try:
        rows, cols = grid
        ok = all(
            isinstance(g, Integral) and not isinstance(g, bool) and g >= 1 for g in (rows, cols)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected (rows, columns) of positive integers; got {grid!r}")
    if shape is not None and (rows > shape[0] or cols > shape[1]):
        raise ValueError(
            f"{name}: {rows}x{cols} cells do not fit an image of {shape[0]}x{shape[1]} pixels; "
            "use a coarser grid or larger images"
        )
    return int(rows), int(cols)


def _check_jitter(value, name, upper=None):
    ok = isinstance(value, Real) and not isinstance(value, bool) and value >= 0
    if not ok or (upper is not None and value > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{name}: expected a number {bound}; got {value!r}")
    return float(value)


def _check_rotation(rotation):
    if rotation is None or rotation == "right":
        return rotation
    if isinstance(rotation, Real) and not isinstance(rotation, bool) and 0 <= rotation <= 180:
        return float(rotation)
    raise ValueError(
        f"rotation: expected 'right' (multiples of 90 degrees), None, or a largest angle in "
        f"degrees in [0, 180]; got {rotation!r}"
    )


def _shuffle_grid(image, grid, rng):
    """Cut ``image`` into ``grid = (rows, cols)`` equal cells and permute them at random.

    Cells are ``H // rows`` by ``W // cols`` pixels; the remainder strips at the bottom
    and right (when the sides are not multiples) stay in place.
    """
    rows, cols = grid
    h, w = image.shape[:2]
    ch, cw = h // rows, w // cols
    out = image.copy()
    core = image[: rows * ch, : cols * cw]
    cells = core.reshape(rows, ch, cols, cw, -1).swapaxes(1, 2).reshape(rows * cols, ch, cw, -1)
    cells = cells[rng.permutation(rows * cols)]
    cells = cells.reshape(rows, cols, ch, cw, -1).swapaxes(1, 2)
    out[: rows * ch, : cols * cw] = cells.reshape(core.shape)
    return out


def structural_noise(
    image,
    rng=None,
    grid=(4, 8),
    *,
    flip=True,
    rotation="right",
    brightness=0.2,
    saturation=0.2,
    hue=0.05,
):
    """MemSeg's structural noise image: the image transformed, cut into a grid, shuffled.

    MemSeg (Sec. 3.1): "random adjustment of mirror symmetry, rotation, brightness,
    saturation, and hue on the input image I. Then the preliminary processed image is
    uniformly divided into a 4x8 grid and randomly arranged".

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1. Not modified.
    rng : int, RandomState instance or None, default=None
        Random source.
    grid : tuple of int, default=(4, 8)
        ``(rows, columns)`` of the shuffle grid; skad reads MemSeg's "4x8" as 4 rows
        by 8 columns (on 256x256 images: cells 64 pixels high and 32 wide).
    flip : bool, default=True
        Mirror horizontally and vertically, each with probability 1/2.
    rotation : "right", None or float, default="right"
        "right": a random multiple of 90 degrees (0 or 180 on non-square images, which
        keeps the shape); a number: a random angle uniform in [-rotation, rotation]
        degrees (bilinear, borders reflected); None: no rotation.
    brightness : float >= 0, default=0.2
        Intensity scaled by a factor uniform in [1 - brightness, 1 + brightness].
    saturation : float >= 0, default=0.2
        Chroma scaled by a factor uniform in [1 - saturation, 1 + saturation].
    hue : float in [0, 0.5], default=0.05
        Hue rotated by a fraction of a full turn uniform in [-hue, hue] (a rotation in
        the YIQ colour plane, so brightness, saturation and hue are one 3x3 matrix).

    Returns
    -------
    noise : ndarray of float32, shape (H, W, 3)
        In [0, 1].

    Notes
    -----
    MemSeg gives no ranges for its adjustments; the defaults above are skad's (mild
    jitter, as torchvision's common choices). Pixels past the last whole cell (when H or
    W is not a multiple of the grid) keep their transformed value without shuffling.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import structural_noise
    >>> img = np.random.RandomState(0).rand(64, 64, 3).astype(np.float32)
    >>> n = structural_noise(img, rng=0)
    >>> n.shape, n.dtype, bool(np.allclose(np.sort(n, None), np.sort(img, None)))
    ((64, 64, 3), dtype('float32'), False)
    >>> n = structural_noise(img, rng=0, flip=False, rotation=None,
    ...                      brightness=0, saturation=0, hue=0)
    >>> bool(np.allclose(np.sort(n, None), np.sort(img, None)))   # only a permutation
    True
    """
    img = _check_rgb(image, "image")
    grid = _check_grid(grid, img.shape[:2])
    rotation = _check_rotation(rotation)
    brightness = _check_jitter(brightness, "brightness")
    saturation = _check_jitter(saturation, "saturation")
    hue = _check_jitter(hue, "hue", 0.5)
    rng = check_random_state(rng)
    return _structural_noise(img, rng, grid, bool(flip), rotation, brightness, saturation, hue)


def _structural_noise(img, rng, grid, flip, rotation, brightness, saturation, hue):
    out = img
    if flip:
        if rng.rand() < 0.5:
            out = out[:, ::-1]
        if rng.rand() < 0.5:
            out = out[::-1]
    if rotation == "right":
        square = out.shape[0] == out.shape[1]
        k = rng.randint(4) if square else 2 * rng.randint(2)
        out = np.rot90(out, k)
    elif rotation:
        angle = rng.uniform(-rotation, rotation)
        out = ndimage.rotate(out, angle, axes=(1, 0), reshape=False, order=1, mode="reflect")
    matrix = _color_matrix(
        rng.uniform(1.0 - brightness, 1.0 + brightness),
        max(0.0, rng.uniform(1.0 - saturation, 1.0 + saturation)),
        rng.uniform(-hue, hue),
    )
    out = np.ascontiguousarray(out) @ matrix.T  # a new array: the input is never written
    np.clip(out, 0.0, 1.0, out=out)
    return _shuffle_grid(out, grid, rng)


def _check_mask(mask, shape, name="mask"):
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(
            f"{name}: expected shape {tuple(shape)} (the image's H, W); got {m.shape}"
        )
    if m.dtype == bool:
        return m
    m = m.astype(np.float32, copy=False)
    if not np.all((m >= 0) & (m <= 1)):
        raise ValueError(f"{name}: expected values in [0, 1]; got [{m.min():.3g}, {m.max():.3g}]")
    return m


def blend(image, mask, noise, delta):
    """MemSeg's simulated anomaly (eq. 1-2, after DRAEM).

    ``I_A = (1 - M) * I + delta * (M * I_n) + (1 - delta) * (M * I)``: inside the mask
    the noise image shows with opacity ``delta`` over the image; outside the image is
    unchanged (bit for bit).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        ``I``; uint8 0-255 or float 0-1. Not modified.
    mask : ndarray of shape (H, W)
        ``M``: bool, or float in [0, 1] for a soft mask.
    noise : ndarray of shape (H, W, 3) or (H, W)
        ``I_n``, as ``image``.
    delta : float in [0, 1]
        Opacity of the noise (MemSeg draws it from U[0.15, 1]).

    Returns
    -------
    blended : ndarray of float32, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import blend
    >>> img, noise = np.zeros((4, 4, 3)), np.ones((4, 4, 3))
    >>> m = np.zeros((4, 4), bool); m[1, 1] = True
    >>> out = blend(img, m, noise, 0.25)
    >>> float(out[1, 1, 0]), float(out[0, 0, 0])
    (0.25, 0.0)
    """
    img = _check_rgb(image, "image")
    n = _check_rgb(noise, "noise")
    if n.shape != img.shape:
        raise ValueError(f"noise: expected the image's shape {img.shape}; got {n.shape}")
    m = _check_mask(mask, img.shape[:2])
    if not isinstance(delta, Real) or isinstance(delta, bool) or not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta: expected an opacity in [0, 1]; got {delta!r}")
    return _blend(img, m, n, float(delta))


def _blend(img, m, noise, delta):
    if m.dtype == bool:
        # eq. 1-2 with a binary M: outside M the image itself, inside the mixture
        out = img.astype(np.float32, copy=True)
        out[m] = np.float32(delta) * noise[m] + np.float32(1.0 - delta) * img[m]
        return out
    w = (np.float32(delta) * m)[..., None]
    return (img + w * (noise - img)).astype(np.float32, copy=False)


def darken(image, mask, strength):
    """Darken the masked pixels: ``I * (1 - strength)`` (towards black).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1. Not modified.
    mask : ndarray of bool, shape (H, W)
    strength : float in [0, 1]
        Share of the intensity removed.

    Returns
    -------
    out : ndarray of float32, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import darken
    >>> out = darken(np.full((2, 2, 3), 0.5), np.eye(2, dtype=bool), 0.5)
    >>> out[..., 0].tolist()
    [[0.25, 0.5], [0.5, 0.25]]
    """
    img, m, s = _check_region_op(image, mask, strength)
    return _darken(img, m, s)


def lighten(image, mask, strength):
    """Lighten the masked pixels: ``I + strength * (1 - I)`` (towards white).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1. Not modified.
    mask : ndarray of bool, shape (H, W)
    strength : float in [0, 1]
        Share of the distance to white added.

    Returns
    -------
    out : ndarray of float32, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import lighten
    >>> out = lighten(np.full((2, 2, 3), 0.5), np.eye(2, dtype=bool), 0.5)
    >>> out[..., 0].tolist()
    [[0.75, 0.5], [0.5, 0.75]]
    """
    img, m, s = _check_region_op(image, mask, strength)
    return _lighten(img, m, s)


def paste(image, mask, content):
    """Replace the masked pixels with ``content`` (Lv et al.'s pasted natural image).

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W)
        uint8 0-255 or float 0-1. Not modified.
    mask : ndarray of bool, shape (H, W)
    content : ndarray of shape (H, W, 3) or (H, W)
        The image whose pixels go in, aligned with ``image``.

    Returns
    -------
    out : ndarray of float32, shape (H, W, 3)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import paste
    >>> out = paste(np.zeros((2, 2)), np.eye(2, dtype=bool), np.ones((2, 2)))
    >>> out[..., 0].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    img = _check_rgb(image, "image")
    c = _check_rgb(content, "content")
    if c.shape != img.shape:
        raise ValueError(f"content: expected the image's shape {img.shape}; got {c.shape}")
    m = _check_bool_mask(mask, img.shape[:2])
    return _paste(img, m, c)


def _check_bool_mask(mask, shape):
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask: expected shape {tuple(shape)} (the image's H, W); got {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask: expected a binary mask (bool or 0/1)")
        m = m.astype(bool)
    return m


def _check_region_op(image, mask, strength):
    img = _check_rgb(image, "image")
    m = _check_bool_mask(mask, img.shape[:2])
    if not isinstance(strength, Real) or isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: expected a number in [0, 1]; got {strength!r}")
    return img, m, float(strength)


def _darken(img, m, s):
    out = img.astype(np.float32, copy=True)
    out[m] *= np.float32(1.0 - s)
    return out


def _lighten(img, m, s):
    out = img.astype(np.float32, copy=True)
    px = out[m]
    out[m] = px + np.float32(s) * (np.float32(1.0) - px)
    return out


def _paste(img, m, content):
    out = img.astype(np.float32, copy=True)
    out[m] = content[m]
    return out
