"""Threshold-free metrics for anomaly scores (higher = more anomalous).

One sort-based kernel gives ROC, precision-recall and PRO curves: sort the scores once
(:func:`_sorted_groups`), accumulate counts or weights, keep the last index of each
group of tied scores (one point per distinct threshold).
"""

from __future__ import annotations

import numpy as np

from ..utils.validation import labels_from_y, masks_from_y

__all__ = [
    "f1_max",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "roc_curve",
]


def _float32_exact(values):
    """``values`` as float32 if that loses nothing, else None."""
    if values.dtype == np.float32:
        return values
    if values.dtype.kind == "f" or (values.dtype.kind in "iu" and values.dtype.itemsize <= 2):
        v32 = values.astype(np.float32)
        if values.dtype.kind != "f" or np.array_equal(v32, values):
            return v32
    return None


def _sorted_groups(values, codes):
    """Sort ``values`` (1-D) in descending order, carrying non-negative int ``codes``.

    Returns ``(thresholds, last, sorted_codes)``: the distinct values in descending
    order, the index of the last element of each group of equal values in the sorted
    order, and the codes in that order. For float32-exact values (anomaly maps are
    float32) the value's order-preserving bit pattern and the code are packed into one
    uint64 key sorted with ``np.sort``, several times faster than ``argsort`` and the
    gathers it needs; otherwise ``argsort``.
    """
    v32 = _float32_exact(values)
    if v32 is None or codes.size == 0 or int(codes.max()) >= 2**32:
        order = np.argsort(values)[::-1]
        s = values[order]
        last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
        return s[last], last, codes[order]
    bits = (v32 + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    # order-preserving map of IEEE floats to unsigned ints: flip the negatives, set
    # the sign bit of the others
    key32 = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    key = (key32.astype(np.uint64) << np.uint64(32)) | codes.astype(np.uint64)
    del key32, bits
    key.sort()
    key = key[::-1]
    hi = (key >> np.uint64(32)).astype(np.uint32)
    last = np.r_[np.flatnonzero(hi[1:] != hi[:-1]), hi.size - 1]
    hi = hi[last]
    thr = np.where(hi >> np.uint32(31), hi & np.uint32(0x7FFFFFFF), ~hi).view(np.float32)
    return thr.astype(values.dtype, copy=False), last, key & np.uint64(0xFFFFFFFF)


def _descending_cumsums(scores, labels):
    """Distinct thresholds (descending) with the true and false positives at each.

    ``tps[i]`` / ``fps[i]`` count the positive / negative samples scoring
    ``>= thresholds[i]``: one sort, a cumulative sum, the last index of each group of
    tied scores (one point per distinct threshold).
    """
    scores = np.asarray(scores).ravel()
    codes = np.asarray(labels).ravel()
    if codes.dtype.kind not in "ub":
        codes = codes.astype(np.uint8)
    thr, last, c = _sorted_groups(scores, codes)
    tps = np.cumsum(c, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return thr, tps.astype(np.float64), fps.astype(np.float64)


def _check_scores(scores, n, name="anomaly_scores"):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores (n,); got shape {scores.shape}")
    if scores.shape[0] != n:
        raise ValueError(
            f"{name}: expected {n} scores (one per sample in y_true); got {scores.shape[0]}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name}: scores contain NaN or infinity")
    return scores


def _check_maps(masks, maps):
    masks = masks_from_y(masks, name="masks")
    maps = np.asarray(maps)
    if maps.ndim == 2 and masks.shape[0] == 1:
        maps = maps[None]
    if maps.shape != masks.shape:
        raise ValueError(
            f"maps: shape {maps.shape} differs from the masks' shape {masks.shape}; compute "
            f"maps at the masks' size, e.g. detector.anomaly_map(X, output_size={masks.shape[1:]})"
        )
    if maps.dtype.kind not in "uif":
        raise ValueError(f"maps: expected numeric anomaly maps; got dtype {maps.dtype}")
    if not np.all(np.isfinite(maps)):
        raise ValueError("maps: anomaly maps contain NaN or infinity")
    return masks, maps


def _check_two_classes(labels, what):
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        kind = "anomalous" if n_pos == labels.size else "normal"
        raise ValueError(
            f"{what} is undefined when every {'pixel' if 'pixel' in what else 'sample'} is "
            f"{kind}: y_true/masks hold only one class ({n_pos} of {labels.size} positive)"
        )


def roc_curve(y_true, anomaly_scores):
    """ROC curve of anomaly scores (higher = more anomalous).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
        Labels (1 = anomalous) or masks. With masks and 3-D ``anomaly_scores`` the
        curve is the pixel-level one; with masks and 1-D scores, image labels are
        derived from the masks.
    anomaly_scores : array-like of shape (n,) or (n, H, W)
        Image scores or anomaly maps.

    Returns
    -------
    fpr, tpr : ndarray
        False and true positive rates, starting at (0, 0) and ending at (1, 1).
    thresholds : ndarray
        Decreasing thresholds: point ``i`` predicts anomalous the inputs scoring
        ``>= thresholds[i]`` (the first, ``inf``, predicts nothing anomalous).

    Examples
    --------
    >>> from skad.metrics import roc_curve
    >>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    labels, scores = _labels_and_scores(y_true, anomaly_scores)
    _check_two_classes(labels, "ROC curve")
    thr, tps, fps = _descending_cumsums(scores, labels)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def _labels_and_scores(y_true, scores):
    scores_arr = np.asarray(scores)
    y = np.asarray(y_true)
    if scores_arr.ndim >= 2:
        masks, maps = _check_maps(y, scores_arr)
        return masks.ravel(), maps.ravel()
    labels = labels_from_y(y, name="y_true")
    return labels, _check_scores(scores_arr, labels.shape[0])


def _auroc(labels, scores, what):
    _check_two_classes(labels, what)
    _, tps, fps = _descending_cumsums(scores, labels)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def _average_precision(labels, scores, what):
    _check_two_classes(labels, what)
    _, tps, fps = _descending_cumsums(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # AP = sum_n (R_n - R_{n-1}) P_n (step-wise, no interpolation), as scikit-learn
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1_max(labels, scores, what):
    _check_two_classes(labels, what)
    thr, tps, fps = _descending_cumsums(scores, labels)
    n_pos = tps[-1]
    # F1 = 2 TP / (2 TP + FP + FN) with FN = P - TP
    f1 = 2.0 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])


def image_auroc(y_true, anomaly_scores):
    """Area under the ROC curve of image anomaly scores.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
        Image labels (1 = anomalous) or masks (an image with any positive pixel is
        anomalous).
    anomaly_scores : array-like of shape (n,)
        Higher = more anomalous (``detector.anomaly_score(X)``, i.e.
        ``-score_samples(X)``).

    Returns
    -------
    auroc : float

    Raises
    ------
    ValueError
        When ``y_true`` holds one class only, or the shapes disagree.

    Examples
    --------
    >>> from skad.metrics import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    labels = labels_from_y(y_true, name="y_true")
    scores = _check_scores(anomaly_scores, labels.shape[0])
    return _auroc(labels, scores, "image AUROC")


def pixel_auroc(masks, maps):
    """Area under the ROC curve over all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
        Ground truth in {0, 1}, bool or {0, 255}.
    maps : array-like of shape (n, H, W)
        Anomaly maps at the masks' size (higher = more anomalous).

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pixel_auroc
    >>> masks = np.array([[[0, 1], [0, 0]]])
    >>> pixel_auroc(masks, np.array([[[0.1, 0.9], [0.2, 0.3]]]))
    1.0
    """
    m, a = _check_maps(masks, maps)
    return _auroc(m.ravel(), a.ravel(), "pixel AUROC")


def image_ap(y_true, anomaly_scores):
    """Average precision of image anomaly scores (anomalous = positive class).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
    anomaly_scores : array-like of shape (n,)

    Returns
    -------
    ap : float

    Examples
    --------
    >>> from skad.metrics import image_ap
    >>> round(image_ap([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    labels = labels_from_y(y_true, name="y_true")
    scores = _check_scores(anomaly_scores, labels.shape[0])
    return _average_precision(labels, scores, "image AP")


def pixel_ap(masks, maps):
    """Average precision over all pixels (step-wise sum, as scikit-learn's).

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
    maps : array-like of shape (n, H, W)

    Returns
    -------
    ap : float

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pixel_ap
    >>> pixel_ap(np.array([[[0, 1], [1, 0]]]), np.array([[[0.1, 0.9], [0.5, 0.6]]]))
    0.8333333333333333
    """
    m, a = _check_maps(masks, maps)
    return _average_precision(m.ravel(), a.ravel(), "pixel AP")


def f1_max(y_true, scores, *, level="auto", return_threshold=False):
    """Best F1 score over all thresholds.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
        Labels or masks.
    scores : array-like of shape (n,) or (n, H, W)
        Image scores or anomaly maps (higher = more anomalous).
    level : {"auto", "image", "pixel"}, default="auto"
        "auto": pixel level when ``scores`` is 3-D, else image level.
    return_threshold : bool, default=False
        Also return the threshold reaching it (an input is anomalous when its score
        is ``>= threshold``).

    Returns
    -------
    f1 : float
    threshold : float, only if ``return_threshold``

    Examples
    --------
    >>> from skad.metrics import f1_max
    >>> f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], return_threshold=True)
    (0.8, 0.35)
    """
    if level not in ("auto", "image", "pixel"):
        raise ValueError(f"level: expected 'auto', 'image' or 'pixel'; got {level!r}")
    scores_arr = np.asarray(scores)
    if level == "auto":
        level = "pixel" if scores_arr.ndim >= 2 else "image"
    if level == "pixel":
        m, a = _check_maps(y_true, scores_arr)
        labels, flat = m.ravel(), a.ravel()
    else:
        labels = labels_from_y(y_true, name="y_true")
        flat = _check_scores(scores_arr, labels.shape[0], name="scores")
    f1, thr = _f1_max(labels, flat, f"{level} F1-max")
    return (f1, thr) if return_threshold else f1


def image_f1_max(y_true, anomaly_scores):
    """Best image-level F1 over thresholds: ``f1_max(..., level="image")``.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, H, W)
    anomaly_scores : array-like of shape (n,)

    Returns
    -------
    f1 : float

    Examples
    --------
    >>> from skad.metrics import image_f1_max
    >>> image_f1_max([0, 1, 1], [0.1, 0.9, 0.8])
    1.0
    """
    return f1_max(y_true, anomaly_scores, level="image")


def pixel_f1_max(masks, maps):
    """Best pixel-level F1 over thresholds: ``f1_max(..., level="pixel")``.

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
    maps : array-like of shape (n, H, W)

    Returns
    -------
    f1 : float

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pixel_f1_max
    >>> pixel_f1_max(np.array([[[0, 1], [1, 0]]]), np.array([[[0.1, 0.9], [0.5, 0.6]]]))
    0.8
    """
    return f1_max(masks, maps, level="pixel")
