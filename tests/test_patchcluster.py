"""Tests for skad.detectors.PatchCluster (blind anomaly detection), tiny synthetic data."""

import joblib
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.base import clone

from skad.detectors.patchcluster import PatchCluster, default_n_neighbors


def _normal_maps(n=12, c=6, h=3, w=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.3, size=(n, c, h, w)).astype(np.float32)


def _anomalous_copy(X, seed=1):
    """One image like the others with one far-away patch (at (1, 1))."""
    rng = np.random.default_rng(seed)
    img = rng.normal(scale=0.3, size=X.shape[1:]).astype(np.float32)
    img[:, 1, 1] += 5.0
    return img


def _flat(X):
    n, c, h, w = X.shape
    return X.transpose(0, 2, 3, 1).reshape(n * h * w, c).astype(np.float64)


def _brute_patch_scores(X, k, exclude, bank=None):
    """Mean distance to the k nearest bank rows, by brute force."""
    P = _flat(X)
    B = P if bank is None else _flat(bank)
    D = cdist(P, B)
    n, _, h, w = X.shape
    if exclude == "self":
        np.fill_diagonal(D, np.inf)
    elif exclude == "image":
        img = np.arange(P.shape[0]) // (h * w)
        D[img[:, None] == img[None, :]] = np.inf
    return np.sort(D, axis=1)[:, :k].mean(axis=1).reshape(n, h, w)


@pytest.mark.parametrize("exclude", ["self", "image", None])
def test_training_maps_match_brute_force(exclude):
    X = _normal_maps()
    det = PatchCluster(n_neighbors=4, exclude=exclude).fit(X)
    expected = _brute_patch_scores(X, 4, exclude)
    # float32 distances by ||q||^2 - 2 q.b + ||b||^2: a self-distance is ~1e-4, not 0
    atol = 1e-3 if exclude is None else 1e-5
    np.testing.assert_allclose(det.train_maps_, expected, rtol=1e-4, atol=atol)
    # scoring the fitted set returns the same (excluded) maps
    np.testing.assert_allclose(det.anomaly_map(X), expected, rtol=1e-4, atol=atol)



@pytest.mark.parametrize("exclude", ["self", "image"])
def test_cells_search_with_exclusion(exclude):
    X = _normal_maps(n=40, c=6, h=4, w=4)
    det = PatchCluster(n_neighbors=4, exclude=exclude, nn_method="cells",
                       random_state=0).fit(X)
    assert det.nn_method_ == "cells"
    expected = _brute_patch_scores(X, 4, exclude)
    # approximate: never below the brute-force mean distance, and mostly equal to it
    assert np.all(det.train_maps_ >= expected - 1e-5)
    assert np.mean(np.isclose(det.train_maps_, expected, rtol=1e-4, atol=1e-5)) > 0.9

def test_self_match_never_counted():
    X = _normal_maps()
    det = PatchCluster(n_neighbors=1, exclude="self", reweight=None).fit(X)
    # with K = 1 and self counted every score would be 0 (PatchCore's blind failure)
    assert det.train_maps_.min() > 0.05
    det_none = PatchCluster(n_neighbors=1, exclude=None, reweight=None).fit(X)
    np.testing.assert_allclose(det_none.train_maps_, 0.0, atol=1e-3)


@pytest.mark.parametrize("exclude", ["self", "image"])
def test_duplicated_anomaly_does_not_hide_itself(exclude):
    X = _normal_maps(n=20)
    anomaly = _anomalous_copy(X)
    X = np.concatenate([X, anomaly[None], anomaly[None]])  # the anomaly twice
    det = PatchCluster(n_neighbors=2, exclude=exclude, contamination=2 / 22).fit(X)
    scores = det.anomaly_score(X)
    assert set(np.argsort(scores)[-2:]) == {20, 21}
    labels = det.fit_predict(X)
    assert labels[20] == labels[21] == -1
    assert (labels[:20] == 1).all()
    maps = det.anomaly_map(X)
    assert np.unravel_index(np.argmax(maps[20]), maps[20].shape) == (1, 1)
    # The test can fail: counting self-matches (exclude=None) hides the duplicate,
    # whose anomalous patch then has two neighbours at distance 0.
    hidden = PatchCluster(n_neighbors=2, exclude=None).fit(X)
    assert hidden.anomaly_map(X)[20, 1, 1] < 1e-3
    assert not set(np.argsort(hidden.anomaly_score(X))[-2:]) == {20, 21}


def test_n_neighbors_larger_than_bank_is_clipped():
    # the clip-or-raise rule (clip_to_data): clipped with a warning, value in n_neighbors_
    X = _normal_maps(n=4, h=2, w=2)  # 16 patches
    with pytest.warns(UserWarning, match=r"n_neighbors=16 exceeds the 15 bank entries"):
        det = PatchCluster(n_neighbors=16).fit(X)
    assert det.n_neighbors_ == 15
    np.testing.assert_array_equal(det.anomaly_map(X),
                                  PatchCluster(n_neighbors=15).fit(X).anomaly_map(X))
    # exclude="image" removes the 4 patches of the query's own image
    with pytest.warns(UserWarning, match=r"n_neighbors=13 exceeds the 12 bank entries"):
        assert PatchCluster(n_neighbors=13, exclude="image").fit(X).n_neighbors_ == 12
    # coreset: 8 bank entries, one of which may be the patch itself
    with pytest.warns(UserWarning, match=r"n_neighbors=8 exceeds the 7 bank entries"):
        det = PatchCluster(n_neighbors=8, coreset_ratio=0.5, random_state=0).fit(X)
    assert det.n_neighbors_ == 7 and det.n_reweight_neighbors_ == 7
    with pytest.raises(ValueError, match="1 sample"):
        PatchCluster(exclude="image").fit(X[:1])


