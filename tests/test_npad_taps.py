"""N-pad's CPU scoring through taps (skad._kernels.taps, skad._kernels.nearest) against
the direct computation: shifted copies, 3x3 averages and one Mahalanobis product each."""

import numpy as np
import pytest
import torch

from skad._kernels.nearest import nearest_rows
from skad._kernels.spatial import neighbour_index, shift_maps, window_offsets
from skad._kernels.taps import (
    pooled_shift_taps,
    shift_taps,
    whitened_tap_norms,
    window_shift_taps,
)
from skad.detectors.npad import NPad
from skad.features.pooling import local_average_pool

SIZES = [(5, 7), (1, 6), (6, 1), (1, 1)]
SHIFT_SETS = {
    "none": [(0.0, 0.0)],
    "diagonal": [(0.0, 0.0), (0.125, 0.125), (0.375, 0.375), (0.5, 0.5)],
    "axes": [(0.0, 0.0), (0.25, 0.0), (-0.25, 0.0), (0.0, 0.25), (0.0, -0.25)],
    "whole": [(0.0, 0.0), (1.0, 1.0), (-2.0, 0.5)],
}


@pytest.mark.parametrize("h, w", SIZES)
def test_shift_taps_reproduce_shift_maps(h, w):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 3, h, w)).astype(np.float32))
    flat = x.permute(0, 2, 3, 1).reshape(2, h * w, 3).numpy()
    for s in [(0, 0), (0.125, 0.125), (0.5, -0.5), (-0.375, 0), (0, 1.0), (1.5, -2.25)]:
        idx, wts = shift_taps(h, w, s)
        assert idx.shape == wts.shape == (h * w, 4)
        assert idx.min() >= 0 and idx.max() < h * w
        np.testing.assert_allclose(wts.sum(1), 1.0, rtol=1e-6)
        got = (flat[:, idx] * wts[None, :, :, None]).sum(2)
        ref = shift_maps(x, s).permute(0, 2, 3, 1).reshape(2, h * w, 3).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _direct(x, mu, W, shifts, offsets):
    """Module A (min over the window's Gaussians) and B maps of every shifted copy,
    in float64 straight from shift_maps and local_average_pool."""
    n, d, h, w = x.shape
    idx, valid = neighbour_index(h, w, offsets)
    src = neighbour_index(h, w, [(-a, -b) for a, b in offsets])[0]
    maps_a, maps_b = [], []
    for s in shifts:
        xs = shift_maps(x, s)
        flat = xs.permute(0, 2, 3, 1).reshape(n, h * w, d).double()
        best = torch.full((n, h * w), float("inf"), dtype=torch.float64)
        for k in range(len(offsets)):
            dq = torch.einsum("pij,npj->npi", W, flat[:, src[k]] - mu).norm(dim=2)
            dp = dq[:, idx[k]]
            dp[:, ~valid[k]] = float("inf")
            best = torch.minimum(best, dp)
        maps_a.append(best)
        agg = local_average_pool(xs, 3).permute(0, 2, 3, 1).reshape(n, h * w, d).double()
        maps_b.append(torch.einsum("pij,npj->npi", W, agg - mu).norm(dim=2))
    return torch.stack(maps_a).numpy(), torch.stack(maps_b).numpy()


@pytest.mark.parametrize("h, w", SIZES + [(6, 5)])
@pytest.mark.parametrize("shift_set", list(SHIFT_SETS))
@pytest.mark.parametrize("window", [1, 2, 3])
def test_tap_norms_equal_shifted_copies(h, w, shift_set, window):
    rng = np.random.default_rng(h * 100 + w + window)
    n, d = 3, 5
    shifts = SHIFT_SETS[shift_set]
    offsets = window_offsets(window)
    x = torch.from_numpy(rng.normal(size=(n, d, h, w)).astype(np.float32))
    mu = rng.normal(size=(h * w, d)).astype(np.float32)
    W = np.tril(rng.normal(size=(h * w, d, d))).astype(np.float32)
    ref_a, ref_b = _direct(x, torch.from_numpy(mu).double(), torch.from_numpy(W).double(),
                           shifts, offsets)
    flat = x.permute(0, 2, 3, 1).reshape(n, h * w, d).numpy()
    taps = window_shift_taps(h, w, shifts, offsets)
    # every row is a distinct in-map source; never more than the combinations need
    assert taps[2].max() <= min(len(shifts) * len(offsets) * 4, h * w)
    dist_q = whitened_tap_norms(flat, mu, W, *taps).reshape(len(shifts), len(offsets), n, -1)
    idx, valid = (a.numpy() for a in neighbour_index(h, w, offsets))
    got_a = np.full((len(shifts), n, h * w), np.inf, np.float32)
    for k in range(len(offsets)):
        got_a = np.minimum(got_a, np.where(valid[k], dist_q[:, k][:, :, idx[k]], np.inf))
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-5, atol=1e-5)
    got_b = whitened_tap_norms(flat, mu, W, *pooled_shift_taps(h, w, shifts))
    np.testing.assert_allclose(got_b, ref_b, rtol=1e-5, atol=1e-5)
    # the upper triangle of W is never read
    garbage = W + np.triu(rng.normal(size=W.shape), 1).astype(np.float32)
    np.testing.assert_array_equal(whitened_tap_norms(flat, mu, garbage, *taps).reshape(
        dist_q.shape), dist_q)


