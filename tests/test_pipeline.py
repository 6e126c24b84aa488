"""AnomalyPipeline and the detector base contract (with a tiny detector)."""

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import FunctionTransformer

from skad import AnomalyPipeline, make_pipeline
from skad.detectors import BaseDetector, PatchDetectorMixin


class MeanDistance(PatchDetectorMixin, BaseDetector):
    """Per-position squared distance to the mean training patch (test helper)."""

    def __init__(self, *, contamination="auto", sigma=0.0):
        self.contamination = contamination
        self.sigma = sigma

    def _fit(self, X):
        self.mean_ = X.mean(axis=0)
        self.n_fit_ = len(X)

    def _score(self, X):
        maps = ((X - self.mean_) ** 2).sum(axis=1)
        return maps.reshape(len(X), -1).max(axis=1), maps


class Downsample(TransformerMixin, BaseEstimator):
    """Images (n, H, W, 3) uint8 -> patch tensors (n, 3, H/4, W/4) (test helper)."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float32) / 255.0
        n, H, W, C = X.shape
        X = X.reshape(n, H // 4, 4, W // 4, 4, C).mean(axis=(2, 4))
        return np.moveaxis(X, -1, 1)


def _images(n_normal=12, n_anom=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(100, 140, size=(n_normal + n_anom, size, size, 3)).astype(np.uint8)
    masks = np.zeros((len(X), size, size), np.uint8)
    for i in range(n_normal, len(X)):
        X[i, 8:16, 8:16] = 255
        masks[i, 8:16, 8:16] = 1
    return X, masks


def test_pipeline_drops_anomalies_and_maps_at_input_size():
    X, masks = _images()
    pipe = make_pipeline(Downsample(), MeanDistance())
    assert isinstance(pipe, AnomalyPipeline)
    pipe.fit(X, masks)
    assert pipe[-1].n_fit_ == 12
    maps = pipe.anomaly_map(X)
    assert maps.shape == (16, 32, 32)
    scores, maps2 = pipe.score_and_map(X)
    np.testing.assert_allclose(maps, maps2)
    np.testing.assert_allclose(scores, pipe.anomaly_score(X))
    np.testing.assert_allclose(scores, -pipe.score_samples(X))
    # the defect region is the hottest part of every anomalous map
    assert all(m[8:16, 8:16].mean() > m.mean() for m in maps[12:])
    assert (pipe.predict(X[12:]) == -1).all()
    assert pipe.anomaly_map(X, output_size=(8, 10)).shape == (16, 8, 10)
    # labels work as well as masks; normal_only=False keeps everything
    assert make_pipeline(Downsample(), MeanDistance()).fit(X, (masks.max((1, 2)) > 0).astype(int))[-1].n_fit_ == 12
    assert make_pipeline(Downsample(), MeanDistance(), normal_only=False).fit(X, masks)[-1].n_fit_ == 16


def test_pipeline_errors_and_params():
    X, masks = _images()
    pipe = make_pipeline(Downsample(), MeanDistance())
    with pytest.raises(ValueError, match="every sample is labelled anomalous"):
        pipe.fit(X[12:], masks[12:])
    with pytest.raises(ValueError, match="expected 16 labels"):
        pipe.fit(X, masks[:3])
    pipe.set_params(meandistance__contamination=0.1)
    assert clone(pipe).get_params()["meandistance__contamination"] == 0.1
    with pytest.raises(ValueError, match="contamination"):
        make_pipeline(Downsample(), MeanDistance(contamination=2.0)).fit(X)
    # plain sklearn outlier detectors have no anomaly_map: the attribute is absent
    lof = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)),
                        LocalOutlierFactor(novelty=True, n_neighbors=3))
    lof.fit(X, masks)
    assert not hasattr(lof, "anomaly_map")
    assert lof.anomaly_score(X).shape == (16,)


def test_base_offsets_thresholds_and_pickle():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    det = MeanDistance(contamination=0.1).fit(X)
    # offset_ from cross-fitted scores (calibration "auto" = "cv" for a detector that
    # does not say otherwise): close to, not exactly, a tenth of the training set
    assert det.calibration_ == "cv" and len(det.calibration_scores_) == 200
    assert abs((det.predict(X) == -1).mean() - 0.1) <= 0.02
    np.testing.assert_allclose(det.decision_function(X), det.score_samples(X) - det.offset_)
    auto = MeanDistance().fit(X)
    assert (auto.predict(X) == 1).all()  # "auto": no false alarm on the training set
    auto.set_threshold(rng.normal(size=(100, 4)), false_alarm_rate=0.2)
    assert 0.1 < (auto.predict(rng.normal(size=(2000, 4))) == -1).mean() < 0.3
    with pytest.raises(ValueError, match="false_alarm_rate"):
        auto.set_threshold(X, false_alarm_rate=1.5)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.score_samples(X), det.score_samples(X))


def test_base_input_errors():
    det = MeanDistance().fit(np.random.default_rng(0).normal(size=(5, 3, 4, 4)))
    with pytest.raises(ValueError, match="put a PatchFeatureExtractor"):
        det.score_samples(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="expecting 3 features"):
        det.score_samples(np.zeros((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="output_size"):
        det.anomaly_map(np.zeros((2, 3, 4, 4)), output_size=(0, 3))
    assert det.anomaly_map(np.zeros((2, 3, 4, 4)), output_size=16).shape == (2, 16, 16)