def test_default_n_neighbors_rule():
    assert [default_n_neighbors(r) for r in (None, 1.0, 0.01, 0.1, 0.25)] == [100, 100, 5, 10, 25]
    X = _normal_maps(n=30, h=4, w=4)  # 480 patches
    assert PatchCluster().fit(X).n_neighbors_ == 100
    assert PatchCluster(coreset_ratio=0.1, random_state=0).fit(X).n_neighbors_ == 10
    # capped at the number of eligible bank entries on small sets
    assert PatchCluster().fit(X[:2, :, :2, :2]).n_neighbors_ == 7


def test_determinism_with_random_state():
    X = _normal_maps(n=16, h=4, w=4)
    a = PatchCluster(coreset_ratio=0.3, random_state=0).fit(X)
    b = PatchCluster(coreset_ratio=0.3, random_state=0).fit(X)
    np.testing.assert_array_equal(a.coreset_indices_, b.coreset_indices_)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    c = PatchCluster(coreset_ratio=0.3, random_state=1).fit(X)
    assert not np.array_equal(a.coreset_indices_, c.coreset_indices_)
    assert a.memory_bank_.shape == (round(0.3 * 16 * 16), 6)


def test_coreset_excludes_self_by_index():
    X = _normal_maps(n=10, h=3, w=3)
    det = PatchCluster(n_neighbors=3, coreset_ratio=0.5, random_state=0, reweight=None).fit(X)
    P = _flat(X)
    D = cdist(P, det.memory_bank_.astype(np.float64))
    D[det.coreset_indices_, np.arange(det.coreset_indices_.size)] = np.inf  # self by index
    expected = np.sort(D, axis=1)[:, :3].mean(1).reshape(10, 3, 3)
    np.testing.assert_allclose(det.train_maps_, expected, rtol=1e-4, atol=1e-5)


def test_one_class_use_scores_new_samples_against_whole_bank():
    X_train = _normal_maps(n=15, seed=0)
    X_new = np.concatenate([_normal_maps(n=4, seed=5), _anomalous_copy(X_train)[None]])
    det = PatchCluster(n_neighbors=5).fit(X_train)
    maps = det.anomaly_map(X_new)
    expected = _brute_patch_scores(X_new, 5, None, bank=X_train)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)
    assert np.argmax(det.anomaly_score(X_new)) == 4
    assert det.predict(X_new)[4] == -1


def test_training_set_recognised_per_sample():
    X = _normal_maps(n=12)
    det = PatchCluster(n_neighbors=4).fit(X)
    perm = np.random.default_rng(0).permutation(12)[:7]
    np.testing.assert_array_equal(det.score_samples(X[perm]), det.train_scores_[perm])
    # a mixed batch: training samples from the stored blind scores, new ones fresh
    new = _normal_maps(n=2, seed=9)
    mixed = np.concatenate([X[:3], new])
    s = det.score_samples(mixed)
    np.testing.assert_array_equal(s[:3], det.train_scores_[:3])
    np.testing.assert_allclose(s[3:], det.score_samples(new))
    # fit_predict == fit().predict() on the same set
    np.testing.assert_array_equal(clone(det).fit_predict(X), det.predict(X))


def test_reweighting():
    X = _normal_maps(n=12)
    X[3] = _anomalous_copy(X)
    plain = PatchCluster(n_neighbors=4, reweight=None).fit(X)
    np.testing.assert_allclose(plain.anomaly_score(X), plain.train_maps_.max(axis=(1, 2)), rtol=1e-6)
    nearest = PatchCluster(n_neighbors=4, reweight="nearest").fit(X)
    w = nearest.anomaly_score(X) / plain.anomaly_score(X)
    assert ((w >= 0) & (w < 1)).all()  # PatchCore's weight stays in [0, 1)
    mean = PatchCluster(n_neighbors=4, reweight="mean").fit(X)
    assert np.argmax(mean.anomaly_score(X)) == 3
    assert np.argmax(nearest.anomaly_score(X)) == 3
    # eq. 3 with K = 1: both readings coincide (PatchCore's weight)
    k1m = PatchCluster(n_neighbors=1, reweight="mean").fit(X).anomaly_score(X)
    k1n = PatchCluster(n_neighbors=1, reweight="nearest").fit(X).anomaly_score(X)
    np.testing.assert_allclose(k1m, k1n, rtol=1e-5)


def test_anomaly_map_upsampled_and_pickle(tmp_path):
    X = _normal_maps(n=8, h=4, w=4)
    det = PatchCluster(n_neighbors=3).fit(X)
    assert det.anomaly_map(X, output_size=(16, 16)).shape == (8, 16, 16)
    path = tmp_path / "pc.joblib"
    joblib.dump(det, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))


def test_rejects_images():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="PatchFeatureExtractor"):
        PatchCluster().fit(images)


def test_nearest_reweighting_matches_patchcore_without_exclusion():
    from skad._kernels import patch_rows
    from skad._kernels.reweight import reweighted_image_scores

    X_train = _normal_maps(n=10, seed=0)
    X_new = np.concatenate([_normal_maps(n=3, seed=4), _anomalous_copy(X_train)[None]])
    det = PatchCluster(n_neighbors=3, reweight="nearest", n_reweight_neighbors=4).fit(X_train)
    maps = det.anomaly_map(X_new)
    n, c, h, w = X_new.shape
    rows = patch_rows(X_new)
    _, nn = det.index_.query(rows, 1)
    expected = reweighted_image_scores(
        maps.reshape(n, h * w), rows.reshape(n, h * w, c), nn.reshape(n, h * w),
        det.memory_bank_, 4,
    )
    np.testing.assert_allclose(det.anomaly_score(X_new), expected, rtol=1e-4)
