"""Loader for the MVTec AD folder layout (any category, any image size)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._io import (
    check_geometry,
    image_size_of,
    list_images,
    output_size,
    read_images,
    read_mask,
    stack_images,
)

__all__ = ["load_mvtec"]


def _check_return_paths(return_paths, resize, crop):
    if return_paths and (resize is not None or crop is not None):
        raise ValueError(
            f"return_paths=True returns the image files as they are, so resize/crop cannot "
            f"be applied to them; got resize={resize!r}, crop={crop!r}. Pass resize=None, "
            "crop=None (masks then keep the files' native size, the size a path-based "
            "pipeline sees), or return_paths=False to decode with the geometry"
        )


def load_mvtec(
    root,
    category,
    *,
    resize=256,
    crop=224,
    interpolation="bilinear",
    return_paths=False,
    mask_suffix="_mask",
    n_jobs=None,
):
    """Load one category of a data set in the MVTec AD folder layout.

    The layout is ``root/category/train/good/*.png``,
    ``root/category/test/<defect_type>/*.png`` (``good`` = normal) and
    ``root/category/ground_truth/<defect_type>/<stem>_mask.png``. Any category name and
    any image size work, so other sets published in this layout (MVTec LOCO's
    structural part, MTD, VisA converted to it, your own) load the same way.

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding the category folders.
    category : str
        Category folder name, e.g. ``"bottle"``.
    resize : int, (H, W) or None, default=256
        Resize applied first: an int resizes the shorter side to it keeping the aspect
        ratio (``torchvision.transforms.Resize(int)``; MVTec images are square, so 256
        gives 256x256); ``(H, W)`` resizes to exactly that; None keeps the file's size.
    crop : int, (H, W) or None, default=224
        Centre crop applied after resizing (an int is a square). The papers' protocol is
        resize 256, centre-crop 224.
    interpolation : {"bilinear", "bicubic", "lanczos", "nearest"}, default="bilinear"
        Pillow resampling of the images (Pillow's bilinear filter antialiases when
        downsampling, like torchvision's ``Resize`` on PIL images). Masks always use
        nearest neighbour, so they stay binary.
    return_paths : bool, default=False
        If True, ``train_images`` and ``test_images`` are lists of file paths (skad
        estimators decode paths lazily in batches) instead of decoded arrays. Geometry
        cannot be applied to paths: ``resize`` and ``crop`` must then be None, and the
        masks are decoded at the files' native size (the size a path-based pipeline's
        ``anomaly_map`` returns).
    mask_suffix : str, default="_mask"
        Suffix of the mask file names (``000.png`` -> ``000_mask.png``).
    n_jobs : int or None, default=None
        Threads decoding the image files (Pillow releases the GIL); None or 1 decodes
        serially, -1 uses every core.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``train_images``: uint8 ndarray (n_train, H, W, 3), or a list of paths;
        - ``test_images``: uint8 ndarray (n_test, H, W, 3), or a list of paths;
        - ``test_labels``: int ndarray (n_test,), 1 = defective;
        - ``test_masks``: uint8 ndarray (n_test, H, W) in {0, 1} (zeros for good images);
        - ``test_defect_types``: list of str (``"good"`` for normal images);
        - ``defect_types``: sorted list of the defect folder names;
        - ``train_filenames``, ``test_filenames``: lists of str (full paths);
        - ``test_mask_filenames``: list of str or None (None for good images);
        - ``category``: str; ``DESCR``: short description with counts and geometry.

    Raises
    ------
    FileNotFoundError
        Missing category, ``train/good``, ``test`` folder or mask file.
    ValueError
        Empty category, unreadable image file (named), a mask whose size differs from
        its image, a crop larger than the resized image, images of different sizes
        without a resize, or resize/crop together with ``return_paths=True``.

    Notes
    -----
    Images are read as RGB (grayscale categories such as grid or screw are replicated to
    three channels, as the papers do for ImageNet backbones).

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from skad.datasets import load_mvtec
    >>> root = tempfile.mkdtemp()
    >>> def save(rel, arr):
    ...     path = os.path.join(root, "toy", rel)
    ...     os.makedirs(os.path.dirname(path), exist_ok=True)
    ...     Image.fromarray(arr).save(path)
    >>> img = np.full((40, 40, 3), 128, np.uint8)
    >>> mask = np.zeros((40, 40), np.uint8); mask[5:10, 5:10] = 255
    >>> for i in range(3):
    ...     save(f"train/good/{i:03d}.png", img)
    >>> save("test/good/000.png", img)
    >>> save("test/scratch/000.png", img)
    >>> save("ground_truth/scratch/000_mask.png", mask)
    >>> data = load_mvtec(root, "toy", resize=32, crop=28)
    >>> data.train_images.shape, data.test_masks.shape, data.test_labels.tolist()
    ((3, 28, 28, 3), (2, 28, 28), [0, 1])
    """
    resize, crop, interpolation = check_geometry(resize, crop, interpolation)
    _check_return_paths(return_paths, resize, crop)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: MVTec AD root folder not found: {os.fspath(root)!r}")
    cat_dir = root / str(category)
    if not cat_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
        raise FileNotFoundError(
            f"category: folder {os.fspath(cat_dir)!r} not found; categories found in "
            f"{os.fspath(root)!r}: {available}"
        )
    train_files = list_images(cat_dir / "train" / "good", what="training folder train/good")
    if not train_files:
        raise ValueError(
            f"category {category!r} is empty: no image files in "
            f"{os.fspath(cat_dir / 'train' / 'good')!r}"
        )
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"test folder not found: {os.fspath(test_dir)!r}")
    type_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir())
    test_files, test_types, mask_files = [], [], []
    for tdir in type_dirs:
        for f in list_images(tdir):
            test_files.append(f)
            test_types.append(tdir.name)
            if tdir.name == "good":
                mask_files.append(None)
            else:
                m = cat_dir / "ground_truth" / tdir.name / f"{f.stem}{mask_suffix}.png"
                if not m.is_file():
                    raise FileNotFoundError(
                        f"mask file not found for defective image {os.fspath(f)!r}: expected "
                        f"{os.fspath(m)!r}"
                    )
                mask_files.append(m)
    if not test_files:
        raise ValueError(
            f"category {category!r} has no test images in {os.fspath(test_dir)!r}"
        )

    def decode(files, what):
        if return_paths:
            for f in files:  # fail early on unreadable files, header only
                image_size_of(f)
            return [os.fspath(f) for f in files]
        imgs = read_images(files, resize=resize, crop=crop, interpolation=interpolation, n_jobs=n_jobs)
        return stack_images(imgs, files, what=what)

    train_images = decode(train_files, "training images")
    test_images = decode(test_files, "test images")

    masks = []
    for f, m in zip(test_files, mask_files):
        native = image_size_of(f)
        if m is None:
            masks.append(np.zeros(output_size(native, resize, crop), dtype=np.uint8))
        else:
            masks.append(
                read_mask(m, resize=resize, crop=crop, expected_size=native, image_path=os.fspath(f))
            )
    test_masks = stack_images(masks, test_files, what="test masks")
    labels = np.array([t != "good" for t in test_types], dtype=np.int64)
    defect_types = sorted({t for t in test_types if t != "good"})
    geometry = "native size" if resize is None and crop is None else (
        f"resize={resize!r} ({interpolation}; masks nearest), centre crop={crop!r}"
    )
    descr = (
        f"MVTec AD layout, category {category!r} from {os.fspath(root)!r}: "
        f"{len(train_files)} normal training images; {len(test_files)} test images "
        f"({int((labels == 0).sum())} good, {int(labels.sum())} defective: "
        f"{', '.join(defect_types) or 'none'}). Geometry: {geometry}. "
        f"Images {'as file paths' if return_paths else 'uint8 RGB'}; masks uint8 {{0, 1}}."
    )
    return Bunch(
        train_images=train_images,
        test_images=test_images,
        test_labels=labels,
        test_masks=test_masks,
        test_defect_types=list(test_types),
        defect_types=defect_types,
        train_filenames=[os.fspath(f) for f in train_files],
        test_filenames=[os.fspath(f) for f in test_files],
        test_mask_filenames=[None if m is None else os.fspath(m) for m in mask_files],
        category=str(category),
        DESCR=descr,
    )
