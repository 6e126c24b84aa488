"""Metrics against independent slow references; scorers' sign and error paths."""

import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.neighbors import LocalOutlierFactor

from skad.metrics import (
    f1_max,
    get_scorer,
    get_scorer_names,
    image_ap,
    image_auroc,
    image_auroc_scorer,
    image_f1_max,
    make_anomaly_scorer,
    pixel_ap,
    pixel_auroc,
    pixel_auroc_scorer,
    pixel_f1_max,
    pro_curve,
    pro_score,
    pro_scorer,
    roc_curve,
)


# -- independent references ----------------------------------------------------------
def pairwise_auroc(labels, scores):
    """Mann-Whitney: P(score of an anomaly > score of a normal), ties count 1/2."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, float).ravel()
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def slow_pro_curve(masks, maps, connectivity=8):
    """One binarisation and one labelling per distinct threshold."""
    structure = np.ones((3, 3)) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append(float((pred & normal).sum() / normal.sum()))
        overlaps = []
        for m, p in zip(masks, pred):
            lab, n = ndimage.label(m, structure=structure)
            for r in range(1, n + 1):
                region = lab == r
                overlaps.append((p & region).sum() / region.sum())
        pros.append(float(np.mean(overlaps)))
    return np.array(fprs), np.array(pros)


def slow_area(fpr, pro, max_fpr):
    """Trapezoid up to max_fpr; the curve's value there by linear interpolation."""
    keep = fpr <= max_fpr
    x, y = list(fpr[keep]), list(pro[keep])
    if x[-1] < max_fpr:
        j = np.flatnonzero(fpr > max_fpr)[0]
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        x.append(max_fpr)
        y.append(y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / max_fpr


def random_case(seed, n=5, size=14, levels=12):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n - 1):  # the last image is defect-free
        for _ in range(rng.integers(1, 3)):
            r, c = rng.integers(0, size - 4, 2)
            masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1
    # coarse values so that ties are frequent
    maps = np.round(rng.random(masks.shape) * levels + 3 * masks * rng.random(masks.shape)) / levels
    return masks, maps


# -- image level -----------------------------------------------------------------------
def test_image_auroc_hand_computed():
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    assert image_auroc([1, 0, 1], [3.0, 1.0, 2.0]) == 1.0
    assert image_auroc([1, 0, 1], [-3.0, -1.0, -2.0]) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=60) + y, 1)  # ties
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_auroc(y, s) == pytest.approx(pairwise_auroc(y, s), abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    best = max(f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
    f1, thr = f1_max(y, s, return_threshold=True)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert f1_score(y, (s >= thr).astype(int)) == pytest.approx(best, abs=1e-12)
    assert image_f1_max(y, s) == f1


def test_image_auroc_accepts_masks_as_labels():
    masks = np.zeros((4, 3, 3), np.uint8)
    masks[2, 1, 1] = 255
    masks[3, 0, 0] = 255
    assert image_auroc(masks, [0.1, 0.2, 0.9, 0.8]) == 1.0


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.random(50), 1)
    fpr, tpr, thr = roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])


