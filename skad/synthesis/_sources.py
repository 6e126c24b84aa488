"""Where defect content comes from: a procedural texture generator or a folder of images.

skad ships no third-party images: the default source draws textures procedurally; a
folder (DTD textures for MemSeg, natural photographs for Lv et al.'s DGM) is a
parameter. A source is any object with ``draw(shape, rng) -> float32 (H, W, 3)`` in
[0, 1].
"""

from __future__ import annotations

import os
import numpy as np
from scipy import ndimage
from sklearn.utils import check_random_state

from ..utils.validation import open_image
from ._noise import _check_shape, _noise_field

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "PROCEDURAL_KINDS",
    "ProceduralTextureSource",
    "procedural_texture",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PROCEDURAL_KINDS = ("fractal", "stripes", "cells")


# -- procedural textures ------------------------------------------------------------
def _normalise(field):
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo + np.float32(1e-12))


def _fractal(shape, rng):
    """1/f^beta noise (beta in [1, 3]): from grainy (1) to cloudy (3); one FFT."""
    h, w = shape
    beta = rng.uniform(1.0, 3.0)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f2 = fy * fy + fx * fx
    f2[0, 0] = np.inf  # no DC term
    amp = f2 ** np.float32(-beta / 2.0)
    white = rng.standard_normal((h, w)).astype(np.float32)
    field = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(h, w)).astype(np.float32)
    return _normalise(field)


def _stripes(shape, rng):
    """Warped sinusoidal stripes of random orientation, period and sharpness."""
    h, w = shape
    theta = rng.uniform(0.0, np.pi)
    cycles = rng.uniform(3.0, 24.0)
    size = float(max(h, w))
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    along = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
    phase = np.float32(2.0 * np.pi * cycles / size) * along
    warp_scale = 2.0 ** rng.randint(1, 4)
    warp = _noise_field(shape, (warp_scale, warp_scale), rng, False, 0.0)
    phase = phase + np.float32(rng.uniform(0.0, 4.0)) * warp
    wave = np.sin(phase)
    gain = np.float32(rng.uniform(1.0, 6.0))  # 1: soft sine, 6: nearly hard-edged bands
    return np.clip(wave * gain, -1.0, 1.0) * np.float32(0.5) + np.float32(0.5)


def _cells(shape, rng):
    """Voronoi cells of random shades, darker towards their seeds' borders."""
    h, w = shape
    n_seeds = rng.randint(6, 48)
    free = np.ones(shape, dtype=bool)
    sy = rng.randint(0, h, n_seeds)
    sx = rng.randint(0, w, n_seeds)
    free[sy, sx] = False
    dist, (iy, ix) = ndimage.distance_transform_edt(free, return_indices=True)
    label = np.zeros(shape, dtype=np.intp)
    label[sy, sx] = np.arange(n_seeds)
    shade = rng.uniform(0.0, 1.0, size=n_seeds).astype(np.float32)
    cell = shade[label[iy, ix]]
    edge = _normalise(dist.astype(np.float32))
    mix = np.float32(rng.uniform(0.0, 0.6))
    return _normalise((1.0 - mix) * cell - mix * edge)


_KIND_FUNCS = {"fractal": _fractal, "stripes": _stripes, "cells": _cells}


def procedural_texture(shape, rng=None, *, kinds=PROCEDURAL_KINDS):
    """A random coloured texture, generated (no file is read).

    One or two patterns drawn from ``kinds`` are mixed, the resulting gray field is
    coloured through a random three-colour gradient, and a fine gray grain of random
    strength (up to +-0.05) is added.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    rng : int, RandomState instance or None, default=None
        Random source.
    kinds : sequence of {"fractal", "stripes", "cells"}, default=all three
        Patterns to draw from: "fractal" = 1/f^beta noise (grain to clouds),
        "stripes" = warped bands of random orientation and sharpness, "cells" = Voronoi
        cells with shaded borders.

    Returns
    -------
    texture : ndarray of float32, shape (height, width, 3)
        Values in [0, 1].

    Examples
    --------
    >>> from skad.synthesis import procedural_texture
    >>> t = procedural_texture((48, 64), rng=0)
    >>> t.shape, t.dtype, bool(0 <= t.min() and t.max() <= 1)
    ((48, 64, 3), dtype('float32'), True)
    """
    shape = _check_shape(shape)
    kinds = _check_kinds(kinds)
    rng = check_random_state(rng)
    return _procedural(shape, kinds, rng)


def _check_kinds(kinds):
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in PROCEDURAL_KINDS]
    if not kinds or bad:
        raise ValueError(
            f"kinds: expected a non-empty subset of {PROCEDURAL_KINDS}; got {kinds!r}"
        )
    return kinds


def _procedural(shape, kinds, rng):
    n = 1 if len(kinds) == 1 else rng.randint(1, 3)
    picks = rng.choice(len(kinds), size=n, replace=False)
    fields = [_KIND_FUNCS[kinds[i]](shape, rng) for i in picks]
    if n == 1:
        field = fields[0]
    else:
        a = np.float32(rng.uniform(0.3, 0.7))
        field = _normalise(a * fields[0] + (1.0 - a) * fields[1])
    # quadratic Bezier through three random colours: c0 at 0, c2 at 1, pulled towards c1
    c = rng.uniform(0.0, 1.0, size=(3, 3)).astype(np.float32)
    f = field[..., None]
    g = 1.0 - f
    out = (g * g) * c[0] + (2.0 * f * g) * c[1] + (f * f) * c[2]
    # fine gray grain of random strength: real textures rarely are smooth at pixel scale
    grain = np.float32(rng.uniform(0.0, 0.1))
    out += grain * (rng.random_sample(shape).astype(np.float32) - np.float32(0.5))[..., None]
    return np.clip(out, 0.0, 1.0, out=out)


