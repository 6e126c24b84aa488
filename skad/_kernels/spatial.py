"""Kernels over a grid of positions: windows, neighbour indices, neighbourhood
Gaussians (N-pad's module A, eqs. 4-6) and sub-position shifts of feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._convert import as_tensor
from .gaussian import _cholesky64

__all__ = [
    "bhattacharyya_weights",
    "neighbour_index",
    "shift_maps",
    "weighted_gaussians",
    "window_offsets",
]


def _float_tensor(a):
    return as_tensor(a, dtype=torch.float32)


def window_offsets(size: int) -> list[tuple[int, int]]:
    """Offsets ``(dy, dx)`` of a ``size x size`` window around a position.

    Odd sizes are centred (3 -> -1..1). Even sizes follow PyTorch's ``padding="same"``
    convention and reach one further forward than backward (2 -> 0..1, 4 -> -1..2).
    The offset ``(0, 0)`` is always included.

    Parameters
    ----------
    size : int
        Side length of the window, >= 1.

    Returns
    -------
    offsets : list of (int, int)
        Row-major, ``size * size`` entries.

    Examples
    --------
    >>> from skad._kernels.spatial import window_offsets
    >>> window_offsets(2)
    [(0, 0), (0, 1), (1, 0), (1, 1)]
    >>> len(window_offsets(3))
    9
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size: expected an int >= 1; got {size!r}")
    lo, hi = -((size - 1) // 2), size // 2
    return [(dy, dx) for dy in range(lo, hi + 1) for dx in range(lo, hi + 1)]


def neighbour_index(h: int, w: int, offsets, device=None):
    """Flat index of ``p + offset`` for each position (clamped) and its validity mask.

    Returns ``idx`` (K, h*w) long and ``valid`` (K, h*w) bool.
    """
    ys = torch.arange(h, device=device)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, device=device)[None, :].expand(h, w).reshape(-1)
    idx, valid = [], []
    for dy, dx in offsets:
        qy, qx = ys + dy, xs + dx
        ok = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        idx.append(qy.clamp(0, h - 1) * w + qx.clamp(0, w - 1))
        valid.append(ok)
    return torch.stack(idx), torch.stack(valid)


def _windowed_moments(means, covs, size):
    """Per-position moments flattened over positions, with the window's neighbours.

    Returns ``h, w, d, offsets, idx, valid, mu (h*w, d), cov (h*w, d, d)``.
    """
    means, covs = _float_tensor(means), _float_tensor(covs)
    h, w, d = means.shape
    offsets = window_offsets(size)
    idx, valid = neighbour_index(h, w, offsets)
    return h, w, d, offsets, idx, valid, means.reshape(h * w, d), covs.reshape(h * w, d, d)


