"""Input validation shared by every skad estimator.

Images are channels-last arrays ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 0-255 or float
0-1) or a sequence of image file paths, decoded lazily batch by batch. Patch tensors are
float arrays ``(n, C, h, w)``; 2-D ``(n, d)`` input is a 1x1 patch map.
Every error names the parameter, what was given and what was expected.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

__all__ = [
    "ImageSet",
    "check_images",
    "check_patches",
    "labels_from_y",
    "load_image",
    "masks_from_y",
    "open_image",
]

_IMAGE_HINT = (
    "expected images as an array (n, H, W, 3) or (n, H, W) of uint8 0-255 or float 0-1, "
    "or a sequence of image file paths"
)


def _is_path_sequence(X) -> bool:
    if isinstance(X, (str, os.PathLike)):
        return False
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "UO" and X.ndim == 1 and len(X) > 0 and all(
            isinstance(x, (str, os.PathLike)) for x in X
        )
    return (
        isinstance(X, Sequence)
        and len(X) > 0
        and all(isinstance(x, (str, os.PathLike)) for x in X)
    )


def _decode_errors():
    from PIL import Image, UnidentifiedImageError

    # what Pillow raises on a damaged, truncated or hostile file: OSError ("image file is
    # truncated", "broken data stream"), SyntaxError (bad headers), ValueError / struct /
    # zlib / index errors from decoders fed garbage, and DecompressionBombError (a header
    # declaring more pixels than Image.MAX_IMAGE_PIXELS: a huge image or an attack)
    return (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, KeyError,
            IndexError, TypeError, ZeroDivisionError, struct.error, zlib.error,
            Image.DecompressionBombError)


@contextmanager
def open_image(path):
    """Open an image file with Pillow; any failure to decode it is a ``ValueError``.

    The one place skad opens image files (loaders, ``check_images`` paths, texture
    folders, the CLI), so a damaged, truncated, zero-byte or huge file gives the same
    error naming the file everywhere. Decode inside the ``with`` block (``load``,
    ``convert``, ``resize``): errors raised there are converted too.

    Parameters
    ----------
    path : str or os.PathLike

    Yields
    ------
    image : PIL.Image.Image

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded ("cannot read image file '<path>': <why>"),
        including images over Pillow's ``Image.MAX_IMAGE_PIXELS`` (decompression bombs).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> from skad.utils.validation import open_image
    >>> p = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    >>> with open_image(p) as im:
    ...     im.size
    (5, 4)
    """
    from PIL import Image

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        with Image.open(path) as im:
            yield im
    except _decode_errors() as exc:
        if isinstance(exc, FileNotFoundError):  # removed while reading
            raise
        hint = (" (raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)"
                if isinstance(exc, Image.DecompressionBombError) else "")
        raise ValueError(f"cannot read image file {path!r}: {exc}{hint}") from exc


def load_image(path, *, mode: str = "RGB") -> np.ndarray:
    """Decode one image file to a uint8 array ``(H, W, 3)`` (or ``(H, W)`` for mode "L").

    Parameters
    ----------
    path : str or os.PathLike
        Image file readable by Pillow.
    mode : {"RGB", "L"}, default="RGB"
        Pillow mode to convert to.

    Returns
    -------
    image : ndarray of uint8

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be decoded (the message names the file): damaged,
        truncated, empty, a folder, or more pixels than Pillow's decompression-bomb
        limit.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> from skad.utils.validation import load_image
    >>> p = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    >>> load_image(p).shape
    (4, 5, 3)
    """
    with open_image(path) as im:
        im.load()
        return np.asarray(im.convert(mode))


class ImageSet:
    """Validated images: an in-memory array or lazily decoded file paths.

    Use :func:`check_images` to build one. ``len``, ``shape`` (of one image, ``(H, W)``),
    ``batch(indices)`` (float32 ``(b, H, W, 3)`` in [0, 1]) and ``iter_batches``.
    """

    def __init__(self, array=None, paths=None, name="X"):
        self.array = array
        self.paths = paths
        self.name = name
        self._shape = None

    def __len__(self):
        return len(self.array) if self.array is not None else len(self.paths)

    @property
    def is_lazy(self) -> bool:
        return self.paths is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images (for paths: of the first file)."""
        if self._shape is None:
            if self.array is not None:
                self._shape = tuple(int(s) for s in self.array.shape[1:3])
            else:
                self._shape = tuple(int(s) for s in load_image(self.paths[0]).shape[:2])
        return self._shape

    def batch(self, indices) -> np.ndarray:
        """Images ``indices`` as float32 ``(b, H, W, 3)`` in [0, 1]."""
        if self.array is not None:
            return _to_float_rgb(self.array[indices])
        imgs = [load_image(self.paths[i]) for i in np.atleast_1d(np.arange(len(self))[indices])]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:
            raise ValueError(
                f"{self.name}: images in one batch have different sizes {sorted(shapes)}; "
                "resize them to one size (e.g. with skad.datasets loaders' resize/crop) first"
            )
        return _to_float_rgb(np.stack(imgs))

    def iter_batches(self, batch_size: int):
        """Yield ``(slice, float32 batch)`` pairs covering all images in order."""
        n = len(self)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            yield sl, self.batch(sl)


