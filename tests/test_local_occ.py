"""LocalOCC (Lv et al.'s local one-class classification with generated defects)."""

import pickle

import numpy as np
import pytest
import torch

from skad.detectors import LocalOCC
from skad.detectors.local_occ import local_occ_loss
from skad.features import PatchFeatureExtractor
from skad.synthesis import DefectGenerator


def _images(n, seed, size=64):
    """A fixed layout (dark disc on a ramp) with mild noise: aligned normal images."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([0.3 + 0.4 * xx, 0.3 + 0.4 * yy, 0.5 + 0 * xx], axis=-1)
    base[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.04] = 0.15
    X = base[None] + rng.normal(0, 0.02, (n, size, size, 3))
    return (np.clip(X, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data():
    X = _images(12, 0)
    test = _images(4, 1)
    test[2:, 8:20, 40:52] = [250, 40, 40]  # red patches on two test images
    return X, test


def _det(**params):
    kw = {"epochs": 2, "batch_size": 6, "random_state": 0, "device": "cpu",
          "extractor": PatchFeatureExtractor(input_size=64, device="cpu")}
    kw.update(params)
    return LocalOCC(**kw)


@pytest.fixture(scope="module")
def fitted(data):
    return _det().fit(data[0])


def test_shapes(data, fitted):
    X, test = data
    maps = fitted.anomaly_map(test)
    assert maps.shape == (4, 8, 8) and maps.dtype == np.float32  # 64 px, stride 4, pooled 2
    assert fitted.anomaly_map(test, output_size=64).shape == (4, 64, 64)
    assert fitted.score_samples(test).shape == (4,)
    assert fitted.predict(test).shape == (4,)
    assert fitted.center_.shape == (128, 8, 8)
    assert fitted.projection_.shape == (128, fitted.extractor_.n_channels_)
    assert fitted.extractor_.layers_ == ("blocks.1", "blocks.2", "blocks.4")
    assert len(fitted.loss_history_) == 2 and fitted.n_iter_ == 4


def test_defects_score_above_normals(data, fitted):
    scores = fitted.anomaly_score(data[1])
    assert scores[2:].min() > scores[:2].max()
    maps = fitted.anomaly_map(data[1])
    # the defect's positions (rows 2-4, columns 10-12 at stride 8) are the hottest
    hot = np.unravel_index(maps[2].argmax(), maps[2].shape)
    assert 0 <= hot[0] <= 3 and 4 <= hot[1] <= 7


def test_reproducible(data, fitted):
    other = _det().fit(data[0])
    assert other.loss_history_ == fitted.loss_history_
    np.testing.assert_array_equal(other.anomaly_map(data[1]), fitted.anomaly_map(data[1]))


def test_pickle_round_trip(data, fitted):
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.anomaly_map(data[1]), fitted.anomaly_map(data[1]))
    np.testing.assert_array_equal(clone.score_samples(data[1]), fitted.score_samples(data[1]))


def test_extractor_not_modified(data):
    ext = PatchFeatureExtractor(input_size=64, device="cpu")
    _det(extractor=ext, max_iter=1).fit(data[0])
    assert not hasattr(ext, "module_") and ext.layers is None


@pytest.mark.parametrize("params", [
    {"target": "global"},
    {"use_dgm": False},
    {"augment": True},
    {"residual": False},
    {"n_components": None, "downsample": 1},
    {"dgm": DefectGenerator(operations=("darken",)), "dgm_ratio": 1.0},
])
def test_switches(data, params):
    det = _det(max_iter=2, **params).fit(data[0])
    maps = det.anomaly_map(data[1])
    assert np.isfinite(maps).all() and (maps >= -1e-6).all()
    if params.get("target") == "global":
        assert det.center_.shape[1:] == (1, 1)
    if params.get("n_components", 128) is None:
        assert maps.shape == (4, 16, 16)
        np.testing.assert_array_equal(det.projection_, np.eye(det.projection_.shape[0]))


def test_training_lowers_the_loss(data):
    det = _det(epochs=4, use_dgm=False).fit(data[0])
    assert det.loss_history_[-1] < det.loss_history_[0]


def test_loss_matches_equation_5():
    f_c = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    f_m = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # cos 1 and cos 0
    mask = torch.tensor([[[0.0, 1.0]]])
    # normal position: 0.5 * 0; defect position: dist 1 -> max(0, 0.1 - 0.5) = 0
    assert float(local_occ_loss(f_m, f_c, mask)) == pytest.approx(0.0)
    # both normal: (0 + 0.5) / 2
    assert float(local_occ_loss(f_m, f_c)) == pytest.approx(0.25)
    # defect where the features agree, normal where they do not: (0.1 + 0.5) / 2
    assert float(local_occ_loss(f_m, f_c, torch.tensor([[[1.0, 0.0]]]))) == pytest.approx(0.3)


@pytest.mark.parametrize("params, match", [
    ({"target": "vector"}, "target"),
    ({"margin": 0}, "margin"),
    ({"dgm_ratio": 1.5}, "dgm_ratio"),
    ({"n_components": 0}, "n_components"),
    ({"downsample": 0}, "downsample"),
    ({"dgm": "dgm"}, "dgm"),
])
def test_parameter_errors(data, params, match):
    with pytest.raises(ValueError, match=match):
        _det(max_iter=1, **params).fit(data[0])


def test_too_many_components_are_clipped(data):
    # the clip-or-raise rule (skad.detectors.clip_to_data): more than the mixed channels
    with pytest.warns(UserWarning, match="n_components=10000 exceeds the"):
        det = _det(max_iter=1, n_components=10_000).fit(data[0])
    assert det.n_components_ == det.projection_.shape[0] == det.projection_.shape[1]


def test_input_errors(data, fitted):
    with pytest.raises(ValueError, match="patch tensors"):
        fitted.score_samples(np.zeros((2, 152, 8, 8), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        _det().fit(data[0][:1])
    with pytest.raises(ValueError, match="X"):
        fitted.anomaly_map(np.full((2, 64, 64, 3), np.nan, np.float32))


def test_registry_builds_a_pipeline(data):
    from skad import registry

    ext = PatchFeatureExtractor(input_size=64, device="cpu")
    pipe = registry.make_model("local_occ", ext, random_state=0,
                               params={"max_iter": 1, "batch_size": 6, "device": "cpu"})
    det = pipe.steps[-1][1]
    assert isinstance(det, LocalOCC) and det.epochs == 2  # the registry's fast default
    pipe.fit(data[0])
    assert pipe.anomaly_map(data[1]).shape == (4, 64, 64)
    assert det.extractor_.layers_ == ("blocks.1", "blocks.2", "blocks.4")


def test_calibration_split_and_false_alarm_rate(data):
    det = _det(epochs=1, calibration=0.25, false_alarm_rate=0.3).fit(data[0])
    # three of the 12 images held out of training, scored by the network kept
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 3
    assert np.isfinite(det.offset_)
    p = det.pvalues(data[1])
    assert p.shape == (4,) and ((p > 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="calibration"):
        _det(calibration=1.5).fit(data[0])