def bhattacharyya_weights(means, covs, *, size=3, beta=0.25, beta_role="temperature",
                          eps=0.01, device=None):
    """Neighbourhood similarity weights of N-pad's module A (eqs. 4-5).

    For each position ``p`` and each neighbour ``q`` in its ``size x size`` window,
    the Bhattacharyya distance between the two Gaussians with the log-determinant term
    dropped (eq. 5), ``D_B(p, q) = 1/8 (mu_p - mu_q)^T S^-1 (mu_p - mu_q)`` with
    ``S = (Sigma_p + Sigma_q) / 2 + eps I`` (the pair's average covariance, as in
    eq. 4), turned into a similarity ``exp(-D_B / beta)`` (``beta_role="temperature"``)
    or ``exp(-beta * D_B)`` (``beta_role="scale"``) and normalised over the window.
    ``D_B`` is symmetric in ``(p, q)``; neighbours outside the map get weight 0.

    Parameters
    ----------
    means : array-like of shape (h, w, d)
    covs : array-like of shape (h, w, d, d)
        Per-position covariances (without the ``eps`` ridge; it is added here).
    size : int, default=3
        Window side length ``s`` (see :func:`window_offsets`).
    beta : float, default=0.25
        Balancing parameter of eq. 4.
    beta_role : {"temperature", "scale"}, default="temperature"
        ``"temperature"`` divides ``D_B`` by ``beta`` (the paper's sentence: "larger
        values of beta imply that more information is used from the neighbourhood");
        ``"scale"`` multiplies it.
    eps : float, default=0.01
        Ridge added to the average covariance.
    device : {"auto", "cpu", "cuda", "cuda:<index>"}, torch.device or None
        Where the pairs' covariances are factorised (None: the CPU).

    Returns
    -------
    weights : Tensor of float32, shape (h, w, size * size)
        Sum to 1 over the last axis; order as :func:`window_offsets`.
    distances : Tensor of float32, shape (h, w, size * size)
        ``D_B`` (``inf`` for neighbours outside the map).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.spatial import bhattacharyya_weights
    >>> means = np.zeros((4, 4, 2), np.float32); means[:, 2:] = 1.0
    >>> covs = np.broadcast_to(np.eye(2, dtype=np.float32), (4, 4, 2, 2))
    >>> w, d = bhattacharyya_weights(means, covs)
    >>> bool(np.allclose(w.sum(-1), 1.0))
    True
    """
    h, w, d, offsets, idx, valid, mu, cov = _windowed_moments(means, covs, size)
    eye = torch.eye(d, dtype=torch.float32)
    dist = torch.full((len(offsets), h * w), float("inf"))
    where = {o: k for k, o in enumerate(offsets)}
    done = set()
    for k, (dy, dx) in enumerate(offsets):
        ok = valid[k]
        if (dy, dx) == (0, 0):
            dist[k] = 0.0
            continue
        if not ok.any() or k in done:
            continue
        p = torch.nonzero(ok).squeeze(1)
        q = idx[k, p]
        # D_B(p, q) = D_B(q, p) bit for bit (the average and the quadratic form are
        # symmetric): the opposite offset, where the window has it, is filled from here
        back = where.get((-dy, -dx))
        avg = 0.5 * (cov[p] + cov[q]) + eps * eye  # average covariance of eq. 4
        dist[k, p] = 0.125 * _quadratic_forms(avg, mu[p] - mu[q], device)  # D_B of eq. 5
        if back is not None:
            dist[back, q] = dist[k, p]
            done.add(back)
    scaled = dist / beta if beta_role == "temperature" else dist * beta
    weights = torch.softmax(-scaled, dim=0)  # exp(-D) normalised; D(p, p) = 0 is finite
    return (weights.T.reshape(h, w, len(offsets)).contiguous(),
            dist.T.reshape(h, w, len(offsets)).contiguous())


def _quadratic_forms(S, v, device=None):
    """``v_i^T S_i^-1 v_i`` for a batch of SPD matrices ``S`` (m, d, d) and vectors ``v``
    (m, d), float32 out.

    One float64 Cholesky factor per matrix (:func:`~.gaussian.cholesky_factors`'s
    precision and its error for a matrix that is not positive definite) and one
    triangular solve with the vector, both in float64: the factor is not rounded to
    float32 between the two.
    """
    L = _cholesky64(S, device)
    z = torch.linalg.solve_triangular(L, as_tensor(v, device=L.device, dtype=torch.float64)
                                      .unsqueeze(-1), upper=False)
    return z.square().sum(dim=(1, 2)).to(torch.float32).cpu()