def _to_float_rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint8:
        out = a.astype(np.float32) / 255.0
    else:
        out = a.astype(np.float32, copy=False)
    if out.ndim == 3:  # (b, H, W) grayscale
        out = np.repeat(out[..., None], 3, axis=-1)
    elif out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def check_images(X, *, name: str = "X") -> ImageSet:
    """Validate images and return an :class:`ImageSet`.

    Parameters
    ----------
    X : array-like of shape (n, H, W, 3), (n, H, W, 1) or (n, H, W), or sequence of paths
        uint8 in [0, 255] or float in [0, 1]. Paths are only checked for existence here
        and decoded lazily.
    name : str, default="X"
        Parameter name used in error messages.

    Returns
    -------
    images : ImageSet

    Raises
    ------
    TypeError
        If ``X`` is neither an array nor a sequence of paths.
    ValueError
        Wrong ndim or channel count, empty set, NaN/inf, float values outside [0, 1],
        or a path that does not exist.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.utils.validation import check_images
    >>> imgs = check_images(np.zeros((2, 32, 32, 3), np.uint8))
    >>> len(imgs), imgs.image_size
    (2, (32, 32))
    """
    if isinstance(X, ImageSet):
        return X
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"{name}: got a single path {os.fspath(X)!r}; {_IMAGE_HINT} "
            "(wrap one path in a list)"
        )
    if _is_path_sequence(X):
        paths = [os.fspath(p) for p in X]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(
                f"{name}: {len(missing)} image file(s) not found, first: {missing[0]!r}"
            )
        return ImageSet(paths=paths, name=name)
    if isinstance(X, (list, tuple)) and len(X) > 0 and all(
        isinstance(x, np.ndarray) for x in X
    ):
        shapes = {x.shape for x in X}
        if len(shapes) > 1:
            raise ValueError(
                f"{name}: images have different shapes {sorted(shapes)[:3]}...; "
                "give images of one size (n, H, W, 3)"
            )
        X = np.stack(X)
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged input
        raise TypeError(f"{name}: {_IMAGE_HINT}; got {type(X).__name__}") from exc
    if arr.dtype.kind not in "uifb":
        raise TypeError(f"{name}: {_IMAGE_HINT}; got an array of dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: empty image set (shape {arr.shape}); {_IMAGE_HINT}")
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3):
        if arr.shape[1] in (1, 3):
            raise ValueError(
                f"{name}: got shape {arr.shape}, which looks channels-first; skad expects "
                "channels-last images (n, H, W, 3): use np.moveaxis(X, 1, -1)"
            )
        raise ValueError(
            f"{name}: got shape {arr.shape} with {arr.shape[-1]} channels; {_IMAGE_HINT}"
        )
    if arr.ndim not in (3, 4):
        raise ValueError(f"{name}: got an array of shape {arr.shape}; {_IMAGE_HINT}")
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise ValueError(f"{name}: images of size {arr.shape[1:3]} are too small")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: images contain NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: float images must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                "(pass uint8 0-255 images or divide by 255)"
            )
    elif arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{name}: integer images must lie in [0, 255]; got values in [{lo}, {hi}]"
            )
        arr = arr.astype(np.uint8)
    return ImageSet(array=arr, name=name)


def _looks_like_images(arr: np.ndarray) -> bool:
    if arr.dtype == np.uint8 and arr.ndim in (3, 4):
        return True
    if arr.ndim == 3:
        return True
    return arr.ndim == 4 and arr.shape[-1] in (1, 3) and min(arr.shape[1:3]) >= 8 and arr.shape[1] > 3


