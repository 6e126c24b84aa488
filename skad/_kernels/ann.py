"""Nearest-neighbour index: exact chunked search, a faiss IVF index, or a pynndescent graph.

:func:`build_index` returns a :class:`NeighborIndex` whose ``method_`` records the
search actually used ("exact", "ivf" or "nndescent"); nothing switches silently
afterwards.

Why faiss IVF for "auto": on PatchCore's 10 % bottle bank (16.4k x 152, 2 cores) an
inverted file with ``2 sqrt(n)`` lists and 8 probes finds the exact nearest
neighbour for 99.7 % of the test patches (mean distance ratio 1.0001) at about
8 ms per image (784 patches), against 95 ms for the exact search, and builds in
0.2 s; pynndescent reached recall 0.85 at 5 ms per image after a 55 s build
(``benchmarks/results/bottle_baselines.md``).
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .knn import _as_groups, _check_k, knn_search

__all__ = ["NeighborIndex", "build_index", "DEFAULT_APPROX_THRESHOLD", "APPROX_METHODS"]

#: bank size (rows) from which ``method="auto"`` builds an approximate (IVF) index
DEFAULT_APPROX_THRESHOLD = 1_000_000

#: approximate searches :func:`build_index` offers
APPROX_METHODS = ("ivf", "nndescent")


def _faiss():
    import faiss
    import torch

    # follow torch's thread setting (dask workers and tests pin it)
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


class NeighborIndex:
    """Euclidean k-NN index over a fixed bank (build it with :func:`build_index`).

    Attributes
    ----------
    bank_ : ndarray of float32, shape (n, d)
    method_ : {"exact", "ivf", "nndescent"}
        The search used by :meth:`query`.
    n_lists_ : int or None
        Inverted lists of the IVF index (``method_ == "ivf"``).
    graph_ : pynndescent.NNDescent or None
        The graph (``method_ == "nndescent"``).
    """

    def __init__(self, bank, method, *, n_lists=None, n_probe=8, n_graph_neighbors=30,
                 epsilon=0.1, random_state=None, device=None, working_memory=None):
        self.bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        self.method_ = method
        self.n_probe = n_probe
        self.epsilon = epsilon
        self.device = device
        self.working_memory = working_memory
        self.graph_ = None
        self.n_lists_ = None
        self._ivf = None
        seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
        n, d = self.bank_.shape
        if method == "ivf":
            faiss = _faiss()
            self.n_lists_ = int(n_lists) if n_lists is not None else max(
                1, min(n // 39, int(round(2 * math.sqrt(n))))
            )
            quantizer = faiss.IndexFlatL2(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, self.n_lists_)
            ivf.cp.seed = int(seed)
            ivf.verbose = False
            ivf.train(self.bank_)
            ivf.add(self.bank_)
            self._ivf = ivf
        elif method == "nndescent":
            from pynndescent import NNDescent

            self.graph_ = NNDescent(
                self.bank_, metric="euclidean", n_neighbors=n_graph_neighbors,
                random_state=seed, low_memory=True,
            )
            self.graph_.prepare()

    # faiss indexes are SWIG objects: pickle them as their serialised bytes
    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("_ivf") is not None:
            state["_ivf"] = _faiss().serialize_index(state["_ivf"])
        return state

    def __setstate__(self, state):
        if state.get("_ivf") is not None:
            state["_ivf"] = _faiss().deserialize_index(state["_ivf"])
        self.__dict__.update(state)

    def _approx(self, q, k):
        """(distances, indices) of the approximate search; -1 / inf where none was found."""
        if self.method_ == "ivf":
            _faiss()  # thread count follows torch's current setting
            self._ivf.nprobe = int(min(self.n_probe, self.n_lists_))
            d2, idx = self._ivf.search(q, int(k))
            dist = np.sqrt(np.maximum(d2, 0.0), dtype=np.float32)
            dist[idx < 0] = np.inf
            return dist, idx.astype(np.int64)
        idx, dist = self.graph_.query(q, k=int(k), epsilon=self.epsilon)
        return dist.astype(np.float32), idx.astype(np.int64)

    def query(self, query, k, *, query_groups=None, bank_groups=None):
        """k nearest bank rows of each query row (see :func:`~skad._kernels.knn.knn_search`).

        With groups, an approximate index is asked for ``k + (largest number of bank
        rows sharing a query's group)`` neighbours and same-group rows are filtered
        out. Query rows for which the approximate search returns fewer than ``k``
        (eligible) neighbours are searched exactly, so every row gets ``k``.

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
            dist, idx = self._approx(q, k)
            qg = bg = None
        else:
            qg, _ = _as_groups(query_groups, len(q), "query_groups", "cpu")
            bg, _ = _as_groups(bank_groups, n, "bank_groups", "cpu")
            _check_k(k, n, qg, bg)
            groups, counts = np.unique(bg, return_counts=True)
            pos = np.clip(np.searchsorted(groups, qg), 0, len(groups) - 1)
            same = np.where(groups[pos] == qg, counts[pos], 0)
            dist, idx = self._approx(q, int(min(n, k + same.max())))
            dist = np.where((idx >= 0) & (bg[np.maximum(idx, 0)] == qg[:, None]), np.inf, dist)
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]
            dist = np.take_along_axis(dist, order, 1)
            idx = np.take_along_axis(idx, order, 1)
        dist, idx = dist[:, : int(k)].astype(np.float32), idx[:, : int(k)].astype(np.int64)
        short = np.flatnonzero(~np.isfinite(dist).all(axis=1))
        if len(short):
            kw = {} if qg is None else {"query_groups": qg[short], "bank_groups": bg}
            dist[short], idx[short] = knn_search(
                q[short], self.bank_, k, device=self.device,
                working_memory=self.working_memory, **kw,
            )
        return dist, idx


