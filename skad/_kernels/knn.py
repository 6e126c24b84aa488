"""Chunked exact k-nearest-neighbour search (Euclidean) with group exclusion.

Candidates are ranked with matrix products, ``||b||^2 - 2 q.b`` (``||q||^2`` does
not change a row's order; :func:`ranking_operand`, the ranking every search of
:mod:`skad._kernels` uses), computed chunk by chunk over the queries and, for large
banks, over the bank too, so memory stays bounded whatever the sizes. The distances
of the k selected neighbours are then recomputed directly as ``||q - b||`` (exact to
float32 rounding, and independent of the chunking).
"""

from __future__ import annotations

import numpy as np

from ..utils import resolve_device
from ._convert import as_tensor

__all__ = ["knn_search", "ranking_operand", "same_group_counts"]

# Default working memory (MiB) for one chunk of the distance matrix.
DEFAULT_WORKING_MEMORY = 64


def ranking_operand(bank):
    """``[-2 B^T; ||b||^2]``, shape ``(d + 1, n)``: the one ranking of bank rows.

    For a query ``q``, ``[q, 1] @ ranking_operand(B)`` gives ``||b||^2 - 2 q.b`` for
    every bank row ``b``: ``||q - b||^2`` less ``||q||^2``, which is the same for all
    rows of ``B``, so the order (nearest first) is that of the true distances. One
    matrix product ranks a whole block of queries; the distances of the rows kept are
    then recomputed directly (the products only rank). Every search of
    :mod:`skad._kernels` ranks this way: :func:`knn_search`, the "cells" lists and
    their cell assignment (:mod:`.ann`) and the few-row searches (:mod:`.refine`).

    Parameters
    ----------
    bank : ndarray or torch.Tensor of shape (n, d)
        A numpy bank gives a float32 C-contiguous array (norms by ``einsum``), a tensor
        a tensor on its device.

    Returns
    -------
    operand : ndarray or torch.Tensor of float32, shape (d + 1, n)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.knn import ranking_operand
    >>> bank = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    >>> (np.array([[3.0, 3.0, 1.0]], np.float32) @ ranking_operand(bank)).tolist()
    [[0.0, -17.0]]
    """
    import torch

    if isinstance(bank, torch.Tensor):
        return torch.cat([-2.0 * bank.T, (bank * bank).sum(1)[None]])
    return np.ascontiguousarray(
        np.vstack([-2.0 * bank.T, np.einsum("ij,ij->i", bank, bank)[None]]), dtype=np.float32)


def same_group_counts(query_groups, bank_groups):
    """Number of bank rows sharing each query's group (the rows excluded for it).

    Parameters
    ----------
    query_groups : ndarray of int, shape (m,)
    bank_groups : ndarray of int, shape (n,)

    Returns
    -------
    counts : ndarray of int64, shape (m,)
        ``n - counts`` bank rows are eligible for each query.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.knn import same_group_counts
    >>> same_group_counts(np.array([0, 1, 5]), np.array([0, 0, 1, 2])).tolist()
    [2, 1, 0]
    """
    groups, counts = np.unique(bank_groups, return_counts=True)
    pos = np.minimum(np.searchsorted(groups, query_groups), len(groups) - 1)
    return np.where(groups[pos] == query_groups, counts[pos], 0).astype(np.int64)


def _as_groups(g, n, name, device):
    import torch

    if isinstance(g, torch.Tensor):
        g = g.detach().cpu().numpy()
    g = np.asarray(g)
    if g.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},); got {g.shape}")
    if g.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer group ids; got dtype {g.dtype}")
    return g.astype(np.int64), torch.from_numpy(g.astype(np.int64)).to(device)


