"""PatchCore, PaDiM, SPADE, PatchOutlierDetector: behaviour, errors, pipelines, pickling;
the device contract of every detector with a ``device``."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import LocalOutlierFactor

from skad import make_pipeline
from skad._kernels import patch_rows
from skad._kernels.ann import NeighborIndex
from skad._kernels.knn import knn_search
from skad.detectors import SPADE, NPad, PaDiM, PatchCluster, PatchCore, PatchOutlierDetector
from skad.detectors.patch_outlier import self_excluded_knn_graph


def _patch_data(n_train=16, n_test=6, c=5, h=5, w=5, seed=0):
    """Smooth normals; odd test images get one patch shifted far (the defect)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, c, h, w))
    X = (base + 0.3 * rng.normal(size=(n_train + n_test, c, h, w))).astype(np.float32)
    X_train, X_test = X[:n_train], X[n_train:].copy()
    masks = np.zeros((n_test, h, w), np.uint8)
    for i in range(1, n_test, 2):
        y, x = rng.integers(0, h), rng.integers(0, w)
        X_test[i, :, y, x] += 6.0
        masks[i, y, x] = 1
    return X_train, X_test, masks


DETECTORS = [
    PatchCore(coreset_ratio=0.5, random_state=0, device="cpu"),
    PatchCore(coreset_ratio=1.0, nn_method="exact", device="cpu"),
    PaDiM(n_features=4, random_state=0, device="cpu"),
    SPADE(n_neighbors=4, device="cpu"),
    PatchOutlierDetector(LocalOutlierFactor(n_neighbors=15, novelty=True)),
    PatchOutlierDetector(IsolationForest(random_state=0), random_state=0),
]


@pytest.mark.parametrize("det", DETECTORS, ids=lambda d: type(d).__name__)
def test_detects_and_localises_shifted_patches(det):
    X_train, X_test, masks = _patch_data()
    det = clone(det).fit(X_train)
    scores, maps = det.score_and_map(X_test)
    labels = masks.reshape(len(masks), -1).max(1)
    assert scores[labels == 1].min() > scores[labels == 0].max()
    for i in np.flatnonzero(labels):
        assert maps[i].argmax() == masks[i].argmax()
    assert det.predict(X_test[labels == 1]).tolist() == [-1] * int(labels.sum())
    assert maps.shape == (6, 5, 5) and maps.dtype == np.float32
    up = det.anomaly_map(X_test, output_size=(20, 25))
    assert up.shape == (6, 20, 25)
    np.testing.assert_allclose(det.score_samples(X_test), -scores)


def test_patchcore_scores_are_nearest_bank_distances():
    X_train, X_test, _ = _patch_data()
    det = PatchCore(coreset_ratio=0.3, random_state=1, device="cpu").fit(X_train)
    rows = patch_rows(X_train)
    np.testing.assert_array_equal(det.memory_bank_, rows[det.coreset_indices_])
    assert len(det.memory_bank_) == int(0.3 * len(rows))
    q = patch_rows(X_test)
    D = np.sqrt(((q[:, None] - det.memory_bank_[None]) ** 2).sum(-1))
    maps = det.anomaly_map(X_test)
    np.testing.assert_allclose(maps.reshape(-1), D.min(1), rtol=1e-5, atol=1e-5)
    # eq. 7 by hand for one image
    i = 1
    s = D.min(1).reshape(6, -1)[i]
    j = s.argmax()
    m_test = q.reshape(6, -1, 5)[i, j]
    m_star = det.memory_bank_[D.reshape(6, 25, -1)[i, j].argmin()]
    nb = np.argsort(np.linalg.norm(det.memory_bank_ - m_star, axis=1))[:9]
    e = np.exp(np.linalg.norm(det.memory_bank_[nb] - m_test, axis=1))
    expected = (1 - e[0] / e.sum()) * s[j]
    np.testing.assert_allclose(det.anomaly_score(X_test)[i], expected, rtol=1e-4)


def test_patchcore_coreset_reproducible():
    X_train, _, _ = _patch_data()
    a = PatchCore(coreset_ratio=0.2, random_state=3).fit(X_train)
    b = PatchCore(coreset_ratio=0.2, random_state=3).fit(X_train)
    np.testing.assert_array_equal(a.coreset_indices_, b.coreset_indices_)
    c = PatchCore(coreset_ratio=0.2, random_state=4).fit(X_train)
    assert not np.array_equal(a.coreset_indices_, c.coreset_indices_)
    assert len(np.unique(a.coreset_indices_)) == len(a.coreset_indices_) == 80


