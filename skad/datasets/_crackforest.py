"""Loader for the CrackForest road-crack set (every image defective, pixel masks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._io import (
    check_geometry,
    image_size_of,
    list_images,
    read_images,
    read_mask,
    stack_images,
)
from ._mvtec import _check_return_paths

__all__ = ["load_crackforest"]


def load_crackforest(
    root,
    *,
    resize=None,
    crop=None,
    interpolation="bilinear",
    return_paths=False,
    n_jobs=None,
):
    """Load CrackForest (Shi et al. 2016): road images with thin, low-contrast cracks.

    Every image shows a crack, so there is no normal class: use it in the blind "Ano"
    setting (fit and score the images together, measure pixel AUROC / PRO against the
    masks). Masks are read from ``masks_png/NNN_mask.png`` (0/255).

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding ``image/NNN.jpg`` and ``masks_png/NNN_mask.png``.
    resize, crop, interpolation : see :func:`skad.datasets.load_mvtec`
        Default None: native 320x480 (H x W).
    return_paths : bool, default=False
        Return image file paths instead of decoded images (requires resize=crop=None).
    n_jobs : int or None, default=None
        Threads decoding the image files (Pillow releases the GIL); None or 1 decodes
        serially, -1 uses every core.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (uint8 (n, H, W, 3) or list of paths), ``masks`` (uint8 (n, H, W)
        {0, 1}), ``labels`` (int (n,), all 1), ``filenames``, ``mask_filenames``,
        ``unlabeled_filenames`` (images without a mask, excluded), ``DESCR``.

    Raises
    ------
    FileNotFoundError
        Missing ``root``, ``image/`` or ``masks_png/``.
    ValueError
        No image with a mask, unreadable image (named), mask size differing from its
        image.

    Notes
    -----
    Images without a ground-truth mask (the shared copy has 155 images, masks for
    001-118) are excluded, and listed in ``unlabeled_filenames``: without a mask they
    can be neither scored nor counted as normal. Two of them are portrait (480x320)
    while every masked image is 320x480 (H x W).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from skad.datasets import load_crackforest
    >>> root = tempfile.mkdtemp()
    >>> for d in ("image", "masks_png"):
    ...     os.makedirs(os.path.join(root, d))
    >>> Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(os.path.join(root, "image", "001.jpg"))
    >>> Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(os.path.join(root, "image", "002.jpg"))
    >>> m = np.zeros((8, 12), np.uint8); m[4, :] = 255
    >>> Image.fromarray(m).save(os.path.join(root, "masks_png", "001_mask.png"))
    >>> data = load_crackforest(root)
    >>> data.images.shape, int(data.masks.sum()), len(data.unlabeled_filenames)
    ((1, 8, 12, 3), 12, 1)
    """
    resize, crop, interpolation = check_geometry(resize, crop, interpolation)
    _check_return_paths(return_paths, resize, crop)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: CrackForest folder not found: {os.fspath(root)!r}")
    image_files = list_images(root / "image", what="CrackForest image folder")
    mask_dir = root / "masks_png"
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"CrackForest mask folder not found: {os.fspath(mask_dir)!r}")
    files, mask_files, unlabeled = [], [], []
    for f in image_files:
        m = mask_dir / f"{f.stem}_mask.png"
        if m.is_file():
            files.append(f)
            mask_files.append(m)
        else:
            unlabeled.append(os.fspath(f))
    if not files:
        raise ValueError(
            f"no CrackForest image with a mask: {len(image_files)} images in "
            f"{os.fspath(root / 'image')!r}, none with a matching masks_png/NNN_mask.png"
        )
    masks = stack_images(
        [read_mask(m, resize=resize, crop=crop, expected_size=image_size_of(f),
                   image_path=os.fspath(f)) for f, m in zip(files, mask_files)],
        files,
        what="CrackForest masks",
    )
    if return_paths:
        images = [os.fspath(f) for f in files]
    else:
        images = stack_images(
            read_images(files, resize=resize, crop=crop, interpolation=interpolation, n_jobs=n_jobs),
            files,
            what="CrackForest images",
        )
    descr = (
        f"CrackForest from {os.fspath(root)!r}: {len(files)} road images with crack masks "
        f"({len(unlabeled)} images without a mask excluded). Every image is defective; "
        f"crack pixels are {100 * masks.mean():.2f} % of all pixels."
    )
    return Bunch(
        images=images,
        masks=masks,
        labels=np.ones(len(files), dtype=np.int64),
        filenames=[os.fspath(f) for f in files],
        mask_filenames=[os.fspath(m) for m in mask_files],
        unlabeled_filenames=unlabeled,
        DESCR=descr,
    )
