"""Evaluation-protocol transforms: Lv et al.'s MAD-RTO and PatchCluster's blind settings."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.utils import Bunch, check_random_state

from ..utils.validation import masks_from_y

__all__ = ["blind_setting", "make_rto", "rotate_crop"]

_FILL_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


def _crop_size(crop, h, w):
    if isinstance(crop, Real) and not isinstance(crop, (Integral, bool)):
        if not 0.0 < crop <= 1.0:
            raise ValueError(f"crop: a float is a fraction of the side in (0, 1]; got {crop!r}")
        return max(1, int(round(crop * h))), max(1, int(round(crop * w)))
    if isinstance(crop, Integral) and not isinstance(crop, bool):
        ch = cw = int(crop)
    else:
        try:
            ch, cw = (int(v) for v in crop)
        except (TypeError, ValueError):
            raise ValueError(
                f"crop: expected a float fraction in (0, 1], an int or (h, w); got {crop!r}"
            ) from None
    if not (0 < ch <= h and 0 < cw <= w):
        raise ValueError(f"crop: size {(ch, cw)} must be positive and fit the images {(h, w)}")
    return ch, cw


def rotate_crop(images, masks=None, *, max_angle=15.0, crop=0.875, fill="reflect",
                random_state=0, return_params=False):
    """Random rotation and random crop of images (and their masks), seeded: MAD-RTO.

    Lv et al. build "MAD-RTO" from MVTec AD's object categories by applying a random
    rotation and a random crop to the train and test images, to simulate the position
    and angle misalignment of a production line. Each image gets its own angle, drawn
    uniformly in ``[-max_angle, max_angle]`` degrees, and its own crop position, drawn
    uniformly among the positions where the crop fits; both are applied in one
    affine resampling (bilinear for images, nearest neighbour for masks, so masks stay
    binary and aligned with their image).

    Parameters
    ----------
    images : ndarray of shape (n, H, W, C) or (n, H, W)
        uint8 or float images.
    masks : array-like of shape (n, H, W), optional
        Masks ({0, 1}, bool or 0/255), transformed with the same parameters.
    max_angle : float, default=15.0
        Largest absolute rotation angle in degrees.
    crop : float in (0, 1], int or (h, w), default=0.875
        Output size: a fraction of the input side (0.875 = 224/256: load with
        ``resize=256, crop=None`` and crop to 224 at a random position instead of the
        centre) or an absolute size. The crop is not resized back.
    fill : {"reflect", "constant", "nearest", "mirror", "wrap"}, default="reflect"
        How the corners uncovered by the rotation are filled (``scipy.ndimage`` modes;
        "constant" fills zeros). Masks use the same mode, so a mirrored defect stays
        labelled.
    random_state : int, RandomState instance or None, default=0
        Seed of the angles and crop positions.
    return_params : bool, default=False
        Also return the angles (degrees) and crop offsets ``(top, left)``.

    Returns
    -------
    images_out : ndarray of shape (n, h, w[, C]), same dtype as ``images``
    masks_out : ndarray of uint8, shape (n, h, w); only if ``masks`` is given
    params : dict with ``angles`` (n,) and ``offsets`` (n, 2); only if ``return_params``

    Notes
    -----
    The paper gives no angle range, crop size or fill: these are parameters, and the
    defaults (15 degrees, 87.5 % crop, reflect) are skad's choice. Lv et al. apply the
    transform to the object categories only.

    References
    ----------
    Lv, C., Shen, F., Zhang, Z., Zhang, F. "Local one-class classification with image
    matching for anomaly detection" (MAD-RTO, Section 3.1).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.datasets import rotate_crop
    >>> imgs = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    >>> masks = np.zeros((2, 64, 64), np.uint8); masks[:, 30:34, 30:34] = 1
    >>> out, out_masks = rotate_crop(imgs, masks, crop=48, random_state=0)
    >>> out.shape, out_masks.shape, set(np.unique(out_masks).tolist()) <= {0, 1}
    ((2, 48, 48, 3), (2, 48, 48), True)
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(
            f"images: expected an array (n, H, W[, C]) with n >= 1; got shape {images.shape}"
        )
    if fill not in _FILL_MODES:
        raise ValueError(f"fill: expected one of {_FILL_MODES}; got {fill!r}")
    if isinstance(max_angle, bool) or not isinstance(max_angle, Real) or not 0 <= max_angle <= 180:
        raise ValueError(f"max_angle: expected a number of degrees in [0, 180]; got {max_angle!r}")
    n, h, w = images.shape[:3]
    if masks is not None:
        masks = masks_from_y(masks, name="masks")
        if masks.shape != (n, h, w):
            raise ValueError(
                f"masks: shape {masks.shape} does not match the images' {(n, h, w)}"
            )
    ch, cw = _crop_size(crop, h, w)
    rng = check_random_state(random_state)
    angles = rng.uniform(-max_angle, max_angle, size=n)
    offsets = np.stack(
        [rng.randint(0, h - ch + 1, size=n), rng.randint(0, w - cw + 1, size=n)], axis=1
    )
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    out = np.empty((n, ch, cw) + images.shape[3:], dtype=images.dtype)
    out_masks = None if masks is None else np.empty((n, ch, cw), dtype=np.uint8)
    for i in range(n):
        t = np.deg2rad(angles[i])
        # output pixel o (crop coords) -> rotated-image pixel o + offset -> source pixel
        # R (o + offset - centre) + centre
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        shift = rot @ (offsets[i] - centre) + centre
        if images.ndim == 4:
            mat = np.eye(3)
            mat[:2, :2] = rot
            off = np.r_[shift, 0.0]
        else:
            mat, off = rot, shift
        src = images[i].astype(np.float32)
        res = ndimage.affine_transform(
            src, mat, offset=off, output_shape=out.shape[1:], order=1, mode=fill, cval=0.0
        )
        if images.dtype == np.uint8:
            res = np.clip(np.rint(res), 0, 255)
        out[i] = res.astype(images.dtype)
        if masks is not None:
            out_masks[i] = ndimage.affine_transform(
                masks[i], rot, offset=shift, output_shape=(ch, cw), order=0, mode=fill, cval=0
            )
    result = [out]
    if masks is not None:
        result.append(out_masks)
    if return_params:
        result.append({"angles": angles, "offsets": offsets})
    return result[0] if len(result) == 1 else tuple(result)