def test_patchcore_training_scores_exclude_own_image():
    X_train, _, _ = _patch_data()
    det = PatchCore(coreset_ratio=1.0).fit(X_train)
    # against its own patches each training image would score 0
    np.testing.assert_allclose(det.anomaly_map(X_train), 0, atol=1e-5)
    assert np.all(det.train_scores_ < 0)
    rows = patch_rows(X_train)
    ids = np.repeat(np.arange(len(X_train)), 25)
    d, _ = knn_search(rows, rows, 1, query_groups=ids, bank_groups=ids)
    assert -det.train_scores_.max() <= d.max() + 1e-5
    # blind use: exclude="self" skips the patch itself
    blind = PatchCore(coreset_ratio=1.0, exclude="self").fit(X_train)
    assert blind.anomaly_map(X_train).min() > 0


def test_patchcore_approx_method_records_choice():
    X_train, X_test, _ = _patch_data()
    det = PatchCore(coreset_ratio=1.0, approx_threshold=10_000).fit(X_train)
    assert det.nn_method_ == "exact"
    n_bank = len(det.memory_bank_)
    cells = PatchCore(coreset_ratio=1.0, approx_threshold=n_bank, device="cpu").fit(X_train)
    assert cells.nn_method_ == "cells"
    # approximate: never below the exact distance, mostly equal
    a_cells, a_exact = cells.anomaly_map(X_test), det.anomaly_map(X_test)
    assert (a_cells >= a_exact - 1e-5).all()
    assert np.mean(np.isclose(a_cells, a_exact, rtol=1e-4, atol=1e-4)) > 0.5
    # image scores: the top patches are searched exactly, so they equal the exact ones
    np.testing.assert_allclose(cells.anomaly_score(X_test), det.anomaly_score(X_test),
                               rtol=1e-5)
    # (score_samples goes through the coarse search, score_and_map the full one)
    np.testing.assert_allclose(cells.score_and_map(X_test)[0], det.anomaly_score(X_test),
                               rtol=1e-5)
    np.testing.assert_allclose(cells.offset_, det.offset_, rtol=1e-5)
    # blind use (second nearest row) too
    blind = [PatchCore(coreset_ratio=1.0, exclude="self", approx_threshold=t,
                       device="cpu").fit(X_train) for t in (10_000, n_bank)]
    assert [b.nn_method_ for b in blind] == ["exact", "cells"]
    np.testing.assert_allclose(blind[1].anomaly_score(X_train),
                               blind[0].anomaly_score(X_train), rtol=1e-5)
    np.testing.assert_allclose(blind[1].offset_, blind[0].offset_, rtol=1e-5)
    ivf = PatchCore(coreset_ratio=1.0, nn_method="ivf", n_probe=10**6).fit(X_train)
    assert ivf.nn_method_ == "ivf"
    # every list probed: the IVF search is exact
    np.testing.assert_allclose(ivf.anomaly_map(X_test), det.anomaly_map(X_test), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(ivf.offset_, det.offset_, rtol=1e-4)


def test_padim_matches_numpy_gaussians():
    X_train, X_test, _ = _patch_data(n_train=30)
    det = PaDiM(n_features=3, random_state=0).fit(X_train)
    ch = det.channels_
    assert len(ch) == 3 and len(np.unique(ch)) == 3
    Xp = X_train[:, ch].reshape(30, 3, -1).transpose(0, 2, 1).astype(np.float64)
    p = 7
    mu = Xp[:, p].mean(0)
    cov = np.cov(Xp[:, p].T) + 0.01 * np.eye(3)
    x = X_test[2, ch].reshape(3, -1)[:, p]
    expected = np.sqrt((x - mu) @ np.linalg.inv(cov) @ (x - mu))
    np.testing.assert_allclose(det.anomaly_map(X_test)[2].reshape(-1)[p], expected, rtol=1e-4)
    assert PaDiM(n_features=None).fit(X_train).channels_.tolist() == list(range(5))
    assert PaDiM(n_features=50).fit(X_train).channels_.tolist() == list(range(5))
    with pytest.raises(ValueError, match="spatial size"):
        det.score_samples(X_test[:, :, :4, :4])


def test_spade_image_and_pixel_levels():
    X_train, X_test, _ = _patch_data()
    det = SPADE(n_neighbors=3, n_pixel_neighbors=2, nn_method="exact").fit(X_train)
    pooled = X_train.mean(axis=(2, 3))
    qp = X_test.mean(axis=(2, 3))
    D = np.linalg.norm(qp[:, None] - pooled[None], axis=2)
    nbr = np.argsort(D, axis=1)[:, :3]
    np.testing.assert_allclose(
        det.anomaly_score(X_test), np.sort(D, axis=1)[:, :3].mean(1), rtol=1e-5
    )
    gallery = patch_rows(X_train[nbr[0]])
    q = patch_rows(X_test[:1])
    Dp = np.sort(np.linalg.norm(q[:, None] - gallery[None], axis=2), axis=1)[:, :2].mean(1)
    np.testing.assert_allclose(det.anomaly_map(X_test[:1]).reshape(-1), Dp, rtol=1e-5)
    # the approximate search: same image level, pixel distances never below the exact
    cells = SPADE(n_neighbors=3, n_pixel_neighbors=2, nn_method="cells",
                  random_state=0).fit(X_train)
    assert cells.nn_method_ == "cells"
    np.testing.assert_allclose(cells.anomaly_score(X_test), det.anomaly_score(X_test))
    assert np.all(cells.anomaly_map(X_test) >= det.anomaly_map(X_test) - 1e-5)
    assert SPADE(n_neighbors=100).fit(X_train).n_neighbors_ == len(X_train) - 1
    blind = SPADE(n_neighbors=3, exclude="self").fit(X_train)
    assert blind.anomaly_map(X_train).min() > 0


@pytest.mark.parametrize("n_neighbors, n_pixel_neighbors", [(3, 1), (3, 4), (50, 2)])
def test_spade_pruned_search_equals_exact(n_neighbors, n_pixel_neighbors):
    # the CPU search ("pruned") without a cap gives the brute-force scores and maps: K above
    # the number of images (clipped), ties (a test image equal to a training image),
    # one test image, two training images
    X_train, X_test, _ = _patch_data()
    X_test = np.concatenate([X_test, X_train[:1]])
    kw = dict(n_neighbors=n_neighbors, n_pixel_neighbors=n_pixel_neighbors, device="cpu")
    exact = SPADE(nn_method="exact", **kw).fit(X_train)
    pruned = SPADE(random_state=0, n_probe=None, **kw).fit(X_train)
    assert pruned.nn_method_ == "pruned" and exact.partition_ is None
    for Xs in (X_test, X_test[-1:]):
        np.testing.assert_allclose(pruned.score_samples(Xs), exact.score_samples(Xs),
                                   rtol=1e-6)
        np.testing.assert_allclose(pruned.anomaly_map(Xs), exact.anomaly_map(Xs),
                                   rtol=1e-5, atol=1e-5)
    two = SPADE(n_pixel_neighbors=n_pixel_neighbors, n_probe=None,
                device="cpu").fit(X_train[:2])
    np.testing.assert_allclose(
        two.anomaly_map(X_test),
        SPADE(n_pixel_neighbors=n_pixel_neighbors, nn_method="exact",
              device="cpu").fit(X_train[:2]).anomaly_map(X_test), rtol=1e-5, atol=1e-5)
    assert pickle.loads(pickle.dumps(pruned)).anomaly_map(X_test[:1]).shape == (1, 5, 5)


def test_spade_n_probe_caps_the_pixel_search():
    # n_probe: image scores unchanged (the image level), maps never below the exact
    # ones, equal once the cap covers every cell; pickled with its parameter
    X_train, X_test, _ = _patch_data(n_train=30)
    X_test = X_test + np.random.default_rng(3).normal(size=X_test.shape).astype(np.float32)
    assert SPADE().n_probe == 4  # the default caps the search
    exact = SPADE(n_neighbors=10, n_probe=None, random_state=0, device="cpu").fit(X_train)
    capped = SPADE(n_neighbors=10, n_probe=1, random_state=0, device="cpu").fit(X_train)
    np.testing.assert_allclose(capped.score_samples(X_test), exact.score_samples(X_test))
    s_cap, m_cap = capped.score_and_map(X_test)
    s_ex, m_ex = exact.score_and_map(X_test)
    np.testing.assert_allclose(s_cap, s_ex)
    assert np.all(m_cap >= m_ex - 1e-5) and np.any(m_cap > m_ex + 1e-4)
    n_cells = len(exact.partition_["centres"])
    wide = SPADE(n_neighbors=10, n_probe=n_cells, random_state=0, device="cpu").fit(X_train)
    np.testing.assert_allclose(wide.anomaly_map(X_test), m_ex, rtol=1e-6)
    back = pickle.loads(pickle.dumps(capped))
    assert back.n_probe == 1
    np.testing.assert_allclose(back.anomaly_map(X_test), m_cap)
    # an older pickle (before n_probe) unpickles as the exact search
    state = exact.__getstate__()
    state.pop("n_probe")
    old = SPADE.__new__(SPADE)
    old.__setstate__(state)
    assert old.n_probe is None
    np.testing.assert_allclose(old.anomaly_map(X_test), m_ex)
    # a partition pickled before the capped search's sweep tables gains them
    state = capped.__getstate__()
    state["partition_"] = {key: v for key, v in state["partition_"].items()
                           if key not in ("bank_cell", "bank_rho", "group_order",
                                          "group_starts", "cell_count", "cell_rho_max")}
    older = SPADE.__new__(SPADE)
    older.__setstate__(state)
    assert "bank_cell" in older.partition_
    np.testing.assert_allclose(older.anomaly_map(X_test), m_cap)


def test_patch_outlier_subsampling_and_nested_params():
    X_train, X_test, _ = _patch_data()
    det = PatchOutlierDetector(
        LocalOutlierFactor(novelty=True), max_patches=100, random_state=0
    ).fit(X_train)
    assert det.n_patches_fit_ == 100 and det.estimator_ is not det.estimator
    expected = -det.estimator_.score_samples(patch_rows(X_test)).reshape(6, 5, 5)
    np.testing.assert_allclose(det.anomaly_map(X_test), expected, rtol=1e-6)
    np.testing.assert_allclose(det.anomaly_score(X_test), expected.max(axis=(1, 2)), rtol=1e-6)
    det.set_params(image_score="mean").fit(X_train)
    np.testing.assert_allclose(det.anomaly_score(X_test), expected.mean(axis=(1, 2)), rtol=1e-5)
    pipe = make_pipeline(PatchOutlierDetector(LocalOutlierFactor(novelty=True)))
    pipe.set_params(patchoutlierdetector__estimator__n_neighbors=7)
    assert pipe.get_params()["patchoutlierdetector__estimator__n_neighbors"] == 7
    pipe.fit(X_train)
    assert pipe[-1].estimator_.n_neighbors == 7
    with pytest.raises((TypeError, ValueError), match="estimator"):
        PatchOutlierDetector(estimator="lof").fit(X_train)


@pytest.mark.parametrize("det", DETECTORS[:4], ids=lambda d: type(d).__name__)
def test_errors(det):
    X_train, _, _ = _patch_data()
    with pytest.raises(ValueError, match="PatchFeatureExtractor"):
        clone(det).fit(np.zeros((4, 32, 32, 3), np.uint8))
    fitted = clone(det).fit(X_train)
    with pytest.raises(ValueError, match="5"):
        fitted.score_samples(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="1 sample"):
        clone(det).fit(X_train[:1])
    bad = X_train.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="(?i)nan"):
        clone(det).fit(bad)