def check_patches(X, *, name: str = "X", allow_2d: bool = True) -> np.ndarray:
    """Validate patch tensors and return float32 ``(n, C, h, w)``.

    Parameters
    ----------
    X : array-like of shape (n, C, h, w) or (n, d)
        Patch features, e.g. the output of
        :class:`~skad.features.PatchFeatureExtractor`. 2-D input is read as 1x1 maps.
    name : str, default="X"
        Parameter name used in error messages.
    allow_2d : bool, default=True
        Whether ``(n, d)`` input is accepted.

    Returns
    -------
    patches : ndarray of float32, shape (n, C, h, w)

    Raises
    ------
    ValueError
        Images instead of patch tensors, wrong ndim, empty set, NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.utils.validation import check_patches
    >>> check_patches(np.ones((5, 3))).shape
    (5, 3, 1, 1)
    """
    if _is_path_sequence(X) or isinstance(X, (str, os.PathLike)):
        raise ValueError(
            f"{name}: expected patch tensors of shape (n, C, h, w); got image file paths: "
            "put a PatchFeatureExtractor before this detector (skad.make_pipeline)"
        )
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise TypeError(
            f"{name}: expected a numeric array of shape (n, C, h, w) or (n, d); "
            f"got {type(X).__name__}"
        ) from exc
    if arr.dtype.kind not in "uifb":
        raise TypeError(
            f"{name}: expected a numeric array of shape (n, C, h, w) or (n, d); "
            f"got dtype {arr.dtype}"
        )
    if _looks_like_images(arr):
        raise ValueError(
            f"{name}: expected patch tensors of shape (n, C, h, w); got images of shape "
            f"{arr.shape}: put a PatchFeatureExtractor before this detector "
            "(skad.make_pipeline(PatchFeatureExtractor(), detector))"
        )
    if arr.ndim == 2:
        if not allow_2d:
            raise ValueError(
                f"{name}: this estimator needs spatial patch tensors (n, C, h, w); got 2-D "
                f"input of shape {arr.shape}"
            )
        arr = arr[:, :, None, None]
    elif arr.ndim != 4:
        raise ValueError(
            f"{name}: expected patch tensors of shape (n, C, h, w) or a 2-D array (n, d); "
            f"got an array of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty set: got 0 samples (shape {arr.shape}); at least 1 is required")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: got 0 features/channels (shape {arr.shape}); at least 1 is required")
    if arr.shape[2] == 0 or arr.shape[3] == 0:
        raise ValueError(
            f"{name}: patch maps of spatial size {arr.shape[2:]} (shape {arr.shape}); "
            "expected h, w >= 1"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: input contains NaN or infinity")
    return arr


def labels_from_y(y, *, n_samples: int | None = None, name: str = "y") -> np.ndarray:
    """Image labels ``(n,)`` (1 = anomalous) from labels or masks.

    Parameters
    ----------
    y : array-like of shape (n,) or (n, H, W)
        Image labels in {0, 1} (or bool; 1 = anomalous) or pixel masks in {0, 1}
        (or 0/255); an image is anomalous when its mask has any positive pixel.
    n_samples : int, optional
        Expected number of samples.
    name : str, default="y"

    Returns
    -------
    labels : ndarray of int64, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.utils.validation import labels_from_y
    >>> labels_from_y(np.array([[[0, 1]], [[0, 0]]]))
    array([1, 0])
    """
    y = np.asarray(y)
    if n_samples is not None and (y.ndim == 0 or y.shape[0] != n_samples):
        raise ValueError(
            f"{name}: expected {n_samples} labels or masks (one per image); got shape {y.shape}"
        )
    if y.ndim == 1:
        if y.dtype.kind not in "uifb":
            raise ValueError(f"{name}: labels must be numeric 0/1; got dtype {y.dtype}")
        vals = set(np.unique(y).tolist())
        if not vals <= {0, 1}:
            raise ValueError(
                f"{name}: image labels must be 0 (normal) or 1 (anomalous); got values "
                f"{sorted(vals)[:5]}"
            )
        return y.astype(np.int64)
    if y.ndim in (3, 4):
        masks = masks_from_y(y, name=name)
        return masks.reshape(len(masks), -1).any(axis=1).astype(np.int64)
    raise ValueError(
        f"{name}: expected image labels (n,) or masks (n, H, W); got shape {y.shape}"
    )


def masks_from_y(y, *, name: str = "y") -> np.ndarray:
    """Binary masks ``(n, H, W)`` of uint8 {0, 1} from masks in {0, 1}, bool or {0, 255}."""
    y = np.asarray(y)
    if y.ndim == 4 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.ndim != 3:
        raise ValueError(f"{name}: expected masks of shape (n, H, W); got shape {y.shape}")
    if y.dtype.kind not in "uifb":
        raise ValueError(f"{name}: masks must be numeric; got dtype {y.dtype}")
    if y.dtype == np.bool_:
        return y.astype(np.uint8)
    if y.dtype == np.uint8:  # linear-time check of the values (masks can be large)
        vals = np.flatnonzero(np.bincount(y.ravel(), minlength=256))
    else:
        vals = np.unique(y)
    if not set(vals.tolist()) <= {0, 1, 255}:
        raise ValueError(
            f"{name}: masks must be binary (0/1, bool or 0/255); got values {vals[:5].tolist()}"
        )
    return (y > 0).astype(np.uint8)