class ProceduralTextureSource:
    """The default content source: :func:`procedural_texture` (reads no file).

    Parameters
    ----------
    kinds : sequence of str, default=("fractal", "stripes", "cells")
        Patterns to draw from (see :func:`procedural_texture`).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.synthesis import ProceduralTextureSource
    >>> ProceduralTextureSource().draw((16, 16), np.random.RandomState(0)).shape
    (16, 16, 3)
    """

    def __init__(self, kinds=PROCEDURAL_KINDS):
        self.kinds = kinds

    def draw(self, shape, rng):
        """A texture of ``shape`` ``(H, W)``: float32 ``(H, W, 3)`` in [0, 1]."""
        return _procedural(tuple(shape), _check_kinds(self.kinds), rng)

    def __repr__(self):
        return f"ProceduralTextureSource(kinds={tuple(self.kinds)!r})"


class ImageFolderSource:
    """Content drawn from a folder of images, listed lazily and decoded on demand.

    Files are found recursively (``folder/class/*.jpg`` works), sorted, and listed on
    the first draw; each draw decodes one file chosen at random with Pillow, crops a
    random window of the requested aspect ratio as large as the image allows, resizes
    it (bilinear) and flips it horizontally and/or vertically at random.

    Parameters
    ----------
    root : str or os.PathLike
        Folder of images.
    extensions : tuple of str, default=(".jpg", ".jpeg", ".png")
        File name endings to use (case-insensitive).

    Raises
    ------
    ValueError
        On the first draw, if ``root`` is not a folder or holds no image file.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> from skad.synthesis import ImageFolderSource
    >>> d = tempfile.mkdtemp()
    >>> Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(os.path.join(d, "t.png"))
    >>> src = ImageFolderSource(d)
    >>> img = src.draw((8, 8), np.random.RandomState(0))
    >>> img.shape, round(float(img.mean()), 3), len(src)
    ((8, 8, 3), 0.502, 1)
    """

    def __init__(self, root, *, extensions=IMAGE_EXTENSIONS):
        self.root = root
        self.extensions = extensions
        self._paths = None

    @property
    def paths(self):
        """Sorted image paths under ``root`` (listed on first access)."""
        if self._paths is None:
            root = os.fspath(self.root)
            if not os.path.isdir(root):
                raise ValueError(f"image folder not found: {root!r}; give a folder of images")
            ext = tuple(e.lower() for e in self.extensions)
            found = []
            for dirpath, _, filenames in os.walk(root):
                found.extend(
                    os.path.join(dirpath, f) for f in filenames if f.lower().endswith(ext)
                )
            if not found:
                raise ValueError(f"no image files ({', '.join(ext)}) found under {root!r}")
            self._paths = sorted(found)  # a fixed order: same seed, same images
        return self._paths

    def __len__(self):
        return len(self.paths)

    def draw(self, shape, rng):
        """A random image of ``shape`` ``(H, W)``: float32 ``(H, W, 3)`` in [0, 1]."""
        h, w = shape
        path = self.paths[rng.randint(len(self.paths))]
        a = _load_window(path, h, w, rng)
        if rng.rand() < 0.5:
            a = a[:, ::-1]
        if rng.rand() < 0.5:
            a = a[::-1]
        return np.ascontiguousarray(a, dtype=np.float32) / np.float32(255.0)

    def __repr__(self):
        return f"ImageFolderSource({os.fspath(self.root)!r})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_paths"] = None  # relist on the unpickling machine
        return state


def _load_window(path, h, w, rng):
    from PIL import Image

    with open_image(path) as im:
        iw, ih = im.size
        # largest window with the target aspect ratio, at a random position
        scale = min(iw / w, ih / h)
        cw, ch = max(1, min(iw, int(round(w * scale)))), max(1, min(ih, int(round(h * scale))))
        x0 = rng.randint(0, iw - cw + 1)
        y0 = rng.randint(0, ih - ch + 1)
        # JPEG: decode at the smallest reduced scale that keeps the window >= (w, h)
        im.draft("RGB", (max(w, -(-iw * w // cw)), max(h, -(-ih * h // ch))))
        fx, fy = im.size[0] / iw, im.size[1] / ih
        box = (x0 * fx, y0 * fy, (x0 + cw) * fx, (y0 + ch) * fy)
        out = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(out)


def resolve_source(source, name):
    """``None`` -> procedural, a folder path -> :class:`ImageFolderSource`, or any
    object with a ``draw(shape, rng)`` method as is."""
    if source is None:
        return ProceduralTextureSource()
    if isinstance(source, (str, os.PathLike)):
        return ImageFolderSource(source)
    if callable(getattr(source, "draw", None)):
        return source
    raise TypeError(
        f"{name}: expected None (procedural textures), a folder of images, or an object "
        f"with a draw(shape, rng) method; got {type(source).__name__}"
    )