def test_parameter_errors():
    X_train, _, _ = _patch_data()
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0.0).fit(X_train)
    with pytest.raises(ValueError, match="nn_method"):
        PatchCore(nn_method="fast").fit(X_train)
    with pytest.raises(ValueError, match="n_features"):
        PaDiM(n_features=0).fit(X_train)
    with pytest.warns(UserWarning, match="n_pixel_neighbors=500 exceeds the 50 patches"):
        det = SPADE(n_neighbors=2, n_pixel_neighbors=500).fit(X_train)
    assert det.n_pixel_neighbors_ == 50
    with pytest.raises(ValueError, match="image_score"):
        PatchOutlierDetector(image_score="median").fit(X_train)


# -- pipelines on images -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_images():
    from skad.datasets import make_synthetic

    data = make_synthetic(n_train=10, n_test=8, image_size=64, kind="object", random_state=0)
    X = np.concatenate([data.train_images, data.test_images])
    masks = np.concatenate([np.zeros((10, 64, 64), np.uint8), data.test_masks])
    return X, masks


def _pipe():
    from skad.features import PatchFeatureExtractor

    return make_pipeline(
        PatchFeatureExtractor(input_size=64, device="cpu", n_threads=1, batch_size=8),
        PatchCore(coreset_ratio=0.5, random_state=0, device="cpu"),
    )


