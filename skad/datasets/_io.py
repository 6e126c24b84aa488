"""Shared image/mask reading with the papers' geometry (resize, then centre crop)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..utils.validation import load_image, open_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_geometry",
    "list_images",
    "read_image",
    "read_images",
    "read_mask",
    "image_size_of",
    "output_size",
    "stack_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_INTERPOLATIONS = ("bilinear", "bicubic", "lanczos", "nearest")


def _pair(value, name):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{name}: expected a positive int or (H, W); got {value!r}")
        return int(value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name}: expected None, a positive int or a pair (H, W); got {value!r}"
        ) from exc
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected positive sizes; got {value!r}")
    return (h, w)


def check_geometry(resize, crop, interpolation="bilinear"):
    """Validate ``resize`` / ``crop`` / ``interpolation`` and return them normalised.

    ``resize``: None, an int (the shorter side is resized to it, aspect ratio kept,
    as ``torchvision.transforms.Resize(int)``) or ``(H, W)``. ``crop``: None, an int
    (square centre crop) or ``(H, W)``.
    """
    resize = _pair(resize, "resize")
    crop = _pair(crop, "crop")
    if isinstance(crop, int):
        crop = (crop, crop)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation: expected one of {_INTERPOLATIONS}; got {interpolation!r}"
        )
    return resize, crop, interpolation


def _resized_size(size_wh, resize):
    """PIL (W, H) after ``resize``."""
    w, h = size_wh
    if resize is None:
        return w, h
    if isinstance(resize, int):
        if h <= w:
            return max(1, round(w * resize / h)), resize
        return resize, max(1, round(h * resize / w))
    return resize[1], resize[0]


def output_size(native_wh, resize, crop):
    """``(H, W)`` of an image of native PIL size ``(W, H)`` after resize + centre crop."""
    if crop is not None:
        return tuple(crop)
    w, h = _resized_size(native_wh, resize)
    return (h, w)


def _apply_geometry(im, resize, crop, resample, path):
    size = _resized_size(im.size, resize)
    if size != im.size:
        im = im.resize(size, resample=resample)
    if crop is not None:
        ch, cw = crop
        w, h = im.size
        if ch > h or cw > w:
            raise ValueError(
                f"crop: crop size {crop} is larger than the image {(h, w)} (after resize="
                f"{resize!r}) of {path!r}; use a smaller crop or a larger resize"
            )
        # centre crop, rounding as torchvision.transforms.CenterCrop
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        im = im.crop((left, top, left + cw, top + ch))
    return im


def _open(path, mode=None):
    with open_image(path) as im:
        im.load()  # decoded now: the pixels stay after the file is closed
        return im if mode is None else im.convert(mode)


def read_image(path, *, resize=None, crop=None, interpolation="bilinear", mode="RGB"):
    """Decode an image file and apply resize + centre crop; uint8 ``(H, W, 3)`` or ``(H, W)``.

    Raises ``ValueError`` naming the file when it cannot be decoded.
    """
    from PIL import Image

    if resize is None and crop is None:
        return load_image(path, mode=mode)
    resample = {
        "bilinear": Image.BILINEAR,
        "bicubic": Image.BICUBIC,
        "lanczos": Image.LANCZOS,
        "nearest": Image.NEAREST,
    }[interpolation]
    im = _open(path, mode)
    return np.asarray(_apply_geometry(im, resize, crop, resample, os.fspath(path)))


def read_images(paths, *, resize=None, crop=None, interpolation="bilinear", mode="RGB",
                n_jobs=None):
    """:func:`read_image` over ``paths``; ``n_jobs`` threads (Pillow decodes without the GIL).

    ``n_jobs=None`` or 1 decodes serially; -1 uses every core (joblib semantics).
    """
    kw = dict(resize=resize, crop=crop, interpolation=interpolation, mode=mode)
    if n_jobs in (None, 1) or len(paths) < 2:
        return [read_image(p, **kw) for p in paths]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs, prefer="threads")(delayed(read_image)(p, **kw) for p in paths)


def read_mask(path, *, resize=None, crop=None, expected_size=None, image_path=None):
    """Decode a mask file to uint8 {0, 1} ``(H, W)`` with nearest-neighbour geometry.

    Parameters
    ----------
    path : path of the mask (any non-zero value is anomalous)
    resize, crop : geometry, as :func:`read_image`
    expected_size : (W, H), optional
        Native size of the matching image (PIL order); a mask of another size raises.
    image_path : str, optional
        Used in the error message.
    """
    from PIL import Image

    im = _open(path)
    if expected_size is not None and tuple(im.size) != tuple(expected_size):
        raise ValueError(
            f"mask {os.fspath(path)!r} has size {im.size[1]}x{im.size[0]} (HxW) but its image "
            f"{image_path!r} is {expected_size[1]}x{expected_size[0]}; masks must have the "
            "size of their image"
        )
    im = im.convert("L")
    im = _apply_geometry(im, resize, crop, Image.NEAREST, os.fspath(path))
    return (np.asarray(im) > 0).astype(np.uint8)


def image_size_of(path):
    """Native ``(W, H)`` of an image file (header only, PIL order)."""
    return tuple(_open_header(path).size)


def _open_header(path):
    with open_image(path) as im:
        return im


def list_images(folder, *, what="image folder"):
    """Sorted image files directly inside ``folder``; raises if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {os.fspath(folder)!r}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def stack_images(images, paths, what="images"):
    """Stack decoded images into one array, with a clear error on mixed sizes."""
    if not images:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    shapes = {}
    for im, p in zip(images, paths):
        shapes.setdefault(im.shape, p)
    if len(shapes) > 1:
        examples = "; ".join(f"{s} e.g. {os.fspath(p)!r}" for s, p in list(shapes.items())[:3])
        raise ValueError(
            f"{what} have different sizes ({examples}); pass resize=(H, W) (or crop) so "
            "they share one size, or return_paths=True"
        )
    return np.stack(images)