def make_rto(data, *, max_angle=15.0, crop=0.875, fill="reflect", random_state=0):
    """MAD-RTO version of a loaded set: :func:`rotate_crop` on its train and test images.

    Parameters
    ----------
    data : Bunch
        From :func:`load_mvtec` (decoded images, e.g. ``resize=256, crop=None``) or
        :func:`make_synthetic`.
    max_angle, crop, fill : see :func:`rotate_crop`
    random_state : int, RandomState instance or None, default=0
        One generator draws the training images' parameters, then the test images'.

    Returns
    -------
    data_rto : Bunch
        A copy of ``data`` with ``train_images``, ``test_images``, ``test_masks``
        transformed (labels unchanged; a defect rotated out of the crop keeps its label
        but may lose its mask pixels) and ``DESCR`` extended.

    Examples
    --------
    >>> from skad.datasets import make_synthetic, make_rto
    >>> data = make_synthetic(n_train=4, n_test=4, image_size=64, random_state=0)
    >>> make_rto(data, crop=56).test_masks.shape
    (4, 56, 56)
    """
    if isinstance(data.train_images, list):
        raise ValueError(
            "data: make_rto needs decoded images; load with return_paths=False"
        )
    rng = check_random_state(random_state)
    kw = dict(max_angle=max_angle, crop=crop, fill=fill)
    train = rotate_crop(data.train_images, random_state=rng, **kw)
    test, test_masks = rotate_crop(data.test_images, data.test_masks, random_state=rng, **kw)
    out = Bunch(**data)
    out.update(
        train_images=train,
        test_images=test,
        test_masks=test_masks,
        DESCR=f"{data.get('DESCR', '')} MAD-RTO: random rotation (|angle| <= {max_angle} deg) "
        f"and random crop ({crop!r}), fill={fill!r}, random_state={random_state!r}.",
    )
    return out


def blind_setting(data, setting="mix"):
    """Images, labels and masks of PatchCluster's blind settings Mix / Test / Ano.

    Blind anomaly detection fits and scores the same unlabelled set (``fit(X)`` then
    ``score_samples(X)`` / ``anomaly_map(X)``); labels and masks are used for
    evaluation only.

    Parameters
    ----------
    data : Bunch
        From :func:`load_mvtec` or :func:`make_synthetic` (``train_images``,
        ``test_images``, ``test_labels``, ``test_masks``).
    setting : {"mix", "test", "ano"}, default="mix"
        - "mix": training and test images together (training masks are zeros);
        - "test": the test images only;
        - "ano": the defective test images only (image AUROC is then undefined; use
          pixel metrics).

    Returns
    -------
    images : ndarray or list of paths
    labels : ndarray of int, shape (n,)
    masks : ndarray of uint8, shape (n, H, W)

    References
    ----------
    PatchCluster, "blind anomaly detection" (Section 3: MVTec AD-Mix, -Test, -Ano).

    Examples
    --------
    >>> from skad.datasets import make_synthetic, blind_setting
    >>> data = make_synthetic(n_train=6, n_test=4, image_size=64, random_state=0)
    >>> X, labels, masks = blind_setting(data, "mix")
    >>> len(X), int(labels.sum()) == int(data.test_labels.sum())
    (10, True)
    """
    if setting not in ("mix", "test", "ano"):
        raise ValueError(f"setting: expected 'mix', 'test' or 'ano'; got {setting!r}")
    test_x, labels, masks = data.test_images, np.asarray(data.test_labels), data.test_masks
    if setting == "test":
        return test_x, labels.copy(), np.array(masks)
    if setting == "ano":
        idx = np.flatnonzero(labels == 1)
        if idx.size == 0:
            raise ValueError("setting='ano': the data set has no defective test image")
        x = [test_x[i] for i in idx] if isinstance(test_x, list) else test_x[idx]
        return x, labels[idx], np.array(masks)[idx]
    train_x = data.train_images
    n_train = len(train_x)
    if isinstance(train_x, list) != isinstance(test_x, list):
        raise ValueError("data: train and test images must both be arrays or both be paths")
    if isinstance(train_x, list):
        x = list(train_x) + list(test_x)
    else:
        if train_x.shape[1:] != test_x.shape[1:]:
            raise ValueError(
                f"data: train images {train_x.shape[1:]} and test images {test_x.shape[1:]} "
                "differ in size; load them with one geometry"
            )
        x = np.concatenate([train_x, test_x])
    zeros = np.zeros((n_train,) + np.asarray(masks).shape[1:], dtype=np.uint8)
    return x, np.r_[np.zeros(n_train, dtype=labels.dtype), labels], np.concatenate([zeros, masks])