def test_gridsearch_pipeline_and_pickle(tiny_images, tmp_path):
    from skad.metrics import image_auroc_scorer, pixel_auroc_scorer
    from skad.model_selection import OneClassSplit

    X, masks = tiny_images
    search = GridSearchCV(
        _pipe(), {"patchcore__coreset_ratio": [0.1, 0.5]},
        scoring={"image": image_auroc_scorer, "pixel": pixel_auroc_scorer},
        refit="pixel", cv=OneClassSplit(n_splits=2, random_state=0), error_score="raise",
    )
    search.fit(X, masks)
    assert set(search.best_params_) == {"patchcore__coreset_ratio"}
    assert np.all(np.isfinite(search.cv_results_["mean_test_pixel"]))
    best = search.best_estimator_
    scores, maps = best.score_and_map(X[10:])
    assert maps.shape == (8, 64, 64)
    path = tmp_path / "pipe.joblib"
    joblib.dump(best, path)
    again = joblib.load(path)
    s2, m2 = again.score_and_map(X[10:])
    np.testing.assert_array_equal(scores, s2)
    np.testing.assert_array_equal(maps, m2)


# -- blind LOF (PatchCluster paper's baseline): LocalOutlierFactor(novelty=False) --------
def _blind_lof(n_neighbors=10, **params):
    return PatchOutlierDetector(
        LocalOutlierFactor(n_neighbors=n_neighbors), max_patches=None, device="cpu", **params
    )


