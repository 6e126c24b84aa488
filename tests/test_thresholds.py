"""Thresholds with a guarantee: calibration scores, the conformal false-alarm rate, p-values.

The guarantee is checked by simulation: over many random splits of a pool of synthetic
normal samples into fit / new, the mean observed false-alarm rate of
``false_alarm_rate=alpha`` stays at or below ``alpha`` within its sampling error, and
(for the exact split-conformal setting) not far below it either, so a threshold that
flags nothing would fail too.
"""

import math
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neighbors import LocalOutlierFactor

from skad.detectors import SPADE, NPad, PaDiM, PatchCore, PatchOutlierDetector
from skad.detectors._base import conformal_offset

ALPHA = 0.1
N_FIT = 39           # (n_cal + 1) * alpha is an integer for the split below
N_NEW = 100
N_SPLITS = 150


def _pool(d=6, n=600, seed=0):
    rng = np.random.default_rng(seed)
    # correlated, heavy-ish tailed normals: the guarantee is distribution-free
    A = rng.normal(size=(d, d))
    return (rng.standard_t(df=5, size=(n, d)) @ A).astype(np.float32)


def _false_alarm_rates(det, d=6, n_fit=N_FIT, n_splits=N_SPLITS, seed=0):
    pool = _pool(d=d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rates = np.empty(n_splits)
    for r in range(n_splits):
        perm = rng.permutation(len(pool))
        fit, new = pool[perm[:n_fit]], pool[perm[n_fit:n_fit + N_NEW]]
        est = clone(det).set_params(random_state=r) if "random_state" in det.get_params() \
            else clone(det)
        rates[r] = np.mean(est.fit(fit).predict(new) == -1)
    return rates.mean(), rates.std(ddof=1) / math.sqrt(n_splits)


GUARANTEED = [
    # exact split-conformal: the model kept never saw its calibration samples
    PaDiM(calibration=0.5, false_alarm_rate=ALPHA, device="cpu"),
    PatchOutlierDetector(LocalOutlierFactor(n_neighbors=10, novelty=True), calibration=0.5,
                         false_alarm_rate=ALPHA, device="cpu"),
    # leave-one-image-out scores of an exact full-bank kNN: each calibration score is
    # against a smaller bank than a new sample's, so at least as high (conservative)
    PatchCore(coreset_ratio=1.0, nn_method="exact", false_alarm_rate=ALPHA, device="cpu"),
    SPADE(n_neighbors=5, false_alarm_rate=ALPHA, device="cpu"),
]


@pytest.mark.parametrize("det", GUARANTEED, ids=lambda d: f"{type(d).__name__}-"
                         f"{d.get_params()['calibration']}")
def test_false_alarm_rate_holds_over_random_splits(det):
    mean, se = _false_alarm_rates(det)
    assert mean <= ALPHA + 3 * se, (mean, se)
    if det.get_params()["calibration"] != "auto":
        # exact setting: the rate is at least alpha - 1 / (n_cal + 1)
        n_cal = round(det.calibration * N_FIT)
        assert mean >= ALPHA - 1 / (n_cal + 1) - 3 * se, (mean, se)


@pytest.mark.parametrize("det", [PaDiM(device="cpu"), NPad(max_shift=0, device="cpu")],
                         ids=lambda d: type(d).__name__)
def test_cross_fitted_calibration_removes_the_in_sample_bias(det):
    """Gaussians fitted on 39 samples of 6 dimensions: in-sample Mahalanobis distances
    are biased low, so an in-sample threshold flags far more than the target."""
    det = clone(det).set_params(false_alarm_rate=ALPHA)
    biased, se_b = _false_alarm_rates(det.set_params(calibration="in_sample"), n_splits=60)
    assert biased > ALPHA + 3 * se_b  # the simulation can fail
    cv, se = _false_alarm_rates(clone(det).set_params(calibration="cv"), n_splits=60)
    # cross-fitting has no finite-sample guarantee (CV+: 1 - 2 alpha), only close
    assert cv <= ALPHA + 0.05 + 3 * se, (cv, se)
    assert cv < biased


def test_npad_holdout_calibration_holds_its_target():
    """N-pad's "auto" (a fifth scored by a fold model sharing the full fit's weights and
    k-means cells): "auto" flags a new normal sample with probability about
    1 / (n_cal + 1) (measured 0.068 +- 0.006 over 150 splits against 1/9; a fold
    model refitted from scratch 0.101 +- 0.008); the in-sample threshold of the same
    fits overshoots its own target 1 / (n + 1) (0.059 against 1/40)."""
    det = NPad(max_shift=0, device="cpu")
    assert det.calibration == "auto"
    n_cal = len(np.array_split(np.arange(N_FIT), 5)[0])  # 8
    holdout, se = _false_alarm_rates(det, n_splits=60)
    biased, se_b = _false_alarm_rates(clone(det).set_params(calibration="in_sample"),
                                      n_splits=60)
    assert biased > 1 / (N_FIT + 1) + 3 * se_b  # the simulation can fail
    # cross-fitting's approximation (the fold model is fitted on 4/5 of the samples)
    assert holdout <= 1 / (n_cal + 1) + 0.05 + 3 * se, (holdout, se)


def test_holdout_scores_the_first_fold_with_a_model_fitted_without_it():
    X = _pool(n=40)
    det = PaDiM(calibration="holdout", random_state=3, device="cpu").fit(X)
    assert det.calibration_ == "holdout" and len(det.calibration_scores_) == 8
    test = np.sort(np.array_split(np.random.RandomState(3).permutation(40), 5)[0])
    train = np.setdiff1d(np.arange(40), test)
    ref = PaDiM(random_state=3, device="cpu", calibration="in_sample").fit(X[train])
    np.testing.assert_allclose(det.calibration_scores_, ref.score_samples(X[test]),
                               rtol=1e-6)
    ins = PaDiM(random_state=3, device="cpu", calibration="in_sample").fit(X)
    np.testing.assert_allclose(det.score_samples(X), ins.score_samples(X))
    # "cv": every sample's score, in the order of the samples, its fold's one included
    cv = PaDiM(calibration="cv", random_state=3, device="cpu").fit(X)
    np.testing.assert_allclose(cv.calibration_scores_[test], det.calibration_scores_,
                               rtol=1e-6)


def test_auto_is_the_conformal_rule_at_one_over_n_plus_one():
    X = _pool(n=40)
    a = PaDiM(random_state=0, device="cpu").fit(X)
    b = PaDiM(random_state=0, device="cpu", false_alarm_rate=1 / 41).fit(X)
    assert a.calibration_ == "cv"
    assert a.offset_ == pytest.approx(b.offset_)
    assert a.offset_ == pytest.approx(a.calibration_scores_.min())


def test_conformal_offset_rank():
    a = np.arange(1.0, 20.0)  # n = 19
    assert conformal_offset(a, 0.1) == 18.0  # k = ceil(20 * 0.9) = 18
    assert conformal_offset(a[::-1], 0.05) == 19.0  # k = 19 = n
    assert conformal_offset(a, 0.01) == np.inf  # k = 20 > n
    assert conformal_offset(a, 0.5) == 10.0


def test_pvalues_match_predict_and_are_super_uniform():
    pool = _pool(n=400)
    det = PaDiM(calibration=0.5, false_alarm_rate=0.2, random_state=0,
                device="cpu").fit(pool[:80])
    new = pool[80:]
    p = det.pvalues(new)
    n_cal = len(det.calibration_scores_)
    assert n_cal == 40
    assert p.min() >= 1 / (n_cal + 1) and p.max() <= 1.0
    np.testing.assert_array_equal(p <= 0.2, det.predict(new) == -1)
    cal_p = det.pvalues(np.zeros((1, 6), np.float32))
    assert cal_p[0] > 0.5  # the mode of the distribution looks normal


def test_split_fits_on_the_rest_only():
    X = _pool(n=40)
    det = PaDiM(calibration=0.25, random_state=3, device="cpu").fit(X)
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 10
    perm = np.random.RandomState(3).permutation(40)
    ref = PaDiM(random_state=3, device="cpu", calibration="in_sample").fit(
        X[np.sort(perm[10:])])
    np.testing.assert_allclose(det.means_, ref.means_)
    np.testing.assert_allclose(det.score_samples(X), ref.score_samples(X), rtol=1e-6)


def test_cv_keeps_the_model_fitted_on_all_samples():
    X = _pool(n=40)
    cv = PaDiM(random_state=0, device="cpu").fit(X)
    ins = PaDiM(random_state=0, device="cpu", calibration="in_sample").fit(X)
    np.testing.assert_allclose(cv.score_samples(X), ins.score_samples(X))
    assert cv.offset_ < ins.offset_  # the cross-fitted least normal score is lower


def test_threshold_errors_and_warnings():
    X = _pool(n=20)
    with pytest.raises(ValueError, match="give one of them"):
        PaDiM(contamination=0.1, false_alarm_rate=0.1, device="cpu").fit(X)
    with pytest.raises(ValueError, match="holds out 0 of the 20"):
        PaDiM(calibration=0.01, device="cpu").fit(X)
    with pytest.raises(ValueError, match="holds out 20 of the 20"):
        PaDiM(calibration=0.99, device="cpu").fit(X)
    with pytest.raises(ValueError, match="calibration"):
        PaDiM(calibration="loo", device="cpu").fit(X)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        PaDiM(false_alarm_rate=1.0, device="cpu").fit(X)
    with pytest.warns(UserWarning, match="needs at least 99 calibration samples; got 20"):
        det = PaDiM(false_alarm_rate=0.01, device="cpu").fit(X)
    assert det.offset_ == -np.inf and np.all(det.predict(X * 100) == 1)
    with pytest.raises(ValueError, match=r"false_alarm_rate: expected a float in \(0, 1\)"):
        det.set_threshold(X, false_alarm_rate=0.0)


def test_tiny_sets_fall_back_to_in_sample():
    X = _pool(n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = PaDiM(n_features=None, device="cpu").fit(X)
    assert det.calibration_ == "in_sample"
    det = PaDiM(n_features=None, calibration="holdout", device="cpu").fit(X)
    assert det.calibration_ == "in_sample"


def test_set_threshold_is_conformal():
    pool = _pool(n=300)
    det = PaDiM(random_state=0, device="cpu").fit(pool[:50])
    det.set_threshold(pool[50:69], false_alarm_rate=0.1)  # n = 19, k = 18
    a = np.sort(-det.score_samples(pool[50:69]))
    assert -det.offset_ == pytest.approx(a[17])
    assert len(det.calibration_scores_) == 19


def test_patchcluster_honours_false_alarm_rate():
    from skad.detectors import PatchCluster

    X = _pool(n=60)
    robust = PatchCluster(device="cpu").fit(X)
    target = PatchCluster(device="cpu", false_alarm_rate=0.2).fit(X)
    assert target.offset_ != robust.offset_
    # blind: the calibration scores are the fitted set's own, so fit_predict flags
    # at most the target fraction
    assert np.mean(target.predict(X) == -1) <= 0.2


def _patch_pool(n=800, c=4, hw=3, seed=0):
    """Patch tensors (n, c, hw, hw): each image's patches iid heavy-tailed vectors."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df=5, size=(n, hw, hw, c)) @ rng.normal(size=(c, c))
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def _subsampling_lof(**params):
    return PatchOutlierDetector(LocalOutlierFactor(n_neighbors=10, novelty=True),
                                max_patches=100, device="cpu", **params)


def test_subsampling_detector_auto_holds_out_a_fifth():
    """A fit that draws a random patch sample calibrates on held-out images: each draw
    gives the scores a scale of its own, so cross-fitted scores would come from other
    draws than the model kept (benchmarks/results/lof_calibration.md)."""
    X = _patch_pool(n=40)  # 360 patches > max_patches=100
    det = _subsampling_lof(random_state=3).fit(X)
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 8
    perm = np.random.RandomState(3).permutation(40)
    cal = X[np.sort(perm[:8])]
    np.testing.assert_allclose(det.calibration_scores_, det.score_samples(cal))
    # the model kept drew from the other 32 images only
    ref = _subsampling_lof(random_state=3, calibration="in_sample").fit(X[np.sort(perm[8:])])
    np.testing.assert_allclose(det.score_samples(X), ref.score_samples(X))
    # no draw (every patch fitted): cross-fitting, as for the other detectors
    assert _subsampling_lof(random_state=3).set_params(max_patches=None).fit(X) \
        .calibration_ == "cv"
    assert _subsampling_lof().fit(X[:3]).calibration_ == "in_sample"  # too few to split
    blind = PatchOutlierDetector(LocalOutlierFactor(n_neighbors=5), max_patches=None,
                                 device="cpu").fit(X[:10])
    assert blind.calibration_ == "in_sample"


def _patch_false_alarm_rates(det, n_fit=95, n_splits=N_SPLITS, seed=0):
    """As :func:`_false_alarm_rates`, on patch tensors (mean rate, its standard error)."""
    pool = _patch_pool(seed=seed)
    rng = np.random.default_rng(seed + 1)
    rates = np.empty(n_splits)
    for r in range(n_splits):
        perm = rng.permutation(len(pool))
        est = clone(det).set_params(random_state=r).fit(pool[perm[:n_fit]])
        rates[r] = np.mean(est.predict(pool[perm[n_fit:n_fit + N_NEW]]) == -1)
    return rates.mean(), rates.std(ddof=1) / math.sqrt(n_splits)


def test_subsampling_detector_false_alarm_rate_holds_over_random_splits():
    """The guarantee of the fixed path, by simulation: 95 images fitted, the auto split
    holds out 19, so the rate lies in [alpha - 1/20, alpha] up to sampling error."""
    det = _subsampling_lof(false_alarm_rate=ALPHA)
    assert det.fit(_patch_pool(n=95)).calibration_ == "split"
    assert len(det.calibration_scores_) == 19
    mean, se = _patch_false_alarm_rates(det)
    assert ALPHA - 1 / 20 - 3 * se <= mean <= ALPHA + 3 * se, (mean, se)