def test_window_taps_share_sources_across_shifts_and_offsets():
    # default N-pad: 5 diagonal shifts below one position, 2x2 window -> 9 sources
    shifts = [(0.0, 0.0)] + [(k * 0.125, k * 0.125) for k in range(1, 5)]
    n_rows = window_shift_taps(28, 28, shifts, window_offsets(2))[2].reshape(28, 28)
    assert n_rows[2:, 2:].min() == n_rows.max() == 9
    assert n_rows[0, 0] == 1  # only q itself is in the map up-left of the corner


def test_whitened_tap_norms_errors():
    taps = pooled_shift_taps(2, 2, [(0.0, 0.0)])
    x = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"means/whiten: expected shapes \(4, 3\)"):
        whitened_tap_norms(x, np.zeros((4, 2)), np.zeros((4, 3, 3)), *taps)
    with pytest.raises(ValueError, match="taps: expected 4 positions"):
        whitened_tap_norms(x, np.zeros((4, 3)), np.zeros((4, 3, 3)),
                           *pooled_shift_taps(1, 2, [(0.0, 0.0)]))
    assert whitened_tap_norms(x[:0], np.zeros((4, 3)), np.zeros((4, 3, 3)), *taps).shape == (
        1, 0, 4)


def test_nearest_rows_match_brute_force():
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(5000, 12)).astype(np.float32)  # more than one bank block
    q = np.concatenate([rng.normal(size=(300, 12)), bank[:20] + 1e-3]).astype(np.float32)
    d, i = nearest_rows(q, bank, n_threads=2)
    full = np.sqrt(((q[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(i, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-5)
    assert i[-20:].tolist() == list(range(20))
    e, j = nearest_rows(q[:0], bank)
    assert e.shape == j.shape == (0,)
    with pytest.raises(ValueError, match="same number of columns"):
        nearest_rows(q[:, :3], bank)
    with pytest.raises(ValueError, match="empty bank"):
        nearest_rows(q, bank[:0])


def _normals(n, d, h, w, seed=0):
    rng = np.random.default_rng(seed)
    pattern = rng.normal(size=(d, h, w)) * 2.0
    return (pattern[None] + 0.3 * rng.normal(size=(n, d, h, w))).astype(np.float32)


@pytest.mark.parametrize("params, shape", [
    (dict(), (6, 5)),
    (dict(modules="A"), (6, 5)),
    (dict(modules="B"), (6, 5)),
    (dict(modules="AB"), (6, 5)),
    (dict(modules="AC", score_neighborhood=3), (6, 5)),
    (dict(max_shift=0), (6, 5)),
    (dict(max_shift=2, shift_directions="axes", shift_aggregation="min"), (6, 5)),
    (dict(max_shift=1, shift_step=1.0, score_neighborhood=1), (6, 5)),
    (dict(), (1, 6)),
    (dict(), (5, 1)),
])
def test_npad_taps_path_equals_shifted_copies(params, shape):
    h, w = shape
    X = _normals(20, 4, h, w)
    det = NPad(random_state=0, device="cpu", top_k=3, calibration="in_sample",
               **params).fit(X)
    X_test = X[:5] + np.random.default_rng(1).normal(size=(5, 4, h, w)).astype(np.float32)
    X_test[1, :, h // 2, w // 2] += 5.0
    xb = torch.from_numpy(np.ascontiguousarray(X_test[:, det.channels_]))
    shifts = det._shifts(h, w)
    s_new, m_new = det._score_taps(xb, shifts)
    s_old, m_old = det._score_shifted(xb, shifts)  # the CUDA path, here on the CPU
    np.testing.assert_allclose(m_new.numpy(), m_old.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_new.numpy(), s_old.numpy(), rtol=1e-5, atol=1e-5)
    scores, maps = det.score_and_map(X_test)
    assert np.all(np.isfinite(scores)) and maps.shape == (5, h, w)