def _chunk_sizes(n_query, n_bank, k, chunk_size, bank_chunk_size, working_memory):
    """Query and bank chunk lengths so one (query x bank) float32 block fits the budget."""
    budget = int((DEFAULT_WORKING_MEMORY if working_memory is None else working_memory) * 2**20)
    # About 2 float32 values per distance-matrix entry (the block and a mask or topk
    # scratch), so one block of (mq, mb) costs about 8 * mq * mb bytes.
    if bank_chunk_size is None:
        bank_chunk_size = min(n_bank, max(k, 4096, budget // (8 * 256)))
    # a chunk must hold k candidates so the per-chunk top-k can be merged
    bank_chunk_size = max(int(bank_chunk_size), k)
    if chunk_size is None:
        chunk_size = max(1, budget // (8 * min(bank_chunk_size, n_bank)))
    return max(int(chunk_size), 1), bank_chunk_size


def _check_k(k, n_bank, qg_np, bg_np):
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected a positive int; got {k!r}")
    if qg_np is None:
        if k > n_bank:
            raise ValueError(f"k={k} exceeds the number of bank entries ({n_bank})")
        return
    eligible = n_bank - same_group_counts(qg_np, bg_np)
    if eligible.min() < k:
        raise ValueError(
            f"k={k} exceeds the number of eligible bank entries for some queries "
            f"(as few as {int(eligible.min())} of {n_bank}: bank entries sharing the "
            "query's group are excluded)"
        )


def knn_search(
    query,
    bank,
    k,
    *,
    query_groups=None,
    bank_groups=None,
    chunk_size=None,
    bank_chunk_size=None,
    working_memory=None,
    device=None,
    return_tensors=False,
):
    """Exact k nearest neighbours of each query row in ``bank`` (Euclidean).

    Parameters
    ----------
    query : array-like or torch.Tensor of shape (m, d)
    bank : array-like or torch.Tensor of shape (n, d)
    k : int
        Number of neighbours (``k = 1`` uses a min-reduction instead of ``topk``).
    query_groups, bank_groups : array-like of int, shape (m,) and (n,), optional
        Exclusion groups: a bank entry is never returned for a query with the same
        group id. Group = patch id excludes the query itself (``bank is query``);
        group = image id excludes every patch of the query's own image. Both or
        neither must be given.
    chunk_size : int, optional
        Queries per chunk; by default derived from ``working_memory``.
    bank_chunk_size : int, optional
        Bank rows per chunk; by default the whole bank up to about
        ``working_memory / (8 * 256)`` rows (large banks are chunked and the
        per-chunk top-k merged).
    working_memory : float, optional
        Budget in MiB for one (query chunk x bank chunk) block; default 64. Peak extra
        memory is about ``8 * chunk_size * bank_chunk_size`` bytes plus the inputs
        as float32.
    device : {"auto", "cpu", "cuda"} or torch.device, optional
        Where to compute; default: the input tensors' device, CPU for numpy.
    return_tensors : bool, default=False
        Return torch tensors on ``device`` instead of numpy arrays.

    Returns
    -------
    distances : ndarray of float32, shape (m, k)
        Ascending Euclidean distances.
    indices : ndarray of int64, shape (m, k)
        Row indices into ``bank``.

    Raises
    ------
    ValueError
        If ``k`` exceeds the number of bank entries eligible for some query, the
        dimensions differ, or only one of the group arrays is given.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.knn import knn_search
    >>> bank = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    >>> d, i = knn_search(np.array([[0.9, 0.0]]), bank, k=2)
    >>> i.tolist(), np.round(d.astype(float), 3).tolist()
    ([[1, 0]], [[0.1, 0.9]])
    >>> d, i = knn_search(bank, bank, k=1, query_groups=np.arange(3), bank_groups=np.arange(3))
    >>> i.ravel().tolist()          # itself excluded
    [1, 0, 1]
    """
    import torch

    dev = resolve_device(device, query, bank)
    q = as_tensor(query, "query", ndim=2, device=dev, dtype=torch.float32).contiguous()
    b = as_tensor(bank, "bank", ndim=2, device=dev, dtype=torch.float32).contiguous()
    if q.shape[1] != b.shape[1]:
        raise ValueError(
            f"query has {q.shape[1]} features but bank has {b.shape[1]}; expected the same"
        )
    if b.shape[0] == 0:
        raise ValueError("bank: expected at least one row; got an empty bank")
    if (query_groups is None) != (bank_groups is None):
        raise ValueError(
            "query_groups and bank_groups: give both (exclusion by group) or neither"
        )
    m, n = q.shape[0], b.shape[0]
    qg_np = bg_np = qg = bg = None
    if query_groups is not None:
        qg_np, qg = _as_groups(query_groups, m, "query_groups", dev)
        bg_np, bg = _as_groups(bank_groups, n, "bank_groups", dev)
    _check_k(k, n, qg_np, bg_np)
    k = int(k)

    mq, mb = _chunk_sizes(m, n, k, chunk_size, bank_chunk_size, working_memory)
    b_aug = ranking_operand(b)  # [q, 1] @ b_aug ranks the bank rows for q
    out_d = torch.empty((m, k), dtype=torch.float32, device=dev)
    out_i = torch.empty((m, k), dtype=torch.int64, device=dev)
    inf = float("inf")
    with torch.inference_mode():
        for qs in range(0, m, mq):
            qe = min(qs + mq, m)
            qc = q[qs:qe]
            q_aug = torch.cat([qc, torch.ones((qe - qs, 1), dtype=qc.dtype, device=dev)], 1)
            best_d = best_i = None
            for bs in range(0, n, mb):
                be = min(bs + mb, n)
                d2 = q_aug @ b_aug[:, bs:be]
                if qg is not None:
                    d2.masked_fill_(qg[qs:qe, None] == bg[None, bs:be], inf)
                kk = min(k, be - bs)
                if kk == 1:
                    vals, idx = d2.min(dim=1, keepdim=True)
                else:
                    vals, idx = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
                idx = idx + bs
                if best_d is None:
                    best_d, best_i = vals, idx
                else:
                    cat_d = torch.cat([best_d, vals], 1)
                    cat_i = torch.cat([best_i, idx], 1)
                    if k == 1:
                        best_d, pos = cat_d.min(dim=1, keepdim=True)
                    else:
                        best_d, pos = torch.topk(cat_d, k, dim=1, largest=False, sorted=True)
                    best_i = torch.gather(cat_i, 1, pos)
            # The GEMM form only ranks the candidates: the returned distances are
            # recomputed directly, ||q - b||, which avoids its cancellation error and
            # does not depend on how the queries were batched.
            diff = qc[:, None, :] - b[best_i]
            dist = diff.square_().sum(-1).sqrt_()
            if k > 1:
                dist, pos = torch.sort(dist, dim=1, stable=True)
                best_i = torch.gather(best_i, 1, pos)
            out_d[qs:qe] = dist
            out_i[qs:qe] = best_i
    if return_tensors:
        return out_d, out_i
    return out_d.cpu().numpy(), out_i.cpu().numpy()
