"""Exact k nearest bank rows of a few query rows: one product, or pruning by bounds.

The searches of :mod:`.knn` and :mod:`.ann` are built for many queries at once. An
approximate search's answers sometimes have to be made exact for a few rows only
(PatchCore: each image's highest-scoring patch, and the neighbourhood ``N_b(m*)`` of
eq. 7). :func:`exact_knn` does that against a fixed bank, from
:func:`bank_products` computed once per bank:

- rows given an upper bound on their ``k``-th neighbour distance (e.g. the distance
  an approximate search returned) are pruned (:func:`pruned_knn`): distances in the
  bank's ``BOUND_DIM``-dimensional principal subspace bound the true distances from
  below (the projection is orthonormal), so only the bank rows whose bound is within
  the upper bound can be among the ``k`` nearest, and only those are measured;
- the other rows (and rows with too many candidates) are ranked against the whole
  bank by one product (:func:`rank_against_bank`, the ranking of
  :func:`~skad._kernels.knn.ranking_operand`).

Pruning pays for rows close to the bank (bank rows themselves: a few dozen
candidates); rows far from it (anomalous patches) have too many candidates and go to
the product. Measured figures: ``doc/search.md``.
"""

from __future__ import annotations

import numpy as np

from .ann import principal_directions
from .knn import ranking_operand

__all__ = ["BOUND_DIM", "bank_products", "exact_knn", "pruned_knn", "rank_against_bank"]

#: dimensions of the principal subspace whose distances bound distances to bank rows
#: from below in :func:`pruned_knn`
BOUND_DIM = 32

#: query rows per (rows x bank) block of :func:`pruned_knn`
PRUNE_BLOCK = 256

#: query rows per (bank x rows) product of :func:`exact_knn`
PRODUCT_BLOCK = 1024


def bank_products(bank):
    """What :func:`exact_knn` needs of a bank, computed once per bank.

    Parameters
    ----------
    bank : ndarray of shape (n, d)

    Returns
    -------
    products : dict
        ``bank_m2``, ``norms``: ``-2 bank`` ``(n, d)`` and ``||b||^2`` ``(n, 1)``
        (torch; the rows of :func:`~skad._kernels.knn.ranking_operand`) for
        :func:`rank_against_bank`; ``proj`` (orthonormal columns: the bank's
        ``BOUND_DIM`` leading principal directions), ``bank_z = (bank @ proj)^T`` and
        ``bank_zn = ||bank @ proj||^2`` for the lower bounds of :func:`pruned_knn`.
        Memory: about ``4 n (d + 2 BOUND_DIM)`` bytes.
    """
    import torch

    bank = np.asarray(bank, dtype=np.float32)
    op = ranking_operand(bank)
    out = {"bank_m2": torch.from_numpy(np.ascontiguousarray(op[:-1].T)),
           "norms": torch.from_numpy(op[-1][:, None].copy())}
    proj = torch.from_numpy(principal_directions(bank, BOUND_DIM))
    bank_z = torch.mm(torch.from_numpy(bank), proj)
    out.update(proj=proj, bank_z=bank_z.T.contiguous(),
               bank_zn=torch.linalg.vector_norm(bank_z, dim=1) ** 2)
    return out


def rank_against_bank(q, products):
    """``||b||^2 - 2 q.b`` for every (bank row, row of ``q``), shape ``(n_bank, m)``.

    One product ``(-2 bank) q^T`` with the bank as the tall operand (faster for few
    rows than ``q (-2 bank^T)``), into a numpy-allocated result (numpy asks for huge
    pages for multi-MB buffers, torch does not: first touch is slower).
    """
    import torch

    q = np.array(q, dtype=np.float32, order="C")  # a few rows: copying is cheap
    out = np.empty((products["bank_m2"].shape[0], len(q)), np.float32)
    torch.addmm(products["norms"], products["bank_m2"], torch.from_numpy(q).T,
                out=torch.from_numpy(out))
    return out


