"""Per-region overlap (PRO) curve and its normalised area (Bergmann et al.)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._ranking import _check_maps, _sorted_groups

__all__ = ["pro_curve", "pro_score"]


def _structure(connectivity):
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity: expected 4 or 8; got {connectivity!r}")


def _label_regions(masks, connectivity):
    """Label the connected regions of all masks once, with ids unique across images.

    Returns ``labels`` (int32, same shape as ``masks``; 0 = normal pixel, k >= 1 = region
    k) and ``weights`` (float64, indexed by region id): ``weights[0] = 0`` and
    ``weights[k] = 1 / (size of region k x number of regions)``, so the PRO at a
    threshold is the sum of ``weights[labels]`` over the pixels scoring at or above it
    (the mean, over regions, of each region's overlap).
    """
    structure = _structure(connectivity)
    labels = np.zeros(masks.shape, dtype=np.int32)
    sizes = [np.zeros(1, dtype=np.int64)]
    n_regions = 0
    for i, mask in enumerate(masks):
        if not mask.any():
            continue
        lab, n = ndimage.label(mask, structure=structure)
        sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        lab[lab > 0] += n_regions
        labels[i] = lab
        n_regions += n
    n_normal = int(masks.size - sum(int(sz.sum()) for sz in sizes))
    if n_regions == 0:
        raise ValueError("PRO is undefined without anomalous regions: every mask is empty")
    if n_normal == 0:
        raise ValueError("PRO is undefined without normal pixels: every mask pixel is anomalous")
    sizes = np.concatenate(sizes).astype(np.float64)
    weights = np.zeros(sizes.shape, dtype=np.float64)
    weights[1:] = 1.0 / (sizes[1:] * n_regions)
    return labels, weights, n_normal


def _pro_cumsums(values, labels, weights):
    """Thresholds, cumulative normal-pixel counts and PRO for pixels ``values``/``labels``."""
    thr, last, lab = _sorted_groups(values, labels)
    fps = np.cumsum(lab == 0, dtype=np.int64)[last]
    # the sum of region weights may exceed 1 by rounding (1e-16 per region)
    pro = np.minimum(np.cumsum(weights[lab])[last], 1.0)
    return thr, fps, pro


def pro_curve(masks, maps, *, connectivity=8):
    """Per-region-overlap curve: mean region overlap against the pixel false positive rate.

    For a threshold t, a pixel is predicted anomalous when its map value is >= t; the
    PRO is the mean, over every connected ground-truth region of every image, of the
    fraction of the region's pixels predicted anomalous; the FPR is the fraction of all
    normal pixels (of all images) predicted anomalous (Bergmann et al., 2021).

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
        Ground truth in {0, 1}, bool or {0, 255}.
    maps : array-like of shape (n, H, W)
        Anomaly maps (higher = more anomalous).
    connectivity : {4, 8}, default=8
        Pixel connectivity of regions (8 as the MVTec AD evaluation code).

    Returns
    -------
    fpr, pro : ndarray
        Curve points, one per distinct map value, starting at (0, 0) and ending at
        (1, 1).
    thresholds : ndarray
        Decreasing thresholds (first ``inf``).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pro_curve
    >>> masks = np.array([[[1, 0, 0, 1]]])           # two regions of one pixel
    >>> fpr, pro, thr = pro_curve(masks, np.array([[[0.9, 0.1, 0.5, 0.3]]]))
    >>> fpr.tolist(), pro.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    masks, maps = _check_maps(masks, maps)
    labels, weights, n_normal = _label_regions(masks, connectivity)
    thr, fps, pro = _pro_cumsums(maps.ravel(), labels.ravel(), weights)
    return np.r_[0.0, fps / n_normal], np.r_[0.0, pro], np.r_[np.inf, thr]


def _area_up_to(x, y, x_max):
    """Trapezoidal area under (x, y) for x in [0, x_max], y interpolated at x_max."""
    # x is non-decreasing; y at x_max by linear interpolation between its neighbours
    # (as the MVTec AD evaluation code's ``trapezoid(..., x_max)``)
    k = int(np.searchsorted(x, x_max, side="right"))
    if k >= x.size:
        return float(np.trapezoid(y, x))
    xs, ys = x[:k], y[:k]
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    y_at = y0 if x1 == x0 else y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    return float(np.trapezoid(np.r_[ys, y_at], np.r_[xs, x_max]))


def pro_score(masks, maps, *, max_fpr=0.3, connectivity=8):
    """Area under the PRO curve for FPR in [0, ``max_fpr``], divided by ``max_fpr``.

    The localisation metric of MVTec AD (Bergmann et al., 2021; "AUPRO" / "PRO" in the
    papers), in [0, 1], 1 is best. It weights every defect region equally, unlike
    pixel AUROC, which large defects dominate.

    Parameters
    ----------
    masks : array-like of shape (n, H, W)
        Ground truth in {0, 1}, bool or {0, 255}; images without defects contribute
        normal pixels only.
    maps : array-like of shape (n, H, W)
        Anomaly maps at the masks' size (higher = more anomalous).
    max_fpr : float in (0, 1], default=0.3
        Integration limit on the false positive rate.
    connectivity : {4, 8}, default=8
        Pixel connectivity of ground-truth regions.

    Returns
    -------
    score : float

    Raises
    ------
    ValueError
        No anomalous region or no normal pixel in ``masks``, shape mismatch, NaN maps.

    Notes
    -----
    Exact and vectorised over thresholds: regions are labelled once, every pixel gets a
    weight (1 for normal pixels; 1 / (region size x number of regions) inside a region)
    and one descending sort of the map values with cumulative sums of the weights gives
    the FPR and PRO at every distinct threshold. Only pixels scoring at or above the
    value where the normal pixels' FPR passes ``max_fpr`` are sorted (the rest cannot
    change the area), found with a linear-time partition. The curve is integrated with
    the trapezoidal rule, linearly interpolated at ``max_fpr``, as the MVTec AD
    evaluation script does; ``skad.metrics.pro_curve`` gives the whole curve.

    References
    ----------
    Bergmann, P., Batzner, K., Fauser, M., Sattlegger, D., Steger, C. "The MVTec
    Anomaly Detection Dataset: A Comprehensive Real-World Dataset for Unsupervised
    Anomaly Detection", IJCV 129, 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.metrics import pro_score
    >>> masks = np.zeros((1, 8, 8), int); masks[0, :2, :2] = 1
    >>> maps = masks + 0.0                                        # perfect map
    >>> pro_score(masks, maps)
    1.0
    """
    if not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr: expected a float in (0, 1]; got {max_fpr!r}")
    max_fpr = float(max_fpr)
    masks, maps = _check_maps(masks, maps)
    labels, weights, n_normal = _label_regions(masks, connectivity)
    flat = maps.ravel()
    lab = labels.ravel()
    # Keep the pixels scoring >= t*, the k-th largest normal value with
    # k = floor(max_fpr * n_normal) + 1: the curve then passes FPR = max_fpr at or
    # before t*, and pixels below t* cannot change the area.
    k = int(np.floor(max_fpr * n_normal)) + 1
    if k < n_normal:
        normal_scores = flat[lab == 0]
        t_star = np.partition(normal_scores, n_normal - k)[n_normal - k]
        keep = flat >= t_star
        flat, lab = flat[keep], lab[keep]
    _, fps, pro = _pro_cumsums(flat, lab, weights)
    fpr = np.r_[0.0, fps / n_normal]
    pro = np.r_[0.0, pro]
    return _area_up_to(fpr, pro, max_fpr) / max_fpr
