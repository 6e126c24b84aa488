"""Exact nearest bank row of each query by blocked products, compiled (CPU).

:func:`~skad._kernels.knn.knn_search` does the same ranking in torch, one chunked
product for all queries. On the CPU this loop instead gives each thread a block of
queries and runs the products ``q_block bank_block^T`` through scipy's BLAS with
one BLAS thread (numba calls it without the GIL), keeping each (queries x bank block)
product in cache while it takes the row minima. No BLAS worker threads are left
spinning after the call (see ``doc/detectors.md`` on numpy's OpenBLAS), and a product
of a few hundred rows against ~16k centres runs at OpenBLAS speed.

The ranking is ``||b||^2 - 2 q.b`` (:func:`~skad._kernels.knn.ranking_operand`); the
distance returned is measured again directly, ``||q - b||``, as ``knn_search`` does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nearest_rows"]

#: most queries per block (one thread's product; fewer rows ran at lower BLAS speed)
#: and bank rows per product
QUERY_BLOCK = 256
BANK_BLOCK = 2048

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from numba import njit, prange

    @njit(parallel=True, fastmath={"reassoc", "contract", "arcp", "nsz"}, cache=True)
    def nearest(q, bank, bank_sq, query_block, bank_block):
        m, n = q.shape[0], bank.shape[0]
        out = np.empty(m, np.int64)
        n_blocks = (m + query_block - 1) // query_block
        for b in prange(n_blocks):
            s = b * query_block
            e = min(m, s + query_block)
            best = np.full(e - s, np.inf, np.float32)
            arg = np.zeros(e - s, np.int64)
            for c0 in range(0, n, bank_block):
                c1 = min(n, c0 + bank_block)
                prod = np.dot(q[s:e], bank[c0:c1].T)
                for i in range(e - s):
                    row = prod[i]
                    low = np.float32(np.inf)
                    for j in range(c1 - c0):  # the ranking, stored, and its minimum ...
                        row[j] = bank_sq[c0 + j] - np.float32(2.0) * row[j]
                        low = min(low, row[j])
                    if low < best[i]:
                        for j in range(c1 - c0):  # ... then its first position
                            if row[j] == low:
                                best[i] = low
                                arg[i] = c0 + j
                                break
            out[s:e] = arg
        return out

    _KERNEL = nearest
    return _KERNEL


def nearest_rows(query, bank, *, bank_sq=None, n_threads=1):
    """Exact nearest ``bank`` row of each ``query`` row (Euclidean), on the CPU.

    Parameters
    ----------
    query : ndarray of shape (m, d)
    bank : ndarray of shape (n, d)
    bank_sq : ndarray of float32, shape (n,), optional
        ``||b||^2`` of the bank rows (computed when not given).
    n_threads : int, default=1
        Threads over blocks of queries.

    Returns
    -------
    distances : ndarray of float32, shape (m,)
        ``||q - b||`` of the nearest row, measured directly.
    indices : ndarray of int64, shape (m,)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.nearest import nearest_rows
    >>> bank = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    >>> d, i = nearest_rows(np.array([[0.9, 0.0], [4.0, 4.0]]), bank)
    >>> i.tolist(), np.round(d.astype(float), 3).tolist()
    ([1, 2], [0.1, 1.414])
    """
    import numba

    from ..utils._threads import _pools

    q = np.ascontiguousarray(query, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    if q.ndim != 2 or bank.ndim != 2 or q.shape[1] != bank.shape[1]:
        raise ValueError(
            f"query, bank: expected 2-D arrays with the same number of columns; got shapes "
            f"{q.shape} and {bank.shape}")
    if bank.shape[0] == 0:
        raise ValueError("bank: expected at least one row; got an empty bank")
    if bank_sq is None:
        bank_sq = np.einsum("ij,ij->i", bank, bank)
    if len(q) == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    with _pools().limit(limits=1, user_api="blas"):
        # equal blocks, a multiple of the threads (numba splits the blocks evenly)
        threads = max(1, int(n_threads))
        n_blocks = threads * -(-len(q) // (threads * QUERY_BLOCK))
        block = -(-len(q) // n_blocks)
        idx = _kernel()(q, bank, np.ascontiguousarray(bank_sq, np.float32), block, BANK_BLOCK)
    diff = q - bank[idx]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)), idx