def test_blind_lof_equals_sklearn_negative_outlier_factor():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 2)), [[6.0, 6.0], [-5.0, 4.0]]])
    ref = LocalOutlierFactor(n_neighbors=10).fit(X).negative_outlier_factor_
    det = _blind_lof(10).fit(X)
    assert det.blind_ and det.estimator_.metric == "precomputed"
    np.testing.assert_allclose(det.train_maps_.ravel(), -ref, rtol=1e-5)
    np.testing.assert_allclose(det.score_samples(X), ref, rtol=1e-5)
    # a permutation / subset of the fitted set is recognised per sample
    np.testing.assert_allclose(det.score_samples(X[::-1][:5]), ref[::-1][:5], rtol=1e-5)
    # a non-Euclidean metric is handed to scikit-learn unchanged
    ref1 = LocalOutlierFactor(n_neighbors=10, metric="manhattan").fit(X)
    det1 = PatchOutlierDetector(
        LocalOutlierFactor(n_neighbors=10, metric="manhattan"), max_patches=None
    ).fit(X)
    assert det1.estimator_.metric == "manhattan"
    np.testing.assert_allclose(det1.score_samples(X), ref1.negative_outlier_factor_, rtol=1e-5)


def test_blind_lof_flags_planted_patch_among_patch_maps():
    X_train, _, _ = _patch_data(n_train=12)
    X = X_train.copy()
    X[7, :, 3, 1] += 6.0  # the defect is in the very set that is fitted and scored
    det = _blind_lof(20, contamination=1 / 12).fit(X)
    rows = patch_rows(X).astype(np.float64)
    ref = LocalOutlierFactor(n_neighbors=20).fit(rows).negative_outlier_factor_
    np.testing.assert_allclose(det.anomaly_map(X).ravel(), -ref, rtol=1e-5)
    scores = det.anomaly_score(X)
    assert scores.argmax() == 7 and det.anomaly_map(X)[7].argmax() == 3 * 5 + 1
    assert det.fit_predict(X).tolist() == [1] * 7 + [-1] + [1] * 4
    # the shared kernel's graph: each patch's nearest others, never itself
    G = self_excluded_knn_graph(rows, 20)
    dist, _ = knn_search(rows, rows, 21)
    np.testing.assert_allclose(G.data.reshape(-1, 21)[:, 1:], dist[:, 1:], rtol=1e-5, atol=1e-5)
    assert (G.indices.reshape(-1, 21)[:, 1:] != np.arange(len(rows))[:, None]).all()


