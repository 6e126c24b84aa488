"""SMCC: a trained detector on images (self-update of the extractor, one-batch memory)."""

import io

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skad import make_pipeline
from skad.datasets import make_synthetic
from skad.detectors import SMCC
from skad.detectors.smcc import SMCC_DEFAULT_LAYERS
from skad.features import PatchFeatureExtractor
from skad.metrics import image_auroc_scorer
from skad.model_selection import OneClassSplit


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train=10, n_test=8, image_size=64, random_state=0)


def _smcc(**kw):
    params = dict(epochs=2, batch_size=4, random_state=0, device="cpu")
    params.update(kw)
    # the statistics and layers of SMCC's default extractor (its benchmark figures use them)
    return SMCC(PatchFeatureExtractor(input_size=64, device="cpu", normalize="imagenet",
                                      layers=SMCC_DEFAULT_LAYERS), **params)


def test_default_extractor_is_pinned():
    # SMCC's figures were measured with ImageNet statistics on Lite0 blocks 2 + 4: its
    # default extractor keeps them whatever the extractor's own defaults become
    ext = SMCC()._make_extractor()
    assert ext.get_params()["layers"] == ("blocks.2", "blocks.4") == SMCC_DEFAULT_LAYERS
    assert ext.get_params()["normalize"] == "imagenet"
    given = PatchFeatureExtractor(input_size=64)
    assert SMCC(given)._make_extractor().get_params() == given.get_params()


@pytest.fixture(scope="module")
def fitted(data):
    return _smcc().fit(data.train_images)


def test_fit_score_shapes(fitted, data):
    det = fitted
    n = len(data.test_images)
    assert det.score_samples(data.test_images).shape == (n,)
    assert det.predict(data.test_images).shape == (n,)
    assert det.anomaly_map(data.test_images).shape == (n, 8, 8)
    assert det.anomaly_map(data.test_images, output_size=64).shape == (n, 64, 64)
    assert len(det.loss_history_) == 2 and det.n_iter_ == 6
    assert det.memory_.shape == (4 * 64, 152)
    assert det.n_centers_ == 10 + int(np.ceil(0.1 * 10 * 64))
    assert det.device_ == torch.device("cpu")
    # offset from training scores: no training image is flagged by "auto"
    assert (det.predict(data.train_images) == 1).mean() >= 0.8


def test_self_update_changes_the_network_not_the_users_extractor(data):
    ext = PatchFeatureExtractor(input_size=64, device="cpu")
    det = SMCC(ext, epochs=1, batch_size=4, random_state=0, device="cpu").fit(data.train_images)
    assert not hasattr(ext, "module_")  # the passed extractor is never fitted or trained
    frozen = _smcc(self_update=False).fit(data.train_images)
    trained = dict(det.extractor_.module_.named_parameters())
    pretrained = dict(frozen.extractor_.module_.named_parameters())
    changed = [n for n in trained if not torch.equal(trained[n], pretrained[n])]
    assert changed
    assert frozen.loss_history_ == [] and frozen.n_iter_ == 0


def test_trainable_layers_freezes_the_rest(data):
    det = _smcc(epochs=1, trainable_layers=("body.blocks.4",)).fit(data.train_images)
    frozen = _smcc(self_update=False).fit(data.train_images)
    trained = dict(det.extractor_.module_.named_parameters())
    pretrained = dict(frozen.extractor_.module_.named_parameters())
    for name, p in trained.items():
        same = torch.equal(p, pretrained[name])
        assert same != name.startswith("body.blocks.4"), name
    with pytest.raises(ValueError, match="trainable_layers"):
        _smcc(trainable_layers=("nope",)).fit(data.train_images)


def test_reproducible(data, fitted):
    again = _smcc().fit(data.train_images)
    assert again.loss_history_ == fitted.loss_history_
    np.testing.assert_array_equal(again.memory_, fitted.memory_)
    np.testing.assert_array_equal(again.score_samples(data.test_images),
                                  fitted.score_samples(data.test_images))


def test_detects_synthetic_defects():
    # compact defects (spots, missing pieces) that 8 x 8 feature maps can resolve; the
    # default data's thin scratches cover 0.3 % of the pixels and rank at chance here.
    # Measured: image AUROC 0.81, pixel AUROC 0.91 (0.5 = chance)
    from skad.metrics import pixel_auroc

    d = make_synthetic(n_train=10, n_test=8, image_size=64, defect_types=("spot", "missing"),
                       random_state=0)
    det = _smcc().fit(d.train_images)
    maps = det.anomaly_map(d.test_images, output_size=(64, 64))
    assert pixel_auroc(d.test_masks, maps) > 0.8
    scores = det.anomaly_score(d.test_images)
    labels = d.test_labels.astype(bool)
    assert scores[labels].mean() > scores[~labels].mean()


