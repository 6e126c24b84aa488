"""MemSeg: API, reproducibility, validation, pickling, module switches, learning."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from skad.detectors import MemSeg
from skad.detectors.memseg import MemSegNetwork, best_difference, focal_loss
from skad.features import PatchFeatureExtractor
from skad.synthesis import AnomalySynthesizer

SIZE = 64


def _images(n=10, seed=0):
    rng = np.random.default_rng(seed)
    base = np.full((SIZE, SIZE, 3), 120, np.float64)
    base[16:48, 16:48] = 70  # a dark "object" on a light background
    noise = rng.normal(0, 4, (n, SIZE, SIZE, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _det(**params):
    base = dict(n_memory=2, max_iter=3, batch_size=4, top_k=20, random_state=0,
                device="cpu")
    # ImageNet statistics, as MemSeg's default extractor
    ext = PatchFeatureExtractor(input_size=SIZE, normalize="imagenet")
    return MemSeg(ext, **{**base, **params})


@pytest.fixture(scope="module")
def fitted():
    X = _images()
    return _det().fit(X), X


def test_shapes_and_api(fitted):
    det, X = fitted
    maps = det.anomaly_map(X[:3])
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.all((maps >= 0) & (maps <= 1))
    assert det.anomaly_map(X[:3], output_size=32).shape == (3, 32, 32)
    scores = det.anomaly_score(X[:3])
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, -det.score_samples(X[:3]))
    assert set(np.unique(det.predict(X))) <= {-1, 1}
    # top_k mean of the map is the image score
    top = np.sort(maps.reshape(3, -1), axis=1)[:, -det.top_k:].mean(axis=1)
    np.testing.assert_allclose(scores, top, rtol=1e-5)
    assert det.n_iter_ == 3 and len(det.loss_history_) >= 1
    assert [m.shape[0] for m in det.memory_] == [2, 2, 2]
    assert len(det.memory_indices_) == 2
    # the trainable encoder part is after the memory scales (Lite0: blocks 5-6)
    assert det.trainable_parameters_
    assert all(n.startswith(("blocks.5", "blocks.6")) for n in det.trainable_parameters_)
    # contamination="auto": no training image flagged
    assert (det.decision_function(X) >= -1e-6).all()


def test_reproducible():
    X = _images()
    a, b = _det().fit(X), _det().fit(X)
    assert a.loss_history_ == b.loss_history_
    np.testing.assert_array_equal(a.anomaly_map(X[:2]), b.anomaly_map(X[:2]))
    for (ka, va), (kb, vb) in zip(a.network_.state_dict().items(),
                                  b.network_.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = _det(random_state=1).fit(X)
    assert c.loss_history_ != a.loss_history_


def test_pickle_round_trip(fitted):
    det, X = fitted
    det2 = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(det.anomaly_map(X[:3]), det2.anomaly_map(X[:3]))
    np.testing.assert_array_equal(det.score_samples(X[:3]), det2.score_samples(X[:3]))
    assert det2.network_.training is False


def test_validation():
    X = _images()
    with pytest.raises(ValueError, match="patch tensors"):
        _det().fit(np.random.rand(4, 152, 8, 8).astype(np.float32))
    bad = X.astype(np.float32) / 255
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN|nan|finite"):
        _det().fit(bad)
    with pytest.raises(ValueError, match="at least 2 training images"):
        _det().fit(X[:1])
    with pytest.raises(ValueError, match="five layers"):
        MemSeg(PatchFeatureExtractor(input_size=SIZE, layers=("blocks.2", "blocks.4")),
               max_iter=1, device="cpu").fit(X)
    with pytest.raises(ValueError, match="at least one must be positive"):
        _det(l1_weight=0, focal_weight=0).fit(X)
    with pytest.raises(ValueError, match="n_memory"):
        _det(n_memory=0).fit(X)


def test_nested_params_and_extractor_not_mutated():
    ext = PatchFeatureExtractor(input_size=SIZE)
    det = MemSeg(ext, n_memory=2, max_iter=1, batch_size=4, random_state=0, device="cpu")
    params = det.get_params()
    assert params["extractor__backbone"] == "efficientnet_lite0"
    assert "synthesizer" in params
    det.set_params(extractor__input_size=SIZE)
    det.fit(_images(6))
    assert ext.layers is None and not hasattr(ext, "module_")
    assert det.extractor_ is not ext and len(det.extractor_.layers_) == 5
    assert clone(det).get_params()["extractor__input_size"] == SIZE
    synth = AnomalySynthesizer(anomaly_types=("structure",))
    det2 = MemSeg(ext, synthesizer=synth, n_memory=2, max_iter=1, batch_size=4,
                  random_state=0, device="cpu").fit(_images(6))
    assert det2.get_params()["synthesizer__anomaly_types"] == ("structure",)
    assert det2.synthesizer_ is not synth


@pytest.mark.parametrize("switches", [
    dict(use_memory=False),
    dict(use_multiscale=False),
    dict(use_spatial_attention=False),
    dict(use_coordinate_attention=False),
    dict(use_memory=False, use_multiscale=False, use_spatial_attention=False,
         use_coordinate_attention=False),
])
def test_module_switches(switches):
    X = _images(6)
    det = _det(max_iter=1, **switches).fit(X)
    assert det.anomaly_map(X[:2]).shape == (2, SIZE, SIZE)
    if "use_coordinate_attention" in switches:
        assert det.network_.msff[0].attn is None
    if switches.get("use_memory") is False:
        assert det.network_.msff[0].conv.in_channels == det.extractor_.layer_channels_[1]
    det2 = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(det.anomaly_map(X[:1]), det2.anomaly_map(X[:1]))


def test_best_difference_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    ii = [torch.randn(3, c, s, s, generator=g) for c, s in ((4, 8), (6, 4), (8, 2))]
    mem = [torch.randn(5, c, s, s, generator=g) for c, s in ((4, 8), (6, 4), (8, 2))]
    mem = [torch.cat([m[:4], x[1:2]]) for m, x in zip(mem, ii)]  # input 1 is sample 4
    di, best = best_difference(ii, mem)
    brute = torch.stack([sum(((x[b] - m) ** 2).flatten(1).mean(1) for x, m in zip(ii, mem))
                         for b in range(3)]).argmin(1)
    assert torch.equal(best, brute) and int(best[1]) == 4
    assert float(di[0][1].abs().max()) == 0.0
    _, best_ex = best_difference(ii, mem, exclude=torch.tensor([-1, 4, -1]))
    assert int(best_ex[1]) != 4 and torch.equal(best_ex[[0, 2]], best[[0, 2]])


def test_focal_loss_and_network_shapes():
    prob = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0.0, 1.0]]])
    expected = -(0.1 ** 4 * np.log(0.9) + 0.2 ** 4 * np.log(0.8)) / 2
    assert float(focal_loss(prob, target, 4.0)) == pytest.approx(expected, rel=1e-5)
    net = MemSegNetwork((16, 24, 40, 112, 320))
    feats = [torch.zeros(2, c, s, s) for c, s in ((16, 32), (24, 16), (40, 8), (112, 4),
                                                  (320, 2))]
    di = [torch.ones_like(f) for f in feats[1:4]]
    assert net(feats, di, (64, 64)).shape == (2, 2, 64, 64)


def test_training_learns_to_segment_simulated_defects():
    """After training, a simulated defect region scores above the normal pixels."""
    X = _images(12)
    synth = AnomalySynthesizer(random_state=0)
    det = _det(synthesizer=synth, max_iter=40, n_memory=3, lr=3e-3, batch_size=6).fit(X)
    assert det.loss_history_[-1] < det.loss_history_[0]
    test = X[:4].astype(np.float32) / 255
    sim, masks = AnomalySynthesizer(random_state=5).sample(test)
    maps = det.anomaly_map(sim)
    inside = maps[masks > 0.5].mean()
    outside = maps[masks < 0.5].mean()
    assert inside > outside + 0.05
    normal = det.anomaly_score(_images(4, seed=9))
    assert det.anomaly_score(sim).mean() > normal.mean()


def test_default_extractor_and_resnet_layers():
    X = _images(4)
    det = MemSeg(n_memory=1, max_iter=1, batch_size=2, random_state=0, device="cpu").fit(X)
    assert det.extractor_.layers_ == ("blocks.0", "blocks.1", "blocks.2", "blocks.4",
                                      "blocks.6")
    assert det.anomaly_map(X[:1]).shape == (1, 160, 160)
    assert det.anomaly_map(X[:1], output_size=SIZE).shape == (1, SIZE, SIZE)
    # ResNet-18 (random weights: offline tests), the paper's encoder: layer4 trains
    res = MemSeg(PatchFeatureExtractor("resnet18", weights=None, input_size=SIZE),
                 n_memory=1, max_iter=1, batch_size=2, random_state=0, device="cpu").fit(X)
    assert res.extractor_.layers_ == ("relu", "layer1", "layer2", "layer3", "layer4")
    assert {n.split(".")[0] for n in res.trainable_parameters_} == {"layer4"}


def test_calibration_split_and_false_alarm_rate():
    X = _images(10)
    det = _det(calibration=0.3, false_alarm_rate=0.3).fit(X)
    # three images held out of training, scored by the network kept
    assert det.calibration_ == "split" and len(det.calibration_scores_) == 3
    assert np.isfinite(det.offset_)
    p = det.pvalues(_images(2, seed=1))
    assert p.shape == (2,) and ((p > 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="false_alarm_rate"):
        _det(false_alarm_rate=1.5).fit(X)
