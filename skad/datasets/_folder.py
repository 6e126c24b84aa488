"""Loader for users' own data: a folder of normal images and folders of defect types."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._io import (
    IMAGE_EXTENSIONS,
    check_geometry,
    image_size_of,
    list_images,
    output_size,
    read_images,
    read_mask,
    stack_images,
)
from ._mvtec import _check_return_paths

__all__ = ["load_folder"]


def _find_mask(mask_root, defect, stem, suffixes):
    for folder in (mask_root / defect, mask_root):
        for suffix in suffixes:
            for ext in IMAGE_EXTENSIONS:
                p = folder / f"{stem}{suffix}{ext}"
                if p.is_file():
                    return p
    return None


def load_folder(
    root,
    *,
    good_dir="good",
    mask_dir=None,
    mask_suffixes=("_mask", ""),
    resize=None,
    crop=None,
    interpolation="bilinear",
    return_paths=False,
    n_jobs=None,
):
    """Load images from ``root/<good_dir>/`` (normal) and ``root/<defect_type>/`` folders.

    Every sub-folder of ``root`` other than ``good_dir`` and ``mask_dir`` is a defect
    type; its images are labelled 1. Optional masks live in ``root/<mask_dir>/``,
    either in per-defect sub-folders (``masks/<defect_type>/<stem>_mask.png``) or flat
    (``masks/<stem>.png``), matched by file stem plus one of ``mask_suffixes``.

    Parameters
    ----------
    root : str or os.PathLike
    good_dir : str, default="good"
        Folder of normal images.
    mask_dir : str or None, default=None
        Folder of masks (relative to ``root``, or absolute). None: no masks.
    mask_suffixes : tuple of str, default=("_mask", "")
        Suffixes tried after an image's stem to find its mask (any image extension).
    resize, crop, interpolation : see :func:`skad.datasets.load_mvtec`
        Default None: images are kept at their size (they must then share one size
        unless ``return_paths=True``).
    return_paths : bool, default=False
        Return file paths instead of decoded images (requires resize=crop=None).
    n_jobs : int or None, default=None
        Threads decoding the image files (Pillow releases the GIL); None or 1 decodes
        serially, -1 uses every core.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (uint8 (n, H, W, 3) or list of paths), ``labels`` (int (n,), 1 =
        defective), ``masks`` (uint8 (n, H, W) {0, 1}, zeros for normal images; None
        without ``mask_dir``), ``defect_types`` (list of str per image, ``good_dir``'s
        name for normal images), ``filenames``, ``DESCR``.

    Raises
    ------
    FileNotFoundError
        Missing ``root``, ``good_dir``, ``mask_dir`` or the mask of a defective image.
    ValueError
        No normal image, unreadable image (named), a mask of another size than its
        image, images of different sizes without resize.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from skad.datasets import load_folder
    >>> root = tempfile.mkdtemp()
    >>> for d in ("good", "dent", "masks"):
    ...     os.makedirs(os.path.join(root, d))
    >>> img = np.zeros((16, 16, 3), np.uint8)
    >>> Image.fromarray(img).save(os.path.join(root, "good", "a.png"))
    >>> Image.fromarray(img).save(os.path.join(root, "dent", "b.png"))
    >>> m = np.zeros((16, 16), np.uint8); m[:4, :4] = 255
    >>> Image.fromarray(m).save(os.path.join(root, "masks", "b_mask.png"))
    >>> data = load_folder(root, mask_dir="masks")
    >>> data.labels.tolist(), int(data.masks[1].sum())
    ([0, 1], 16)
    """
    resize, crop, interpolation = check_geometry(resize, crop, interpolation)
    _check_return_paths(return_paths, resize, crop)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: folder not found: {os.fspath(root)!r}")
    good = list_images(root / good_dir, what=f"good_dir folder {good_dir!r}")
    if not good:
        raise ValueError(
            f"good_dir: no normal image files in {os.fspath(root / good_dir)!r} "
            f"(extensions {IMAGE_EXTENSIONS})"
        )
    mask_root = None
    if mask_dir is not None:
        mask_root = Path(mask_dir) if Path(mask_dir).is_absolute() else root / mask_dir
        if not mask_root.is_dir():
            raise FileNotFoundError(f"mask_dir: folder not found: {os.fspath(mask_root)!r}")
    skip = {good_dir}
    if mask_root is not None and mask_root.parent.resolve() == root.resolve():
        skip.add(mask_root.name)
    files = list(good)
    types = [good_dir] * len(good)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip):
        imgs = list_images(d)
        files += imgs
        types += [d.name] * len(imgs)
    labels = np.array([t != good_dir for t in types], dtype=np.int64)

    if return_paths:
        for f in files:
            image_size_of(f)
        images = [os.fspath(f) for f in files]
    else:
        images = stack_images(
            read_images(files, resize=resize, crop=crop, interpolation=interpolation, n_jobs=n_jobs),
            files,
        )
    masks = None
    if mask_root is not None:
        suffixes = (mask_suffixes,) if isinstance(mask_suffixes, str) else tuple(mask_suffixes)
        out = []
        for f, t in zip(files, types):
            native = image_size_of(f)
            if t == good_dir:
                out.append(np.zeros(output_size(native, resize, crop), dtype=np.uint8))
                continue
            m = _find_mask(mask_root, t, f.stem, suffixes)
            if m is None:
                raise FileNotFoundError(
                    f"no mask found for defective image {os.fspath(f)!r} in "
                    f"{os.fspath(mask_root)!r} (tried {f.stem}{{{', '.join(suffixes)}}}.<ext> "
                    f"in {t}/ and at the top level)"
                )
            out.append(read_mask(m, resize=resize, crop=crop, expected_size=native,
                                 image_path=os.fspath(f)))
        masks = stack_images(out, files, what="masks")
    n_def = int(labels.sum())
    descr = (
        f"Folder data set {os.fspath(root)!r}: {len(files) - n_def} normal images "
        f"({good_dir}/), {n_def} defective in {sorted(set(types) - {good_dir})}; masks: "
        f"{'from ' + os.fspath(mask_root) if mask_root is not None else 'none'}."
    )
    return Bunch(
        images=images,
        labels=labels,
        masks=masks,
        defect_types=types,
        filenames=[os.fspath(f) for f in files],
        DESCR=descr,
    )
