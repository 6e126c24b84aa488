"""OneClassSplit invariants, and the one-class protocol end to end with scikit-learn."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import FunctionTransformer

from skad import make_pipeline
from skad.detectors._base import BaseDetector, PatchDetectorMixin
from skad.metrics import image_auroc_scorer, pixel_auroc_scorer, pro_scorer
from skad.model_selection import OneClassSplit


def _labels(n_normal=10, n_anom=4):
    return np.r_[np.zeros(n_normal, int), np.ones(n_anom, int)][
        np.random.default_rng(0).permutation(n_normal + n_anom)
    ]


@pytest.mark.parametrize("as_masks", [False, True])
@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_kfold_invariants(as_masks, n_splits):
    labels = _labels(11, 4)
    y = labels
    if as_masks:
        y = np.zeros((labels.size, 4, 4), np.uint8)
        y[labels == 1, 1, 1] = 255
    X = np.zeros((labels.size, 3))
    splits = list(OneClassSplit(n_splits, random_state=0).split(X, y))
    assert len(splits) == n_splits == OneClassSplit(n_splits).get_n_splits()
    tested = np.zeros(labels.size, int)
    for train, test in splits:
        assert np.all(labels[train] == 0)  # never an anomaly in a train fold
        assert not set(train) & set(test)
        assert set(np.flatnonzero(labels == 1)) <= set(test)  # all anomalies tested
        assert np.any(labels[test] == 0)
        tested[test] += 1
    normal = labels == 0
    assert np.all(tested[normal] == 1)  # every normal tested exactly once
    assert np.all(tested[~normal] == n_splits)


def test_split_anomalies_each_sample_tested_once():
    labels = _labels(9, 7)
    tested = np.zeros(labels.size, int)
    for train, test in OneClassSplit(3, anomalies="split", random_state=1).split(labels, labels):
        assert np.all(labels[train] == 0)
        assert labels[test].sum() >= 2
        tested[test] += 1
    assert np.all(tested == 1)


def test_random_splits_with_test_size():
    labels = _labels(10, 3)
    for test_size, n_test_normal in [(0.3, 3), (4, 4)]:
        cv = OneClassSplit(6, test_size=test_size, random_state=0)
        splits = list(cv.split(labels, labels))
        assert len(splits) == 6
        for train, test in splits:
            assert np.all(labels[train] == 0)
            assert (labels[test] == 0).sum() == n_test_normal
            assert len(train) == 10 - n_test_normal
            assert labels[test].sum() == 3


def test_deterministic_and_shuffle():
    labels = _labels(12, 2)
    a = [t.tolist() for _, t in OneClassSplit(3, random_state=7).split(labels, labels)]
    b = [t.tolist() for _, t in OneClassSplit(3, random_state=7).split(labels, labels)]
    assert a == b
    unshuffled = list(OneClassSplit(3, shuffle=False).split(labels, labels))
    normal = np.flatnonzero(labels == 0)
    assert unshuffled[0][1][:4].tolist() == normal[:4].tolist()


def test_split_errors():
    labels = _labels(4, 2)
    with pytest.raises(ValueError, match="needs y"):
        list(OneClassSplit(2).split(labels))
    with pytest.raises(ValueError, match="no normal sample"):
        list(OneClassSplit(2).split(np.ones(3), np.ones(3, int)))
    with pytest.raises(ValueError, match="greater than the number of normal samples"):
        list(OneClassSplit(5).split(labels, labels))
    with pytest.raises(ValueError, match="n_splits"):
        list(OneClassSplit(1).split(labels, labels))
    with pytest.raises(ValueError, match="test_size"):
        list(OneClassSplit(2, test_size=1.5).split(labels, labels))
    with pytest.raises(ValueError, match="holds out"):
        list(OneClassSplit(2, test_size=4).split(labels, labels))
    with pytest.raises(ValueError, match="anomalies"):
        list(OneClassSplit(2, anomalies="some").split(labels, labels))
    with pytest.raises(ValueError, match="expected 6 labels"):
        list(OneClassSplit(2).split(labels, labels[:-1]))


# -- the protocol with scikit-learn's model selection ----------------------------------
def _data(n_normal=16, n_anom=8, size=16, seed=0):
    """Noisy grey images; anomalies carry a bright square (their mask)."""
    rng = np.random.default_rng(seed)
    n = n_normal + n_anom
    X = (100 + 20 * rng.standard_normal((n, size, size, 3))).clip(0, 255).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n_normal, n):
        r, c = rng.integers(0, size - 5, 2)
        masks[i, r : r + 5, c : c + 5] = 1
    X[masks == 1] = 250
    order = rng.permutation(n)
    return X[order], masks[order]


def _pool(X):
    """(n, H, W, 3) images -> 4x4 average-pooled grey features (n, 16)."""
    X = np.asarray(X, float).mean(axis=-1)
    n, h, w = X.shape
    return X.reshape(n, 4, h // 4, 4, w // 4).mean(axis=(2, 4)).reshape(n, -1)


class Oracle(OutlierMixin, BaseEstimator):
    """Knows the defect signature (a saturated pixel); ``sign=-1`` reverses it."""

    def __init__(self, sign=1):
        self.sign = sign

    def fit(self, X, y=None):
        self.is_fitted_ = True
        return self

    def score_samples(self, X):
        return -self.sign * (np.asarray(X).reshape(len(X), -1).max(axis=1) >= 250)


class MeanPatchDistance(PatchDetectorMixin, BaseDetector):
    """Tiny skad detector: distance of each position to the mean training patch map."""

    _requires_same_patch_shape = True

    def __init__(self, *, contamination="auto", sigma=0.0):
        self.contamination = contamination
        self.sigma = sigma

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)

    def _score(self, X):
        maps = np.sqrt(((X - self.mean_) ** 2).sum(axis=1))
        return maps.reshape(len(X), -1).max(axis=1), maps


def _to_patches(X):
    """(n, H, W, 3) -> (n, 3, H/2, W/2) float patch tensor (2x2 average pooling)."""
    X = np.asarray(X, np.float32) / 255.0
    n, h, w, c = X.shape
    return X.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).transpose(0, 3, 1, 2)


def test_cross_val_score_sign_with_lof_pipeline():
    X, masks = _data()
    labels = masks.reshape(len(X), -1).max(axis=1)
    cv = OneClassSplit(n_splits=4, random_state=0)
    lof = make_pipeline(FunctionTransformer(_pool), LocalOutlierFactor(novelty=True, n_neighbors=5))
    scores = cross_val_score(lof, X, labels, cv=cv, scoring=image_auroc_scorer)
    assert scores.shape == (4,)
    assert scores.mean() > 0.8
    perfect = cross_val_score(Oracle(), X, masks, cv=cv, scoring=image_auroc_scorer)
    reversed_ = cross_val_score(Oracle(sign=-1), X, masks, cv=cv, scoring=image_auroc_scorer)
    np.testing.assert_array_equal(perfect, 1.0)
    np.testing.assert_array_equal(reversed_, 0.0)


def test_grid_search_with_lof_and_skad_scorers():
    X, masks = _data()
    labels = masks.reshape(len(X), -1).max(axis=1)
    pipe = make_pipeline(FunctionTransformer(_pool), LocalOutlierFactor(novelty=True))
    search = GridSearchCV(
        pipe,
        {"localoutlierfactor__n_neighbors": [3, 6]},
        scoring=image_auroc_scorer,
        cv=OneClassSplit(n_splits=3, random_state=0),
    )
    search.fit(X, labels)
    assert search.best_score_ > 0.8
    # refit on all of X drops the anomalies (AnomalyPipeline normal_only=True)
    assert search.best_estimator_[-1].n_samples_fit_ == int((labels == 0).sum())
    # a pixel scorer on a detector without anomaly_map fails clearly
    bad = GridSearchCV(pipe, {"localoutlierfactor__n_neighbors": [3]},
                       scoring={"pixel": pixel_auroc_scorer}, refit=False,
                       cv=OneClassSplit(n_splits=2, random_state=0), error_score="raise")
    with pytest.raises(TypeError, match="no anomaly_map"):
        bad.fit(X, masks)


def test_grid_search_pixel_scorers_with_skad_detector():
    X, masks = _data()
    pipe = make_pipeline(FunctionTransformer(_to_patches), MeanPatchDistance())
    scoring = {"image": image_auroc_scorer, "pixel": pixel_auroc_scorer, "pro": pro_scorer}
    search = GridSearchCV(pipe, {"meanpatchdistance__sigma": [0.0, 1.0]}, scoring=scoring,
                          refit="pixel", cv=OneClassSplit(n_splits=3, random_state=0))
    search.fit(X, masks)
    res = search.cv_results_
    assert np.all(res["mean_test_image"] > 0.9)
    assert np.all(res["mean_test_pixel"] > 0.9)
    assert np.all(res["mean_test_pro"] > 0.7)
    maps = search.best_estimator_.anomaly_map(X)
    assert maps.shape == masks.shape
    out = cross_validate(pipe, X, masks, cv=OneClassSplit(2, random_state=0), scoring=scoring)
    assert set(out) >= {"test_image", "test_pixel", "test_pro"}
    assert np.all(out["test_pixel"] > 0.9)