def build_index(bank, *, method="auto", approx_threshold=DEFAULT_APPROX_THRESHOLD,
                n_lists=None, n_probe=8, n_graph_neighbors=30, epsilon=0.1,
                random_state=None, device=None, working_memory=None):
    """Build a k-NN index over ``bank``.

    Parameters
    ----------
    bank : array-like of shape (n, d)
    method : {"auto", "exact", "ivf", "nndescent"}, default="auto"
        "exact": chunked brute force (:func:`~skad._kernels.knn.knn_search`);
        "ivf": a faiss inverted-file index (k-means lists, exact distances within
        the ``n_probe`` lists nearest to the query); "nndescent": a pynndescent
        graph; "auto": "ivf" when ``n >= approx_threshold``, else "exact".
    approx_threshold : int, default=1_000_000
        Bank size from which "auto" goes approximate.
    n_lists : int, optional
        IVF lists; default ``round(2 sqrt(n))`` (at most ``n / 39``, faiss's
        minimum of training points per list).
    n_probe : int, default=8
        IVF lists searched per query (higher: better recall, slower query).
    n_graph_neighbors : int, default=30
        Degree of the pynndescent graph (higher: better recall, slower build).
    epsilon : float, default=0.1
        pynndescent's search breadth (higher: better recall, slower query).
    random_state : int, RandomState instance or None
        Seeds the IVF k-means or the graph construction.
    device : {"auto", "cpu", "cuda"}, torch.device or None
        Device of the exact search.
    working_memory : float, optional
        MiB per distance block of the exact search.

    Returns
    -------
    index : NeighborIndex
        ``index.method_`` says which search is used.

    Notes
    -----
    Approximate searches never return a distance below the true nearest-neighbour
    distance: a miss makes a patch look slightly *more* anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.ann import build_index
    >>> index = build_index(np.eye(3), method="exact")
    >>> d, i = index.query(np.array([[0.9, 0.1, 0.0]]), k=1)
    >>> index.method_, i.tolist()
    ('exact', [[0]])
    >>> bank = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    >>> index = build_index(bank, method="ivf", random_state=0)
    >>> index.method_, index.n_lists_, index.query(bank[:3], k=1)[1].ravel().tolist()
    ('ivf', 51, [0, 1, 2])
    """
    if method not in ("auto", "exact") + APPROX_METHODS:
        raise ValueError(
            f"method: expected 'auto', 'exact', 'ivf' or 'nndescent'; got {method!r}"
        )
    if not isinstance(approx_threshold, Integral) or approx_threshold < 1:
        raise ValueError(
            f"approx_threshold: expected a positive int; got {approx_threshold!r}"
        )
    if not isinstance(n_probe, Integral) or n_probe < 1:
        raise ValueError(f"n_probe: expected a positive int; got {n_probe!r}")
    if n_lists is not None and (not isinstance(n_lists, Integral) or n_lists < 1):
        raise ValueError(f"n_lists: expected a positive int or None; got {n_lists!r}")
    bank = np.asarray(bank)
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise ValueError(f"bank: expected a non-empty 2-D array (n, d); got shape {bank.shape}")
    if n_lists is not None and n_lists > bank.shape[0]:
        raise ValueError(
            f"n_lists: expected at most the bank size {bank.shape[0]}; got {n_lists}"
        )
    if method == "auto":
        method = "ivf" if bank.shape[0] >= approx_threshold else "exact"
    return NeighborIndex(
        bank, method, n_lists=n_lists, n_probe=n_probe, n_graph_neighbors=n_graph_neighbors,
        epsilon=epsilon, random_state=random_state, device=device,
        working_memory=working_memory,
    )