def pruned_knn(q, bank, k, upper, products, groups=None):
    """Exact ``k`` nearest bank rows of the rows of ``q``, by pruning.

    ``upper[i]`` must bound the ``k``-th neighbour distance of ``q[i]`` from above
    (e.g. the ``k``-th distance an approximate search returned). Bank rows whose
    lower bound (distance in the principal subspace of :func:`bank_products`) is
    within ``upper`` are measured exactly. With ``groups = (query_groups,
    bank_groups)`` bank rows sharing the query's group are skipped. Rows with more
    than ``n_bank // 16`` candidates come back as -1 / inf: a full search is cheaper.

    Parameters
    ----------
    q : ndarray of shape (m, d)
    bank : ndarray of float32, shape (n, d)
    k : int
    upper : ndarray of shape (m,)
    products : dict
        :func:`bank_products` of ``bank``.
    groups : (ndarray, ndarray) or None

    Returns
    -------
    distances : ndarray of float32, shape (m, k), ascending
    indices : ndarray of int64, shape (m, k)
    """
    import torch

    n = bank.shape[0]
    dist = np.full((len(q), k), np.inf, np.float32)
    idx = np.full((len(q), k), -1, np.int64)
    for s in range(0, len(q), PRUNE_BLOCK):  # bounded (rows x bank) blocks
        e = min(len(q), s + PRUNE_BLOCK)
        qs = np.array(q[s:e], dtype=np.float32, order="C")
        # torch, not numpy, for products at predict time (see skad._kernels.ann)
        z = torch.mm(torch.from_numpy(qs), products["proj"])
        zn = (torch.linalg.vector_norm(z, dim=1) ** 2).numpy()
        lower = np.empty((e - s, n), np.float32)
        torch.addmm(products["bank_zn"], z, products["bank_z"], alpha=-2.0,
                    out=torch.from_numpy(lower))
        lower += zn[:, None]
        # float32 rounding of the bound is far below 1e-4 of the squared norms involved
        slack = 1e-4 * (zn + float(products["bank_zn"].max()))
        keep = lower <= (np.asarray(upper[s:e], np.float32) ** 2 + slack)[:, None]
        if groups is not None:
            keep &= groups[1][None, :] != groups[0][s:e, None]
        count = keep.sum(axis=1)
        few = (count >= k) & (count <= max(k, n // 16))
        keep[~few] = False
        # (flat indices: np.nonzero of the 2-D mask is much slower)
        r, j = np.divmod(np.flatnonzero(keep), n)
        diff = bank[j] - qs[r]
        d2 = np.einsum("ij,ij->i", diff, diff)
        order = np.lexsort((d2, r))  # by row, then distance
        r, j, d2 = r[order], j[order], d2[order]
        ok = np.flatnonzero(few)
        pos = np.searchsorted(r, ok)[:, None] + np.arange(k)
        idx[s + ok] = j[pos]
        dist[s + ok] = np.sqrt(d2[pos])
    return dist, idx


def exact_knn(q, bank, k, products, *, groups=None, upper=None):
    """Exact ``k`` nearest bank rows of a few rows ``q``.

    Rows with an upper bound are pruned (:func:`pruned_knn`); the others, and rows
    with too many candidates, are ranked against the whole bank by one product per
    block of ``PRODUCT_BLOCK`` rows (:func:`rank_against_bank`). Distances are then
    measured directly, ``||q - b||``.

    Parameters
    ----------
    q : ndarray of shape (m, d)
    bank : ndarray of float32, shape (n, d)
    k : int
    products : dict
        :func:`bank_products` of ``bank``.
    groups : (ndarray, ndarray) or None
        ``(query_groups, bank_groups)``: bank rows sharing the query's group are
        skipped.
    upper : ndarray of shape (m,), optional
        Upper bounds on each row's ``k``-th neighbour distance.

    Returns
    -------
    distances : ndarray of float32, shape (m, k), ascending
    indices : ndarray of int64, shape (m, k)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.refine import bank_products, exact_knn
    >>> bank = np.random.default_rng(0).normal(size=(500, 40)).astype(np.float32)
    >>> p = bank_products(bank)
    >>> exact_knn(bank[:3], bank, 1, p)[1].ravel().tolist()
    [0, 1, 2]
    >>> exact_knn(bank[:3], bank, 1, p, upper=np.full(3, 1e-3))[1].ravel().tolist()
    [0, 1, 2]
    """
    import torch

    if upper is None:
        dist = np.full((len(q), k), np.inf, np.float32)
        idx = np.full((len(q), k), -1, np.int64)
    else:
        dist, idx = pruned_knn(q, bank, k, upper, products, groups)
    for s0 in range(0, len(q), PRODUCT_BLOCK):  # the rest, in bounded (rows x bank) blocks
        rest = s0 + np.flatnonzero(idx[s0:s0 + PRODUCT_BLOCK, 0] < 0)
        if not len(rest):
            continue
        d2 = rank_against_bank(q[rest], products)  # (bank, rows)
        if groups is not None:
            d2[groups[1][:, None] == groups[0][None, rest]] = np.inf
        if k == 1:  # (torch's min over the bank axis: faster than numpy's argmin here)
            part = torch.from_numpy(d2).min(dim=0).indices.numpy()[:, None]
        else:
            d2 = d2.T
            part = (np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1]
                    else np.broadcast_to(np.arange(k), (len(rest), k)))
            part = np.take_along_axis(part, np.argsort(
                np.take_along_axis(d2, part, 1), axis=1, kind="stable"), 1)
        diff = q[rest][:, None, :] - bank[part]
        dist[rest] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        idx[rest] = part
    return dist, idx