# -- pixel level -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn(seed):
    masks, maps = random_case(seed)
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    best = max(f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
    assert pixel_f1_max(masks, maps) == pytest.approx(best, abs=1e-12)
    assert f1_max(masks, maps) == pixel_f1_max(masks, maps)  # level="auto"


def test_mask_encodings_agree():
    masks, maps = random_case(0)
    ref = pixel_auroc(masks, maps)
    assert pixel_auroc(masks.astype(bool), maps) == ref
    assert pixel_auroc(masks * 255, maps) == ref
    assert pro_score(masks * 255, maps) == pro_score(masks, maps)


# -- PRO ---------------------------------------------------------------------------------
def test_pro_hand_computed():
    # one image, regions of 1 and 3 pixels: PRO weighs them equally
    masks = np.array([[[1, 0, 0, 1, 1, 1]]])
    maps = np.array([[[0.9, 0.0, 0.0, 0.5, 0.1, 0.1]]])
    fpr, pro, thr = pro_curve(masks, maps)
    # t=0.9: region A covered (1), region B 0 -> 0.5; t=0.5: B 1/3 -> (1 + 1/3) / 2
    np.testing.assert_allclose(pro, [0, 0.5, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.1, 0.0])
    # normal pixels all score below the regions: PRO = 1 from FPR 0 on
    assert pro_score(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_pro_perfect_and_reversed():
    masks, _ = random_case(1)
    assert pro_score(masks, masks.astype(float)) == 1.0
    assert pro_score(masks, -masks.astype(float)) == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_pro_matches_slow_loop(seed, max_fpr):
    masks, maps = random_case(seed)
    ref_fpr, ref_pro = slow_pro_curve(masks, maps)
    fpr, pro, _ = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    assert pro_score(masks, maps, max_fpr=max_fpr) == pytest.approx(
        slow_area(ref_fpr, ref_pro, max_fpr), abs=1e-12
    )


def test_pro_continuous_maps_match_slow_loop():
    # distinct values: the partition-based truncation of pro_score must stay exact
    rng = np.random.default_rng(5)
    masks, _ = random_case(5, size=12)
    maps = rng.random(masks.shape) + 0.8 * masks
    ref_fpr, ref_pro = slow_pro_curve(masks, maps)
    for max_fpr in (0.01, 0.3, 0.77):
        assert pro_score(masks, maps, max_fpr=max_fpr) == pytest.approx(
            slow_area(ref_fpr, ref_pro, max_fpr), abs=1e-12
        )


def test_pro_connectivity():
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = 1  # diagonal neighbours
    maps = np.zeros((1, 6, 6))
    maps[0, 1, 1] = 1.0  # only one of the two pixels found
    _, pro8, _ = pro_curve(masks, maps, connectivity=8)
    _, pro4, _ = pro_curve(masks, maps, connectivity=4)
    assert pro8[1] == 0.5  # one region of 2 pixels, half covered
    assert pro4[1] == 0.5  # two regions, one covered: also 0.5 ...
    maps[0, 2, 2] = 0.5
    _, ref4 = slow_pro_curve(masks, maps, connectivity=4)
    np.testing.assert_allclose(pro_curve(masks, maps, connectivity=4)[1], ref4)


# -- errors ------------------------------------------------------------------------------
def test_metric_errors():
    masks, maps = random_case(0)
    with pytest.raises(ValueError, match="differs from the masks' shape"):
        pixel_auroc(masks, maps[:, :-1])
    with pytest.raises(ValueError, match="only one class"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        pixel_auroc(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="expected 3 scores"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [np.nan, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        pixel_ap(masks, np.where(masks, np.nan, maps))
    with pytest.raises(ValueError, match="without anomalous regions"):
        pro_score(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="without normal pixels"):
        pro_score(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(masks, maps, max_fpr=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        pro_score(masks, maps, connectivity=6)
    with pytest.raises(ValueError, match="binary"):
        pixel_auroc(masks * 3, maps)
    with pytest.raises(ValueError, match="level"):
        f1_max([0, 1], [0.1, 0.2], level="region")


# -- scorers -----------------------------------------------------------------------------
class _ByMax(OutlierMixin, BaseEstimator):
    """Anomaly = brightest pixel (times sign); maps = brightness (times sign)."""

    def __init__(self, sign=1.0):
        self.sign = sign

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def score_samples(self, X):
        return -self.sign * np.asarray(X, float).reshape(len(X), -1).max(axis=1)

    def anomaly_map(self, X, output_size=None):
        return self.sign * np.asarray(X, float).mean(axis=-1)


def _bright_squares(n=12, size=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 100, (n, size, size, 3)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n // 2, n):
        masks[i, 2:4, 3:6] = 1
    X[masks == 1] = 250
    return X, masks


def test_scorers_sign_and_y_forms():
    X, masks = _bright_squares()
    labels = masks.reshape(len(X), -1).max(axis=1)
    good, bad = _ByMax().fit(X), _ByMax(sign=-1.0).fit(X)
    assert image_auroc_scorer(good, X, labels) == 1.0
    assert image_auroc_scorer(good, X, masks) == 1.0
    assert image_auroc_scorer(bad, X, labels) == 0.0
    assert pixel_auroc_scorer(good, X, masks) == 1.0
    assert pixel_auroc_scorer(bad, X, masks) == 0.0
    assert pro_scorer(good, X, masks) == 1.0
    for name in get_scorer_names():
        assert get_scorer(name)(good, X, masks) == 1.0


def test_scorer_errors_and_undefined():
    X, masks = _bright_squares()
    labels = masks.reshape(len(X), -1).max(axis=1)
    lof = LocalOutlierFactor(novelty=True, n_neighbors=3).fit(X.reshape(len(X), -1))
    with pytest.raises(TypeError, match="no anomaly_map"):
        pixel_auroc_scorer(lof, X.reshape(len(X), -1), masks)
    with pytest.raises(ValueError, match="need ground-truth masks"):
        pixel_auroc_scorer(_ByMax().fit(X), X, labels)
    with pytest.raises(TypeError, match="no score_samples"):
        image_auroc_scorer(object(), X, labels)
    with pytest.raises(ValueError, match="y is required"):
        image_auroc_scorer(_ByMax().fit(X), X, None)
    with pytest.raises(ValueError, match="unknown skad scorer"):
        get_scorer("auroc")
    normal = labels == 0
    with pytest.warns(UndefinedMetricWarning, match="undefined on this split"):
        assert np.isnan(image_auroc_scorer(_ByMax().fit(X), X[normal], labels[normal]))
    with pytest.warns(UndefinedMetricWarning, match="undefined on this split"):
        assert np.isnan(pro_scorer(_ByMax().fit(X), X[normal], masks[normal]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer = make_anomaly_scorer(pro_score, level="pixel", max_fpr=0.05)
        assert scorer(_ByMax().fit(X), X, masks) == 1.0
    assert "max_fpr=0.05" in repr(scorer)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
def test_sort_kernel_matches_argsort(dtype):
    from skad.metrics._ranking import _sorted_groups

    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        values = np.r_[rng.standard_normal(500), [0.0, -0.0, 1e-30, -1e-30, 3.0, 3.0]]
    else:
        values = rng.integers(0, 50, 500)
    values = values.astype(dtype)
    codes = rng.integers(0, 7, values.size)
    thr, last, c = _sorted_groups(values, codes)
    assert thr.dtype == values.dtype
    np.testing.assert_array_equal(thr, np.unique(values)[::-1])
    # the codes travel with their values: same codes in each group of equal values
    starts = np.r_[0, last[:-1] + 1]
    for t, a, b in zip(thr, starts, last + 1):
        np.testing.assert_array_equal(np.sort(c[a:b]), np.sort(codes[values == t]))


def test_float64_maps_not_exact_in_float32():
    # values that differ only beyond float32 precision must stay distinct thresholds
    masks = np.array([[[1, 0, 0]]])
    maps = np.array([[[1.0 + 1e-12, 1.0, 0.5]]])
    assert pixel_auroc(masks, maps) == 1.0
    fpr, pro, thr = pro_curve(masks, maps)
    assert thr[1] == 1.0 + 1e-12 and pro.tolist() == [0.0, 1.0, 1.0, 1.0]


def test_scorers_pickle():
    # GridSearchCV(n_jobs=...) sends scorers to worker processes
    import pickle

    X, masks = _bright_squares()
    for scorer in (image_auroc_scorer, pro_scorer, make_anomaly_scorer(pro_score, level="pixel", max_fpr=0.1)):
        clone = pickle.loads(pickle.dumps(scorer))
        assert clone(_ByMax().fit(X), X, masks) == scorer(_ByMax().fit(X), X, masks)
