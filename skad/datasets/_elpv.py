"""Loader for the ELPV solar-cell electroluminescence set (image-level labels)."""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._io import check_geometry, image_size_of, read_images, stack_images
from ._mvtec import _check_return_paths

__all__ = ["load_elpv"]


def _read_labels(path):
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(
                    f"{os.fspath(path)!r} line {lineno}: expected 'path probability type'; "
                    f"got {line.strip()!r}"
                )
            try:
                prob = float(parts[1])
            except ValueError:
                raise ValueError(
                    f"{os.fspath(path)!r} line {lineno}: defect probability {parts[1]!r} is "
                    "not a number"
                ) from None
            rows.append((parts[0], prob, parts[2]))
    return rows


def load_elpv(
    root,
    *,
    cell_type=None,
    min_defect_probability=2 / 3,
    ambiguous="drop",
    resize=None,
    crop=None,
    interpolation="bilinear",
    as_rgb=False,
    return_paths=False,
    n_jobs=None,
):
    """Load the ELPV electroluminescence images of solar cells (Buerhop-Lutz et al.).

    Each 300x300 grayscale cell image carries an expert defect probability in
    {0, 1/3, 2/3, 1} and a cell type (mono- or polycrystalline). There are no masks.

    Parameters
    ----------
    root : str or os.PathLike
        Folder holding ``labels.csv`` and ``images/``.
    cell_type : {"mono", "poly"} or None, default=None
        Keep one cell type (None: both).
    min_defect_probability : float in (0, 1], default=2/3
        Label rule: an image is defective (1) when its probability is >= this value;
        probability 0 is normal (0).
    ambiguous : {"drop", "normal"}, default="drop"
        What to do with images of probability in (0, ``min_defect_probability``):
        drop them (the shared protocol) or label them normal.
    resize, crop, interpolation : see :func:`skad.datasets.load_mvtec`
        Default None: native 300x300.
    as_rgb : bool, default=False
        False: images ``(n, H, W)`` grayscale (skad estimators accept grayscale and
        replicate it to 3 channels batch by batch, which keeps memory 3x lower);
        True: ``(n, H, W, 3)``.
    return_paths : bool, default=False
        Return file paths instead of decoded images (requires resize=crop=None).
    n_jobs : int or None, default=None
        Threads decoding the image files (Pillow releases the GIL); None or 1 decodes
        serially, -1 uses every core.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` (uint8 array or list of paths), ``labels`` (int (n,), 1 =
        defective), ``probability`` (float (n,)), ``cell_types`` (list of str),
        ``filenames``, ``DESCR``.

    Raises
    ------
    FileNotFoundError
        Missing ``root``, ``labels.csv`` or image file.
    ValueError
        Bad parameter, malformed ``labels.csv`` line, unreadable image, empty selection.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> from skad.datasets import load_elpv
    >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "images"))
    >>> rows = [("cell0001.png", 0.0, "mono"), ("cell0002.png", 1 / 3, "mono"),
    ...         ("cell0003.png", 1.0, "poly")]
    >>> with open(os.path.join(root, "labels.csv"), "w") as fh:
    ...     for name, p, t in rows:
    ...         Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, "images", name))
    ...         _ = fh.write(f"images/{name} {p} {t}\\n")
    >>> data = load_elpv(root)
    >>> data.images.shape, data.labels.tolist(), data.cell_types
    ((2, 8, 8), [0, 1], ['mono', 'poly'])
    """
    if cell_type not in (None, "mono", "poly"):
        raise ValueError(f"cell_type: expected None, 'mono' or 'poly'; got {cell_type!r}")
    if (
        isinstance(min_defect_probability, bool)
        or not isinstance(min_defect_probability, Real)
        or not 0.0 < float(min_defect_probability) <= 1.0
    ):
        raise ValueError(
            f"min_defect_probability: expected a float in (0, 1]; got {min_defect_probability!r}"
        )
    if ambiguous not in ("drop", "normal"):
        raise ValueError(f"ambiguous: expected 'drop' or 'normal'; got {ambiguous!r}")
    resize, crop, interpolation = check_geometry(resize, crop, interpolation)
    _check_return_paths(return_paths, resize, crop)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: ELPV folder not found: {os.fspath(root)!r}")
    csv = root / "labels.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"ELPV labels file not found: {os.fspath(csv)!r}")
    # probabilities are stored as 0.333..., 0.666...; compare with a tolerance
    thr = float(min_defect_probability) - 1e-6
    files, probs, types, labels = [], [], [], []
    for rel, prob, ctype in _read_labels(csv):
        if cell_type is not None and ctype != cell_type:
            continue
        if prob >= thr:
            label = 1
        elif prob <= 1e-9:
            label = 0
        elif ambiguous == "drop":
            continue
        else:
            label = 0
        files.append(root / rel)
        probs.append(prob)
        types.append(ctype)
        labels.append(label)
    if not files:
        raise ValueError(
            f"no ELPV image selected from {os.fspath(csv)!r} with cell_type={cell_type!r}"
        )
    mode = "RGB" if as_rgb else "L"
    if return_paths:
        for f in files:
            image_size_of(f)
        images = [os.fspath(f) for f in files]
    else:
        images = stack_images(
            read_images(files, resize=resize, crop=crop, interpolation=interpolation, mode=mode,
                        n_jobs=n_jobs),
            files,
        )
    labels = np.asarray(labels, dtype=np.int64)
    descr = (
        f"ELPV solar cells from {os.fspath(root)!r}: {labels.size} images "
        f"(cell_type={cell_type!r}); {int((labels == 0).sum())} normal, {int(labels.sum())} "
        f"defective (probability >= {float(min_defect_probability):.3g}; ambiguous "
        f"probabilities: {ambiguous}). Image-level labels only, no masks."
    )
    return Bunch(
        images=images,
        labels=labels,
        probability=np.asarray(probs, dtype=np.float64),
        cell_types=types,
        filenames=[os.fspath(f) for f in files],
        DESCR=descr,
    )