def test_blind_lof_errors():
    X_train, X_test, _ = _patch_data()
    det = _blind_lof(10).fit(X_train)
    with pytest.raises(ValueError, match="not in the set.*novelty=True"):
        det.score_samples(X_test)
    with pytest.raises(ValueError, match="max_patches=100"):
        PatchOutlierDetector(LocalOutlierFactor(), max_patches=100).fit(X_train)
    with pytest.raises(ValueError, match="at least 2 patches"):
        _blind_lof(10).fit(X_train[:1, :, :1, :1])
    with pytest.raises(ValueError, match="n_neighbors=5"):
        self_excluded_knn_graph(np.zeros((5, 2)), 5)
    with pytest.raises(ValueError, match="device"):
        PatchOutlierDetector(LocalOutlierFactor(), device="tpu").fit(X_train)
    # more neighbours than other patches: all of them, as scikit-learn (which warns)
    X = np.random.default_rng(0).normal(size=(8, 2))
    with pytest.warns(UserWarning, match="n_neighbors"):
        ref = LocalOutlierFactor(n_neighbors=50).fit(X).negative_outlier_factor_
    with pytest.warns(UserWarning, match="n_neighbors"):
        det = _blind_lof(50).fit(X)
    np.testing.assert_allclose(det.score_samples(X), ref, rtol=1e-5)


def test_blind_lof_pickles_and_is_deterministic(tmp_path):
    X_train, _, _ = _patch_data()
    det = _blind_lof(15).fit(X_train)
    again = _blind_lof(15).fit(X_train)
    np.testing.assert_array_equal(det.train_maps_, again.train_maps_)
    path = tmp_path / "lof.joblib"
    joblib.dump(det, path)
    np.testing.assert_array_equal(joblib.load(path).anomaly_map(X_train), det.train_maps_)


# -- device contract ---------------------------------------------------------------------
DEVICE_DETECTORS = [
    PatchCore(coreset_ratio=0.5, random_state=0),
    PatchCore(coreset_ratio=1.0, approx_threshold=10, nn_method="auto", random_state=0),
    PaDiM(n_features=4, random_state=0),
    SPADE(n_neighbors=4),
    PatchCluster(n_neighbors=5, coreset_ratio=0.5, random_state=0),
    NPad(max_shift=1, random_state=0),
    PatchOutlierDetector(_blind_lof(10).estimator, max_patches=None),
]


def _device_id(det):
    return type(det).__name__ + ("-cells" if getattr(det, "approx_threshold", 0) == 10 else "")


@pytest.mark.parametrize("det", DEVICE_DETECTORS, ids=_device_id)
def test_device_recorded_and_cuda_pickle_reloads_on_cpu(det, monkeypatch):
    X_train, X_test, _ = _patch_data()
    det = clone(det).set_params(device=torch.device("cpu")).fit(X_train)
    assert det.device_ == torch.device("cpu")
    if isinstance(det, PatchOutlierDetector):  # blind LOF scores its training set only
        X_test = X_train
    scores, maps = det.score_and_map(X_test)
    # as if fitted on a GPU: the fitted device (and its search index's) is CUDA; the
    # fitted arrays are numpy either way
    det.device_ = torch.device("cuda", 0)
    for value in vars(det).values():
        if isinstance(value, NeighborIndex):
            value.device = det.device_
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="fitted on cuda:0 but CUDA is not available"):
        back = pickle.loads(pickle.dumps(det))
    assert back.device_ == torch.device("cpu")
    s2, m2 = back.score_and_map(X_test)
    np.testing.assert_array_equal(scores, s2)
    np.testing.assert_array_equal(maps, m2)


@pytest.mark.parametrize("det", DEVICE_DETECTORS[::2], ids=_device_id)
def test_device_errors(det, monkeypatch):
    X_train, _, _ = _patch_data()
    with pytest.raises(ValueError, match="device: expected 'auto', 'cpu'.*got 'tpu'"):
        clone(det).set_params(device="tpu").fit(X_train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda:1' was requested but CUDA is not available"):
        clone(det).set_params(device="cuda:1").fit(X_train)
    assert clone(det).set_params(device="auto").fit(X_train).device_.type == "cpu"