@pytest.mark.parametrize("kw", [
    {"losses": ("center",)}, {"losses": ("offset",)}, {"center_set": "means"},
    {"nn_method": "cells", "memory_size": 2}, {"max_iter": 1},
])
def test_switches_run(data, kw):
    det = _smcc(epochs=1, **kw).fit(data.train_images)
    assert np.isfinite(det.score_samples(data.test_images)).all()
    if "max_iter" in kw:
        assert det.n_iter_ == 1
    if kw.get("center_set") == "means":
        assert det.n_centers_ == 10


def test_pickle_roundtrip_identical_scores(fitted, data):
    buf = io.BytesIO()
    joblib.dump(fitted, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    np.testing.assert_array_equal(loaded.score_samples(data.test_images),
                                  fitted.score_samples(data.test_images))
    np.testing.assert_array_equal(loaded.anomaly_map(data.test_images),
                                  fitted.anomaly_map(data.test_images))


def test_pickles_with_the_old_memory_attribute_name_load(fitted, data):
    state = dict(fitted.__getstate__())
    state["memory_image_indices_"] = state.pop("memory_indices_")  # name before 0.1
    old = SMCC.__new__(SMCC)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.memory_indices_, fitted.memory_indices_)
    np.testing.assert_array_equal(old.score_samples(data.test_images),
                                  fitted.score_samples(data.test_images))


def test_nested_params_and_grid_search(data):
    pipe = make_pipeline(_smcc(epochs=1))
    params = pipe.get_params()
    assert params["smcc__extractor__backbone"] == "efficientnet_lite0"
    X = np.concatenate([data.train_images, data.test_images])
    y = np.r_[np.zeros(len(data.train_images)), data.test_labels]
    search = GridSearchCV(pipe, {"smcc__n_neighbors": [1, 3]}, scoring=image_auroc_scorer,
                          cv=OneClassSplit(n_splits=2, random_state=0))
    search.fit(X, y)
    assert search.best_params_["smcc__n_neighbors"] in (1, 3)
    assert clone(pipe).get_params()["smcc__extractor__input_size"] == 64


def test_paths_input(tmp_path, data):
    from PIL import Image

    paths = []
    for i, im in enumerate(data.train_images[:6]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(im).save(p)
        paths.append(str(p))
    det = _smcc(epochs=1, batch_size=3).fit(paths)
    arr = _smcc(epochs=1, batch_size=3).fit(data.train_images[:6])
    np.testing.assert_allclose(det.score_samples(paths), arr.score_samples(data.train_images[:6]),
                               rtol=1e-5)


def test_input_validation(fitted, data):
    with pytest.raises(ValueError, match="patch tensors"):
        fitted.score_samples(np.zeros((2, 152, 8, 8), np.float32))
    bad = data.test_images[:2].astype(np.float32) / 255
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.score_samples(bad)
    with pytest.raises(ValueError, match="at least 2 training images"):
        _smcc().fit(data.train_images[:1])
    with pytest.raises(ValueError, match="losses"):
        _smcc(losses=("center", "bogus")).fit(data.train_images)
    with pytest.raises(ValueError, match="losses"):
        _smcc(losses=()).fit(data.train_images)
    with pytest.raises(ValueError, match="n_neighbors"):
        _smcc(n_neighbors=0, self_update=False, memory_size=1).fit(data.train_images)
    # too many for the memory: clipped (skad.detectors.clip_to_data), value in n_neighbors_
    with pytest.warns(UserWarning, match="n_neighbors=10000 exceeds the"):
        det = _smcc(n_neighbors=10_000, self_update=False, memory_size=1).fit(data.train_images)
    assert det.n_neighbors_ == len(det.memory_)  # one memory image: nothing left out
    with pytest.raises(ValueError, match="device"):
        _smcc(device="tpu").fit(data.train_images)


def test_registry_gives_smcc_the_runs_extractor():
    from skad import registry

    ext = PatchFeatureExtractor(input_size=96, pooling=1)
    pipe = registry.make_model("smcc", ext, random_state=0)
    det = pipe.steps[-1][1]
    assert isinstance(det, SMCC) and len(pipe.steps) == 1
    assert det.extractor.input_size == 96 and det.extractor.pooling == 1
    assert det.extractor is not ext and det.random_state == 0
    own = PatchFeatureExtractor(input_size=32)
    det = registry.make_model("smcc", ext, params={"extractor": own}).steps[-1][1]
    assert det.extractor is own


def test_calibration_split_and_false_alarm_rate(data):
    det = _smcc(epochs=1, calibration=0.3, false_alarm_rate=0.3).fit(data.train_images)
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 3
    assert "_train_feats" not in det.__dict__
    assert np.isfinite(det.offset_)
    p = det.pvalues(data.test_images)
    assert p.shape == (len(data.test_images),) and ((p > 0) & (p <= 1)).all()
