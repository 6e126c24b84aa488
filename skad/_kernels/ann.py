"""Nearest-neighbour index: exact chunked search or an approximate pynndescent graph.

:func:`build_index` returns a :class:`NeighborIndex` whose ``method_`` records the
search actually used ("exact" or "approx"); nothing switches silently afterwards.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .knn import _as_groups, _check_k, knn_search

__all__ = ["NeighborIndex", "build_index", "DEFAULT_APPROX_THRESHOLD"]

#: bank size (rows) from which ``method="auto"`` builds an approximate index
DEFAULT_APPROX_THRESHOLD = 1_000_000


class NeighborIndex:
    """Euclidean k-NN index over a fixed bank (build it with :func:`build_index`).

    Attributes
    ----------
    bank_ : ndarray of float32, shape (n, d)
    method_ : {"exact", "approx"}
        The search used by :meth:`query`.
    graph_ : pynndescent.NNDescent or None
        The approximate index (``method_ == "approx"``).
    """

    def __init__(self, bank, method, *, n_graph_neighbors=30, epsilon=0.1,
                 random_state=None, device=None, working_memory=None):
        self.bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        self.method_ = method
        self.epsilon = epsilon
        self.device = device
        self.working_memory = working_memory
        self.graph_ = None
        if method == "approx":
            from pynndescent import NNDescent

            seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
            self.graph_ = NNDescent(
                self.bank_, metric="euclidean", n_neighbors=n_graph_neighbors,
                random_state=seed, low_memory=True,
            )
            self.graph_.prepare()

    def query(self, query, k, *, query_groups=None, bank_groups=None):
        """k nearest bank rows of each query row (see :func:`~skad._kernels.knn.knn_search`).

        With groups and ``method_ == "approx"``, the graph is asked for
        ``k + (largest number of bank rows sharing a query's group)`` neighbours and
        same-group rows are filtered out, so exactly ``k`` eligible neighbours remain.

        Returns
        -------
        distances : ndarray of float32, shape (m, k), ascending
        indices : ndarray of int64, shape (m, k)
        """
        if self.method_ == "exact":
            return knn_search(
                query, self.bank_, k, query_groups=query_groups, bank_groups=bank_groups,
                device=self.device, working_memory=self.working_memory,
            )
        q = np.ascontiguousarray(query, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.bank_.shape[1]:
            raise ValueError(
                f"query: expected shape (m, {self.bank_.shape[1]}); got {q.shape}"
            )
        n = self.bank_.shape[0]
        if (query_groups is None) != (bank_groups is None):
            raise ValueError("query_groups and bank_groups: give both or neither")
        if query_groups is None:
            _check_k(k, n, None, None)
            idx, dist = self.graph_.query(q, k=int(k), epsilon=self.epsilon)
            return dist.astype(np.float32), idx.astype(np.int64)
        qg, _ = _as_groups(query_groups, len(q), "query_groups", "cpu")
        bg, _ = _as_groups(bank_groups, n, "bank_groups", "cpu")
        _check_k(k, n, qg, bg)
        groups, counts = np.unique(bg, return_counts=True)
        pos = np.clip(np.searchsorted(groups, qg), 0, len(groups) - 1)
        same = np.where(groups[pos] == qg, counts[pos], 0)
        k_over = int(min(n, k + same.max()))
        idx, dist = self.graph_.query(q, k=k_over, epsilon=self.epsilon)
        bad = bg[idx] == qg[:, None]
        dist = np.where(bad, np.inf, dist)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(dist, order, 1).astype(np.float32),
                np.take_along_axis(idx, order, 1).astype(np.int64))


def build_index(bank, *, method="auto", approx_threshold=DEFAULT_APPROX_THRESHOLD,
                n_graph_neighbors=30, epsilon=0.1, random_state=None, device=None,
                working_memory=None):
    """Build a k-NN index over ``bank``.

    Parameters
    ----------
    bank : array-like of shape (n, d)
    method : {"auto", "exact", "approx"}, default="auto"
        "exact": chunked brute force (:func:`~skad._kernels.knn.knn_search`);
        "approx": a pynndescent graph; "auto": "approx" when ``n >= approx_threshold``.
    approx_threshold : int, default=1_000_000
        Bank size from which "auto" goes approximate.
    n_graph_neighbors : int, default=30
        Degree of the pynndescent graph (higher: better recall, slower build).
    epsilon : float, default=0.1
        pynndescent's search breadth (higher: better recall, slower query).
    random_state : int, RandomState instance or None
        Seeds the graph construction.
    device : {"auto", "cpu", "cuda"}, torch.device or None
        Device of the exact search.
    working_memory : float, optional
        MiB per distance block of the exact search.

    Returns
    -------
    index : NeighborIndex
        ``index.method_`` says which search is used.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.ann import build_index
    >>> index = build_index(np.eye(3), method="exact")
    >>> d, i = index.query(np.array([[0.9, 0.1, 0.0]]), k=1)
    >>> index.method_, i.tolist()
    ('exact', [[0]])
    """
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method: expected 'auto', 'exact' or 'approx'; got {method!r}")
    if not isinstance(approx_threshold, Integral) or approx_threshold < 1:
        raise ValueError(
            f"approx_threshold: expected a positive int; got {approx_threshold!r}"
        )
    bank = np.asarray(bank)
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ValueError(f"bank: expected a non-empty 2-D array (n, d); got shape {bank.shape}")
    if method == "auto":
        method = "approx" if bank.shape[0] >= approx_threshold else "exact"
    return NeighborIndex(
        bank, method, n_graph_neighbors=n_graph_neighbors, epsilon=epsilon,
        random_state=random_state, device=device, working_memory=working_memory,
    )
