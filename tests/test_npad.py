"""Tests of N-pad (skad.detectors.NPad) on tiny synthetic patch tensors."""

import numpy as np
import pytest
import torch

from skad._kernels.spatial import (
    bhattacharyya_weights,
    shift_maps,
    weighted_gaussians,
    window_offsets,
)
from skad.detectors.npad import NPad, select_active_channels


# ---------------------------------------------------------------- numpy references
def _np_moments(X):
    """Per-position means (h, w, d) and ddof-1 covariances (h, w, d, d) of (n, d, h, w)."""
    n, d, h, w = X.shape
    flat = X.transpose(2, 3, 0, 1).astype(np.float64)  # (h, w, n, d)
    mu = flat.mean(2)
    diff = flat - mu[:, :, None]
    cov = np.einsum("hwni,hwnj->hwij", diff, diff) / (n - 1)
    return mu, cov


def _np_bhattacharyya(mu_p, mu_q, cov_p, cov_q, eps):
    avg = 0.5 * (cov_p + cov_q) + eps * np.eye(len(mu_p))
    delta = mu_p - mu_q
    return 0.125 * delta @ np.linalg.inv(avg) @ delta


def _np_maha(x, mu, cov):
    diff = x - mu
    return np.sqrt(diff @ np.linalg.inv(cov) @ diff)