def weighted_gaussians(means, covs, weights, *, n_samples, size=3):
    """Module A's re-estimated Gaussians (eq. 6) from neighbourhood weights.

    The weighted sample mean and covariance of all nominal features in the window,
    feature ``x_q^i`` weighted by ``w_pq / n``:
    ``mu'_p = sum_q w_pq mu_q`` and
    ``Sigma'_p = sum_q w_pq (Sigma_q + n / (n - 1) (mu_q - mu'_p)(mu_q - mu'_p)^T)``
    (``Sigma_q`` with ``n - 1`` in the denominator; ``n = 1`` uses 1). Computed from
    the per-position moments, without going back to the features.

    Parameters
    ----------
    means : array-like of shape (h, w, d)
    covs : array-like of shape (h, w, d, d)
        Per-position sample covariances (no ridge).
    weights : array-like of shape (h, w, size * size)
        From :func:`bhattacharyya_weights`.
    n_samples : int
        Number of images the moments were computed from.
    size : int, default=3

    Returns
    -------
    means : Tensor of float32, shape (h, w, d)
    covs : Tensor of float32, shape (h, w, d, d)
        Without the ``eps`` ridge.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.spatial import weighted_gaussians
    >>> means = np.random.default_rng(0).normal(size=(3, 3, 2)).astype(np.float32)
    >>> covs = np.broadcast_to(np.eye(2, dtype=np.float32), (3, 3, 2, 2))
    >>> w = np.zeros((3, 3, 9), np.float32); w[..., 4] = 1.0   # centre only
    >>> mu, cov = weighted_gaussians(means, covs, w, n_samples=5)
    >>> bool(np.allclose(mu, means)), bool(np.allclose(cov, covs))
    (True, True)
    """
    h, w, d, offsets, idx, valid, mu, cov = _windowed_moments(means, covs, size)
    wts = _float_tensor(weights).reshape(h * w, len(offsets)).T * valid  # (K, P); outside -> 0
    new_mu = torch.einsum("kp,kpd->pd", wts, mu[idx])
    factor = n_samples / max(n_samples - 1, 1)
    new_cov = torch.zeros_like(cov)
    for k in range(len(offsets)):
        # positions whose weight on this neighbour is exactly 0 (exp(-D_B / beta)
        # underflows: most of them on aligned images) would add +-0: skipped
        p = torch.nonzero(wts[k]).squeeze(1)
        if not len(p):
            continue
        q = idx[k, p]
        diff = mu[q] - new_mu[p]
        # w_pq (Sigma_q + factor diff diff^T), built in one buffer (in place)
        term = cov.index_select(0, q)
        term.baddbmm_(diff[:, :, None], diff[:, None, :], alpha=factor)
        term.mul_(wts[k, p][:, None, None])
        if len(p) == len(new_cov):  # p = every position, in order
            new_cov += term
        else:
            new_cov.index_add_(0, p, term)
    return new_mu.reshape(h, w, d), new_cov.reshape(h, w, d, d)


def shift_maps(maps, shift):
    """Translate feature maps by a (possibly fractional) number of positions.

    ``out[..., y, x] = maps[..., y - sy, x - sx]``, bilinear between positions and
    edge values replicated at the border (``grid_sample`` with border padding).
    A shift by ``-s`` undoes a shift by ``s`` away from the border.

    Parameters
    ----------
    maps : Tensor of shape (n, C, h, w)
    shift : (float, float)
        ``(sy, sx)`` in positions of the map.

    Returns
    -------
    shifted : Tensor of shape (n, C, h, w)

    Examples
    --------
    >>> import torch
    >>> from skad._kernels.spatial import shift_maps
    >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
    >>> shift_maps(x, (0, 1))[0, 0, 0].tolist()
    [0.0, 0.0, 1.0, 2.0]
    >>> [round(v, 4) for v in shift_maps(x, (0, 0.5))[0, 0, 0].tolist()]
    [0.0, 0.5, 1.5, 2.5]
    """
    sy, sx = float(shift[0]), float(shift[1])
    if sy == 0.0 and sx == 0.0:
        return maps
    n, _, h, w = maps.shape
    ys = torch.arange(h, dtype=maps.dtype) - sy
    xs = torch.arange(w, dtype=maps.dtype) - sx
    # align_corners=True: -1 and 1 are the centres of the first and last positions
    gy = 2.0 * ys / (h - 1) - 1.0 if h > 1 else torch.zeros(h, dtype=maps.dtype)
    gx = 2.0 * xs / (w - 1) - 1.0 if w > 1 else torch.zeros(w, dtype=maps.dtype)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    grid = grid.unsqueeze(0).expand(n, h, w, 2)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)