def _np_avgpool3(X):
    """3x3 average, border positions averaging only inside the map."""
    n, d, h, w = X.shape
    out = np.zeros_like(X, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            out[:, :, y, x] = X[:, :, max(0, y - 1):y + 2, max(0, x - 1):x + 2].mean(axis=(2, 3))
    return out


def _smooth_normals(n=30, d=3, h=5, w=6, noise=0.3, seed=0):
    """Aligned normal samples: a fixed spatial pattern plus noise."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(size=(d, h, w)) * 2.0
    X = pattern[None] + noise * rng.normal(size=(n, d, h, w))
    return X.astype(np.float32), pattern


# ---------------------------------------------------------------- kernels
def test_window_offsets():
    assert window_offsets(1) == [(0, 0)]
    assert window_offsets(3)[0] == (-1, -1) and window_offsets(3)[-1] == (1, 1)
    assert window_offsets(2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(window_offsets(5)) == 25
    with pytest.raises(ValueError, match="size"):
        window_offsets(0)


def test_select_active_channels_ranks_by_nonzero_counts():
    X = np.zeros((4, 4, 3, 3), np.float32)
    X[:, 0] = 1.0           # always active
    X[:, 1, :2] = 2.0       # active on 2 of 3 rows
    X[:, 2, 0, 0] = 0.5     # rarely active
    X[:, 3] = -1.0          # never active (signed features count > 0)
    assert select_active_channels(X, 2, "fewest_nonzero").tolist() == [2, 3]
    assert select_active_channels(X, 2, "most_nonzero").tolist() == [0, 1]
    with pytest.raises(ValueError, match="n_channels"):
        select_active_channels(X, 5)
    with pytest.raises(ValueError, match="channel_order"):
        select_active_channels(X, 2, "random")


def test_bhattacharyya_weights_sum_symmetry_and_values():
    X, _ = _smooth_normals(n=12, d=3, h=4, w=5)
    mu, cov = _np_moments(X)
    eps = 0.05
    w, dist = bhattacharyya_weights(mu, cov, size=3, beta=0.25, eps=eps)
    w, dist = w.numpy(), dist.numpy()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    offsets = window_offsets(3)
    h, wd = mu.shape[:2]
    for y in range(h):
        for x in range(wd):
            for k, (dy, dx) in enumerate(offsets):
                qy, qx = y + dy, x + dx
                if not (0 <= qy < h and 0 <= qx < wd):
                    assert np.isinf(dist[y, x, k]) and w[y, x, k] == 0.0
                    continue
                # D_B(p, q) = D_B(q, p)
                back = offsets.index((-dy, -dx))
                assert dist[y, x, k] == pytest.approx(dist[qy, qx, back], rel=1e-4, abs=1e-6)
                ref = _np_bhattacharyya(mu[y, x], mu[qy, qx], cov[y, x], cov[qy, qx], eps)
                assert dist[y, x, k] == pytest.approx(ref, rel=1e-3, abs=1e-5)
    # similarity exp(-D / beta), normalised
    sim = np.exp(-dist[2, 2] / 0.25)
    np.testing.assert_allclose(w[2, 2], sim / sim.sum(), rtol=1e-4)


def test_bhattacharyya_weights_mirror_symmetric_field():
    # means symmetric about the centre column: a neighbour and its mirror weigh the same
    h, w, d = 5, 5, 2
    mu = np.zeros((h, w, d), np.float32)
    for x in range(w):
        mu[:, x, 0] = (x - 2) ** 2
    cov = np.broadcast_to(np.eye(d, dtype=np.float32), (h, w, d, d))
    wts = bhattacharyya_weights(mu, cov, size=3)[0].numpy()
    offsets = window_offsets(3)
    for k, (dy, dx) in enumerate(offsets):
        assert wts[2, 2, k] == pytest.approx(wts[2, 2, offsets.index((dy, -dx))])
    # equal means -> uniform weights inside the map
    flat = bhattacharyya_weights(np.zeros_like(mu), cov, size=3)[0].numpy()
    np.testing.assert_allclose(flat[2, 2], 1.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(flat[0, 0][flat[0, 0] > 0], 1.0 / 4.0, rtol=1e-6)


def test_beta_role_controls_sharpness():
    X, _ = _smooth_normals(n=10, d=2, h=4, w=4, noise=1.0)
    mu, cov = _np_moments(X)
    centre = [bhattacharyya_weights(mu, cov, beta=b, beta_role="temperature")[0][1, 1, 4]
              for b in (0.1, 1.0, 10.0)]
    assert centre[0] > centre[1] > centre[2]  # larger beta: more neighbour information
    scale = [bhattacharyya_weights(mu, cov, beta=b, beta_role="scale")[0][1, 1, 4]
             for b in (0.1, 1.0, 10.0)]
    assert scale[0] < scale[1] < scale[2]


def test_weighted_gaussians_match_direct_weighted_moments():
    X, _ = _smooth_normals(n=9, d=3, h=4, w=4)
    n = X.shape[0]
    mu, cov = _np_moments(X)
    rng = np.random.default_rng(1)
    wts = rng.random((4, 4, 9))
    offsets = window_offsets(3)
    for y in range(4):
        for x in range(4):
            for k, (dy, dx) in enumerate(offsets):
                if not (0 <= y + dy < 4 and 0 <= x + dx < 4):
                    wts[y, x, k] = 0.0
    wts /= wts.sum(-1, keepdims=True)
    new_mu, new_cov = weighted_gaussians(mu, cov, wts, n_samples=n, size=3)
    y, x = 1, 2
    feats, fw = [], []
    for k, (dy, dx) in enumerate(offsets):
        feats.append(X[:, :, y + dy, x + dx].astype(np.float64))
        fw.append(np.full(n, wts[y, x, k] / n))
    feats, fw = np.concatenate(feats), np.concatenate(fw)
    ref_mu = fw @ feats
    diff = feats - ref_mu
    ref_cov = (fw[:, None] * diff).T @ diff * n / (n - 1)  # eq. 6 with 1 / (n - 1)
    np.testing.assert_allclose(new_mu[y, x].numpy(), ref_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_cov[y, x].numpy(), ref_cov, rtol=1e-3, atol=1e-4)


def test_shift_maps_round_trip_and_integer_shift():
    x = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).reshape(2, 3, 6, 7)
    out = shift_maps(x, (1, -2))
    np.testing.assert_array_equal(out[:, :, 1:, :-2], x[:, :, :-1, 2:])
    back = shift_maps(shift_maps(x, (0.5, 0.25)), (-0.5, -0.25))
    np.testing.assert_allclose(back[:, :, 1:-1, 1:-1], x[:, :, 1:-1, 1:-1], rtol=1e-5)
    assert shift_maps(x, (0, 0)) is x


# ---------------------------------------------------------------- estimator maths
def test_module_a_with_c_matches_numpy_mahalanobis():
    X, _ = _smooth_normals(n=25, d=3, h=4, w=5)
    eps = 0.02
    det = NPad(modules=("A", "C"), max_shift=0, score_neighborhood=2, eps=eps,
               chunk_size=5).fit(X)  # chunk_size=5: one row per chunk, halo exercised
    X_test = X[:3] + np.random.default_rng(3).normal(size=X[:3].shape).astype(np.float32)
    maps = det.anomaly_map(X_test)

    mu, cov = _np_moments(X)
    wts = bhattacharyya_weights(mu, cov, size=3, beta=0.25, eps=eps)[0].numpy()
    np.testing.assert_allclose(det.weights_, wts, rtol=1e-4, atol=1e-6)
    n, d, h, w = X.shape
    offsets3 = window_offsets(3)
    mu_a = np.zeros((h, w, d))
    cov_a = np.zeros((h, w, d, d))
    for y in range(h):
        for x in range(w):  # eq. 6 straight from the features
            feats, fw = [], []
            for k, (dy, dx) in enumerate(offsets3):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    feats.append(X[:, :, y + dy, x + dx].astype(np.float64))
                    fw.append(np.full(n, wts[y, x, k] / n))
            feats, fw = np.concatenate(feats), np.concatenate(fw)
            mu_a[y, x] = fw @ feats
            diff = feats - mu_a[y, x]
            cov_a[y, x] = (fw[:, None] * diff).T @ diff * n / (n - 1) + eps * np.eye(d)
    ref = np.full((3, h, w), np.inf)
    for i in range(3):
        for y in range(h):
            for x in range(w):
                for dy, dx in window_offsets(2):  # eq. 9: min over neighbours' Gaussians
                    qy, qx = y + dy, x + dx
                    if 0 <= qy < h and 0 <= qx < w:
                        m = _np_maha(X_test[i, :, y, x].astype(np.float64),
                                     mu_a[qy, qx], cov_a[qy, qx])
                        ref[i, y, x] = min(ref[i, y, x], m)
    np.testing.assert_allclose(maps, ref, rtol=2e-3, atol=2e-4)
    # without C: every position scores against its own distribution only
    det_a = NPad(modules="A", max_shift=0, eps=eps).fit(X)
    own = np.array([[[_np_maha(X_test[i, :, y, x].astype(np.float64), mu_a[y, x], cov_a[y, x])
                      for x in range(w)] for y in range(h)] for i in range(3)])
    np.testing.assert_allclose(det_a.anomaly_map(X_test), own, rtol=2e-3, atol=2e-4)


def test_module_b_and_image_score_match_numpy():
    X, _ = _smooth_normals(n=20, d=3, h=4, w=4)
    eps = 0.01
    det = NPad(modules="B", max_shift=0, eps=eps, top_k=3, centroid_ratio=0.2,
               random_state=0).fit(X)
    X_test = X[:2] * 1.5
    scores, maps = det.score_and_map(X_test)
    agg = _np_avgpool3(X)
    mu, cov = _np_moments(agg)
    agg_t = _np_avgpool3(X_test)
    n, d, h, w = X.shape
    ref = np.array([[[_np_maha(agg_t[i, :, y, x], mu[y, x], cov[y, x] + eps * np.eye(d))
                      for x in range(w)] for y in range(h)] for i in range(2)])
    np.testing.assert_allclose(maps, ref, rtol=2e-3, atol=2e-4)
    assert det.centroids_.shape == (round(0.2 * 20 * 16), d)
    for i in range(2):  # eqs. 12-14
        top = np.argsort(ref[i].ravel())[::-1][:3]
        feats = agg_t[i].reshape(d, -1).T[top]
        e = np.sqrt(((feats[:, None] - det.centroids_[None]) ** 2).sum(-1)).min(1)
        m = ref[i].ravel()[top]
        expected = np.mean(np.sqrt(np.sort(m) * np.sort(e)))
        assert scores[i] == pytest.approx(expected, rel=2e-3)


def test_full_model_is_geometric_mean_of_modules():
    X, _ = _smooth_normals(n=20, d=2, h=4, w=4)
    X_test = X[:2] + 0.5
    kw = dict(max_shift=0, random_state=0)
    a = NPad(modules="AC", **kw).fit(X).anomaly_map(X_test)
    b = NPad(modules="B", **kw).fit(X).anomaly_map(X_test)
    ab = NPad(modules="ABC", **kw).fit(X).anomaly_map(X_test)
    np.testing.assert_allclose(ab, np.sqrt(a * b), rtol=1e-4)  # eq. 11


# ---------------------------------------------------------------- shifting
def test_shift_aggregation_on_shifted_image_and_defect():
    X, pattern = _smooth_normals(n=40, d=3, h=8, w=8, noise=0.2)
    rng = np.random.default_rng(5)
    # a normal image displaced by one feature position
    moved = np.roll(pattern, 1, axis=2)[None] + 0.2 * rng.normal(size=(1, 3, 8, 8))
    moved = moved.astype(np.float32)
    kw = dict(modules="A", neighborhood_size=1, random_state=0)
    plain = NPad(max_shift=0, **kw).fit(X)
    shifted_min = NPad(max_shift=1, shift_step=1.0, shift_aggregation="min",
                       shift_directions="axes", **kw).fit(X)
    # one of the shifted passes re-aligns the image: the min map is low inside
    inner = (slice(None), slice(2, 6), slice(2, 6))
    realigned = shifted_min.anomaly_map(moved)[inner].mean()
    assert realigned < 0.3 * plain.anomaly_map(moved)[inner].mean()
    # a defect stays where it is after shifting the maps back, for both aggregations
    defect = X[:1].copy()
    defect[0, :, 5, 2] += 6.0
    for agg, directions in [("mean", "diagonal"), ("min", "axes"), ("min", "diagonal")]:
        det = NPad(max_shift=2, shift_step=1.0, shift_aggregation=agg,
                   shift_directions=directions, **kw).fit(X)
        m = det.anomaly_map(defect)[0]
        assert np.unravel_index(np.argmax(m), m.shape) == (5, 2)
    mean_map = NPad(max_shift=2, shift_step=1.0, **kw).fit(X).anomaly_map(defect)
    min_map = NPad(max_shift=2, shift_step=1.0, shift_aggregation="min", **kw).fit(X)
    assert np.all(min_map.anomaly_map(defect) <= mean_map + 1e-5)


def test_neighbourhood_scoring_tolerates_misalignment():
    X, pattern = _smooth_normals(n=40, d=3, h=8, w=8, noise=0.2)
    rng = np.random.default_rng(6)
    moved = (np.roll(pattern, 1, axis=2)[None]
             + 0.2 * rng.normal(size=(1, 3, 8, 8))).astype(np.float32)
    padim_like = NPad(modules="A", neighborhood_size=1, max_shift=0).fit(X)
    with_c = NPad(modules="AC", neighborhood_size=1, score_neighborhood=3, max_shift=0).fit(X)
    inner = (slice(None), slice(1, 7), slice(2, 7))
    tolerant = with_c.anomaly_map(moved)[inner].mean()
    assert tolerant < 0.3 * padim_like.anomaly_map(moved)[inner].mean()


# ---------------------------------------------------------------- API
def test_detects_defect_and_channel_selection():
    X, _ = _smooth_normals(n=30, d=6, h=6, w=6)
    X[:, 4:] = np.maximum(X[:, 4:], 0.0)  # ReLU-like channels with many zeros
    det = NPad(n_channels=3, channel_order="fewest_nonzero", max_shift=1, random_state=0).fit(X)
    assert det.channels_.tolist() == sorted(det.channels_.tolist()) and len(det.channels_) == 3
    assert {4, 5} <= set(det.channels_.tolist())
    X_test = X[:4].copy()
    X_test[2, :, 3, 3] += 5.0
    scores = det.anomaly_score(X_test)
    assert np.argmax(scores) == 2
    assert det.predict(X_test)[2] == -1
    up = det.anomaly_map(X_test, output_size=(24, 24))
    assert up.shape == (4, 24, 24) and up.dtype == np.float32


def test_determinism():
    X, _ = _smooth_normals(n=15, d=3, h=4, w=4)
    a = NPad(max_shift=1, random_state=3).fit(X)
    b = NPad(max_shift=1, random_state=3).fit(X)
    np.testing.assert_array_equal(a.centroids_, b.centroids_)
    sa, ma = a.score_and_map(X[:3])
    sb, mb = b.score_and_map(X[:3])
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(ma, mb)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"beta": 0.0}, "beta"),
        ({"neighborhood_size": 0}, "neighborhood_size"),
        ({"shift_aggregation": "max"}, "shift_aggregation"),
        ({"shift_directions": "all"}, "shift_directions"),
        ({"channel_order": "random"}, "channel_order"),
        ({"centroid_ratio": 1.5}, "centroid_ratio"),
        ({"modules": ("C",)}, "modules"),
        ({"modules": "BC"}, "requires 'A'"),
        ({"modules": ("A", "X")}, "modules"),
        ({"modules": ()}, "modules"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_params(params, match):
    X, _ = _smooth_normals(n=6, d=3, h=3, w=3)
    with pytest.raises(ValueError, match=match):
        NPad(**params).fit(X)


def test_too_many_channels_are_clipped():
    # the clip-or-raise rule (skad.detectors.clip_to_data): more channels than X has
    X, _ = _smooth_normals(n=6, d=3, h=3, w=3)
    with pytest.warns(UserWarning, match="n_channels=9 exceeds the 3 channels of X"):
        det = NPad(n_channels=9, max_shift=0, random_state=0).fit(X)
    ref = NPad(n_channels=None, max_shift=0, random_state=0).fit(X)
    assert det.n_channels_ == ref.n_channels_ == 3
    np.testing.assert_array_equal(det.anomaly_map(X), ref.anomaly_map(X))


def test_mismatched_patch_shape_and_images():
    X, _ = _smooth_normals(n=6, d=3, h=4, w=4)
    det = NPad(max_shift=0, random_state=0).fit(X)
    with pytest.raises(ValueError, match="spatial size"):
        det.anomaly_map(np.zeros((2, 3, 5, 4), np.float32))
    with pytest.raises(ValueError, match="3"):
        det.score_samples(np.zeros((2, 4, 4, 4), np.float32))


# ---------------------------------------------------------------- fit kernels (#19)
def _old_weighted_gaussians(mu, cov, wts, n, size=3):
    """The loop weighted_gaussians ran before #19 (reference for its in-place form)."""
    from skad._kernels.spatial import neighbour_index

    h, w, d = mu.shape
    offsets = window_offsets(size)
    idx, valid = neighbour_index(h, w, offsets)
    mu, cov = torch.as_tensor(mu).reshape(h * w, d), torch.as_tensor(cov).reshape(h * w, d, d)
    wts = torch.as_tensor(wts).reshape(h * w, len(offsets)).T * valid
    new_mu = torch.einsum("kp,kpd->pd", wts, mu[idx])
    factor = n / max(n - 1, 1)
    new_cov = torch.zeros_like(cov)
    for k in range(len(offsets)):
        p = torch.nonzero(wts[k]).squeeze(1)
        if len(p):
            diff = mu[idx[k, p]] - new_mu[p]
            new_cov[p] += wts[k, p][:, None, None] * (
                cov[idx[k, p]] + factor * diff[:, :, None] * diff[:, None, :])
    return new_mu.reshape(h, w, d), new_cov.reshape(h, w, d, d)


def test_fit_kernels_equal_the_old_computations():
    rng = np.random.default_rng(5)
    X, _ = _smooth_normals(n=20, d=6, h=5, w=6)
    mu, cov = (a.astype(np.float32) for a in _np_moments(X))
    # weights: some exactly 0 (skipped offsets) and offsets non-zero everywhere
    wts = rng.random((5, 6, 9)).astype(np.float32)
    wts[..., 2] = 0.0
    wts[rng.random((5, 6, 9)) < 0.3] = 0.0
    wts[..., 4] = 0.5
    new = weighted_gaussians(mu, cov, wts, n_samples=20, size=3)
    old = _old_weighted_gaussians(mu, cov, wts, 20)
    for a, b in zip(new, old):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # D_B: the float32-rounded factor of before, within its rounding; float64 numpy
    # (without that rounding) closer still
    _, dist = bhattacharyya_weights(mu, cov, size=3, eps=0.01)
    dist = dist.numpy()
    mu64, cov64 = mu.astype(np.float64), cov.astype(np.float64)
    for (y, x), (qy, qx) in [((0, 0), (1, 1)), ((2, 3), (2, 4)), ((4, 5), (3, 5))]:
        k = window_offsets(3).index((qy - y, qx - x))
        ref = _np_bhattacharyya(mu64[y, x], mu64[qy, qx], cov64[y, x], cov64[qy, qx], 0.01)
        assert dist[y, x, k] == pytest.approx(ref, rel=2e-6)


def test_inverse_cholesky_factors_equal_the_two_step_factors():
    from skad._kernels.gaussian import (cholesky_factors, inverse_cholesky_factors,
                                        whitening_factors)

    rng = np.random.default_rng(6)
    A = rng.normal(size=(7, 12, 30))
    cov = (A @ A.transpose(0, 2, 1) / 30 + 0.01 * np.eye(12)).astype(np.float32)
    W = inverse_cholesky_factors(cov).numpy()
    assert W.dtype == np.float32 and np.allclose(np.triu(W, 1), 0.0)
    ref = np.linalg.inv(np.linalg.cholesky(cov.astype(np.float64)))
    np.testing.assert_allclose(W, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    # the old two steps (factor rounded to float32 in between) to that rounding
    old = whitening_factors(cholesky_factors(cov))
    np.testing.assert_allclose(W, old, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(ValueError, match="not positive definite"):
        inverse_cholesky_factors(-cov)


def test_nearest_centre_and_labels_of_partitioned_kmeans():
    from skad._kernels.kmeans import _nearest_centre, partitioned_kmeans
    from skad._kernels.knn import knn_search

    rng = np.random.default_rng(7)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    C = rng.normal(size=(5000, 5)).astype(np.float32)  # 3 blocks of queries
    X_aug = torch.cat([torch.from_numpy(X), torch.ones(4000, 1)], 1)
    np.testing.assert_array_equal(_nearest_centre(X_aug, torch.from_numpy(C)),
                                  knn_search(X, C, 1)[1][:, 0])
    centres, fit = partitioned_kmeans(X, 300, cell_size=1000, random_state=0,
                                      return_fit=True)
    np.testing.assert_array_equal(centres, partitioned_kmeans(X, 300, cell_size=1000,
                                                              random_state=0))
    # each centre is the mean of the rows labelled with it; each seed is its centre's row
    labels = fit["labels"]
    counts = np.bincount(labels, minlength=len(centres))
    assert counts.min() >= 1
    sums = np.zeros((len(centres), 5))
    np.add.at(sums, labels, X)
    np.testing.assert_allclose(sums / counts[:, None], centres, atol=1e-5)
    np.testing.assert_array_equal(labels[fit["seeds"]], np.arange(len(centres)))
    with pytest.raises(ValueError, match="return_fit"):
        partitioned_kmeans(X, 10, cell_size=None, return_fit=True)


def test_restricted_kmeans_is_lloyd_on_the_rows_from_their_seeds():
    from skad._kernels.kmeans import lloyd, partitioned_kmeans, restricted_kmeans

    rng = np.random.default_rng(8)
    X = rng.normal(size=(3000, 4)).astype(np.float32)
    centres, fit = partitioned_kmeans(X, 300, cell_size=1000, random_state=0,
                                      return_fit=True)
    assert len(np.unique(fit["cells"])) == 3
    np.testing.assert_allclose(restricted_kmeans(X, fit, np.arange(3000)), centres, atol=1e-6)
    rows = np.sort(rng.choice(3000, 2200, replace=False))
    got = restricted_kmeans(X, fit, rows)
    member = np.zeros(3000, bool)
    member[rows] = True
    expected = []
    for c in np.unique(fit["cells"]):
        seeds = fit["seeds"][(fit["cells"] == c) & member[fit["seeds"]]]
        cell_rows = np.flatnonzero(member & (fit["cells"][fit["labels"]] == c))
        # lloyd on these rows from these seeds: assignment by squared distance
        d2 = ((X[cell_rows, None] - X[None, seeds]) ** 2).sum(-1)
        lab = d2.argmin(1)
        expected += [X[cell_rows[lab == j]].mean(0) for j in range(len(seeds))
                     if (lab == j).any()]
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(np.array(expected), axis=0),
                               atol=1e-5)
    with pytest.raises(ValueError, match="max_iter=1"):
        restricted_kmeans(X, {**fit, "max_iter": 2}, rows)


# ---------------------------------------------------------------- calibration (#19)
def test_auto_calibration_is_a_holdout_fold_model_without_its_fold():
    from skad._kernels.gaussian import fit_gaussians
    from skad._kernels.kmeans import partitioned_kmeans, restricted_kmeans

    X, _ = _smooth_normals(n=30, d=3, h=5, w=5)
    X[3, :, 2, 2] += 1.0  # a fold image differs from the rest
    folds = {}

    class Spy(NPad):
        def _score_images(self, X):
            folds.setdefault("model", self)  # the first scoring: the fold model's
            return super()._score_images(X)

    det = Spy(max_shift=1, random_state=0).fit(X)
    assert det.calibration_ == "holdout" and not hasattr(det, "_kmeans_fit")
    test = det._cv_folds(30)[0]
    train = np.setdiff1d(np.arange(30), test)
    assert len(det.calibration_scores_) == len(test) == 6
    fold = folds["model"]
    assert fold is not det
    np.testing.assert_allclose(-det.calibration_scores_, fold._score_images(X[test]))
    # module B: the Gaussians of the training images only, as a fit on them
    ref = NPad(max_shift=1, random_state=0, calibration="in_sample").fit(X[train])
    np.testing.assert_allclose(fold.means_b_, ref.means_b_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fold.whiten_b_, ref.whiten_b_, rtol=1e-4, atol=1e-4)
    # module A: the training images' Gaussians re-weighted with the full fit's weights
    Xt = X[train].transpose(0, 2, 3, 1).reshape(len(train), 25, 3)
    mu, cov = fit_gaussians(Xt, eps=0.0)
    mu_a, _ = weighted_gaussians(mu.reshape(5, 5, 3), cov.reshape(5, 5, 3, 3), det.weights_,
                                 n_samples=len(train))
    np.testing.assert_allclose(fold.means_a_, mu_a.reshape(25, 3), rtol=1e-5, atol=1e-6)
    # the bank: the full fit's k-means restricted to the training images' rows
    agg = _np_avgpool3(X).astype(np.float32).transpose(0, 2, 3, 1).reshape(-1, 3)
    _, fit = partitioned_kmeans(agg, len(det.centroids_), cell_size=det.kmeans_cell_size,
                                random_state=np.random.RandomState(0), return_fit=True)
    rows = (train[:, None] * 25 + np.arange(25)).ravel()
    np.testing.assert_allclose(fold.centroids_, restricted_kmeans(agg, fit, rows),
                               rtol=1e-5, atol=1e-6)
    assert len(fold.centroids_) < len(det.centroids_)  # seeds of the fold's rows: gone
    # the model kept: fitted on all images, as in-sample calibration fits it
    ins = NPad(max_shift=1, random_state=0, calibration="in_sample").fit(X)
    np.testing.assert_array_equal(det.score_samples(X[:4]), ins.score_samples(X[:4]))
    # "cv" still refits each fold model from scratch (all folds scored)
    cv = NPad(max_shift=1, random_state=0, calibration="cv").fit(X)
    assert cv.calibration_ == "cv" and len(cv.calibration_scores_) == 30
