"""Nearest-neighbour index: exact chunked search, candidate-list "cells", faiss IVF, pynndescent.

:func:`build_index` returns a :class:`NeighborIndex` whose ``method_`` records the
search actually used ("exact", "cells", "ivf" or "nndescent"); nothing switches
silently afterwards.

The exact search and "cells" rank candidates by
:func:`~skad._kernels.knn.ranking_operand`; every search returns distances computed
directly between the query and the rows found. "cells" ranks a whole cell's queries
with one matrix product (faiss IVF scans list by list per query); a "coarse" query
(``query(..., coarse=True)``: its cell's own rows only) needs fewer products. "auto"
keeps faiss IVF for very large banks (its memory is the bank's; "cells" holds each row
2-4 times). Recall and speed of each search on bottle: ``doc/search.md``.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..utils import seed_from
from ..utils._loading import loaded_device
from .knn import (DEFAULT_WORKING_MEMORY, _as_groups, _check_k, knn_search, ranking_operand,
                  same_group_counts)

__all__ = ["NeighborIndex", "build_index", "DEFAULT_APPROX_THRESHOLD", "APPROX_METHODS"]

#: bank size (rows) from which ``method="auto"`` builds an approximate (IVF) index
DEFAULT_APPROX_THRESHOLD = 1_000_000

#: approximate searches :func:`build_index` offers
APPROX_METHODS = ("cells", "ivf", "nndescent")


def _faiss():
    import faiss
    import torch

    # follow torch's thread setting (dask workers and tests pin it)
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


#: dimensions of the principal subspace in which "cells" assigns queries to cells
CELL_ASSIGN_DIM = 32


def _assign(x, cells):
    """Cell of each row of ``x`` (a float32 torch tensor): nearest centroid in the
    principal subspace."""
    import torch

    proj, shift, caug = (None if v is None else torch.from_numpy(v) for v in (
        cells["proj"], cells["shift"], cells["centroids_aug"]))
    out = np.empty(len(x), np.int64)
    for i in range(0, len(x), 2048):  # small blocks stay in cache (doc/search.md)
        z = x[i:i + 2048]
        if proj is not None:
            z = torch.mm(z, proj)
            z -= shift
        out[i:i + 2048] = torch.addmm(caug[-1], z, caug[:-1]).numpy().argmin(axis=1)
    return out


def principal_directions(X, p):
    """The ``min(p, d)`` leading principal directions of the rows of ``X``: a float32
    ``(d, p)`` matrix with orthonormal columns (eigenvectors of the covariance)."""
    d = X.shape[1]
    cov = np.cov(X, rowvar=False, dtype=np.float64).reshape(d, d)
    return np.ascontiguousarray(np.linalg.eigh(cov)[1][:, ::-1][:, :min(p, d)],
                                dtype=np.float32)


def _build_cells(bank, n_lists, n_neighbors, seed):
    """Candidate lists of the "cells" search (see :func:`build_index`).

    k-means cells (faiss), rows assigned to the nearest centroid in the bank's
    ``CELL_ASSIGN_DIM``-dimensional principal subspace (queries are assigned the
    same way, at a fifth of the cost on 152 channels); each cell's list holds its
    own rows and the ``n_neighbors`` nearest bank rows of each of them (found with a
    faiss IVF search at 8 probes; they only decide which rows a list holds, never a
    returned distance), the cell's own rows first. A list is stored as
    ``[-2 B^T; ||b||^2]`` (``d + 1`` rows) so that one matrix product of the queries
    with a column of ones appended ranks a cell's queries against it.
    """
    import torch

    faiss = _faiss()
    n, d = bank.shape
    quantizer = faiss.IndexFlatL2(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, n_lists)
    ivf.cp.seed = int(seed)
    ivf.verbose = False
    ivf.train(bank)
    ivf.add(bank)
    centroids = quantizer.reconstruct_n(0, n_lists)
    proj = shift = None
    if d > CELL_ASSIGN_DIM:
        mean = bank.mean(axis=0, dtype=np.float64)
        proj = principal_directions(bank, CELL_ASSIGN_DIM)
        shift = (mean @ proj).astype(np.float32)
        centroids = centroids @ proj - shift
    cells = {"proj": proj, "shift": shift, "centroids_aug": ranking_operand(centroids)}
    cell = _assign(torch.from_numpy(bank), cells)
    parts, rows = [cell], [np.arange(n, dtype=np.int64)]
    t = min(int(n_neighbors), n - 1)
    if t > 0:
        ivf.nprobe = min(8, n_lists)
        nn = ivf.search(bank, t + 1)[1]  # the row itself comes first: t others follow
        parts.append(np.repeat(cell, t + 1))
        rows.append(nn.ravel().astype(np.int64))
    parts, rows = np.concatenate(parts), np.concatenate(rows)
    key = np.unique(parts[rows >= 0] * n + rows[rows >= 0])  # sorted by cell, then row
    ids, owner = key % n, key // n
    # in each list the cell's own rows first (the "coarse" search ranks only those)
    ids = ids[np.lexsort((ids, cell[ids] != owner, owner))]
    offsets = np.searchsorted(owner, np.arange(n_lists + 1))
    n_own = np.bincount(cell, minlength=n_lists)
    blocks = []
    for c in range(n_lists):
        blocks.append(ranking_operand(bank[ids[offsets[c]:offsets[c + 1]]]))
    cells.update(ids=ids, offsets=offsets, blocks=blocks, n_own=n_own)
    return cells


def _row_distances(q, bank, idx, budget):
    """``||q_i - bank[idx_ij]||`` (float32; inf where ``idx_ij < 0``), in bounded chunks.

    ``q`` and ``bank`` are float32 torch tensors, ``idx`` an int64 array.
    """
    import torch

    m, k = idx.shape
    d = q.shape[1]
    out = np.empty((m, k), np.float32)
    step = max(1, budget // (4 * k * d))
    for s in range(0, m, step):
        i = torch.from_numpy(np.maximum(idx[s:s + step], 0).reshape(-1))
        diff = bank.index_select(0, i).view(-1, k, d)
        diff -= q[s:s + step, None, :]
        out[s:s + step] = torch.linalg.vector_norm(diff, dim=2).numpy()
    out[idx < 0] = np.inf
    return out


#: rows per batch of the "cells" search (gathered, ranked, then given exact distances
#: while in cache; one batch per cell costs more in call overhead)
FLUSH = 4096


def _blocked(qg, bg, allowed):
    """Bank rows (groups ``bg``) a query of group ``qg`` may not return: the same group,
    or with ``allowed`` (query group x bank group, bool) the pairs not allowed."""
    if allowed is None:
        return bg[None, :] == qg[:, None]
    return ~allowed[qg[:, None], bg[None, :]]


def _query_cells(cells, bank, q, k, working_memory, query_groups=None, bank_groups=None,
                 coarse=False, allowed=None):
    """(distances, indices) of the "cells" search; -1 / inf where a list was too short.

    With groups, candidates sharing the query's group (with ``allowed``: candidates
    whose group pair is not allowed, :func:`_blocked`) are skipped inside the lists.
    ``coarse``: each query is ranked against its cell's own rows only.
    """
    import torch

    budget = int((DEFAULT_WORKING_MEMORY if working_memory is None else working_memory)
                 * 2**20)
    blocks, offsets, ids = cells["blocks"], cells["offsets"], cells["ids"]
    sizes = cells["n_own"] if coarse else np.diff(offsets)
    m, d = q.shape
    # torch.from_numpy shares memory (and warns on read-only arrays: those are copied)
    q_t = torch.from_numpy(q if q.flags.writeable else q.copy())
    bank_t = torch.from_numpy(bank)
    cell = _assign(q_t, cells)
    order = np.argsort(cell, kind="stable")
    order_t = torch.from_numpy(order)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=len(blocks)))])
    qg = None if query_groups is None else query_groups[order]
    # results in cell order
    found = np.full((m, k), -1, np.int64)
    fdist = np.full((m, k), np.inf, np.float32)
    # A batch of >= FLUSH rows in cell order is gathered piece by piece (<= 1024 rows
    # of one cell) into a small buffer with a column of ones (for the lists' norm
    # row), ranked, then given exact distances while it is in cache: no sorted copy
    # of all the queries is made.
    scratch = torch.from_numpy(np.empty((FLUSH + 1024, d + 1), np.float32))
    scratch[:, d] = 1.0
    start = fill = 0  # sorted position of the batch's first row; rows in the batch
    for c in np.flatnonzero(np.diff(bounds)):
        nb = int(sizes[c])
        block = torch.from_numpy(blocks[c][:, :nb])  # own rows: a strided view
        cand = ids[offsets[c]:offsets[c] + nb]
        # at most 1024 rows per product: the (rows x list) block stays in cache for
        # the argmin (uncapped blocks were slower: doc/search.md); an empty list leaves
        # its rows at -1 (searched exactly afterwards)
        step = max(1, min(1024, budget // (4 * max(nb, 1))))
        for s in range(bounds[c], bounds[c + 1], step):
            e = min(bounds[c + 1], s + step)
            if fill + e - s > len(scratch):
                fdist[start:s] = _row_distances(scratch[:fill, :d], bank_t, found[start:s],
                                                budget)
                start, fill = s, 0
            rows = scratch[fill:fill + e - s]
            torch.index_select(q_t, 0, order_t[s:e], out=rows[:, :d])
            fill += e - s
            if nb == 0:
                continue
            # ||b||^2 - 2 q.b ranks each row's candidates (||q||^2 is constant)
            dist2 = torch.mm(rows, block).numpy()
            if qg is not None:
                dist2[_blocked(qg[s:e], bank_groups[cand], allowed)] = np.inf
            kk = min(k, nb)
            if kk == 1:
                part = dist2.argmin(axis=1)[:, None]
            elif kk < nb:
                part = np.argpartition(dist2, kk - 1, axis=1)[:, :kk]
            else:
                part = np.broadcast_to(np.arange(nb), (e - s, nb))
            found[s:e, :kk] = cand[part]
            if qg is not None:  # all-excluded rows found nothing
                ok = np.isfinite(np.take_along_axis(dist2, part, 1))
                found[s:e, :kk] = np.where(ok, found[s:e, :kk], -1)
    if fill:
        fdist[start:m] = _row_distances(scratch[:fill, :d], bank_t, found[start:m], budget)
    idx = np.empty_like(found)
    dist = np.empty_like(fdist)
    idx[order] = found
    dist[order] = fdist
    if k > 1:  # each row's k candidates by exact distance
        pos = np.argsort(dist, axis=1, kind="stable")
        dist, idx = np.take_along_axis(dist, pos, 1), np.take_along_axis(idx, pos, 1)
    return dist, idx


class NeighborIndex:
    """Euclidean k-NN index over a fixed bank (build it with :func:`build_index`).

    Attributes
    ----------
    bank_ : ndarray of float32, shape (n, d)
    method_ : {"exact", "cells", "ivf", "nndescent"}
        The search used by :meth:`query`.
    n_lists_ : int or None
        Inverted lists of the IVF index (``method_ == "ivf"``), or cells
        (``method_ == "cells"``).
    graph_ : pynndescent.NNDescent or None
        The graph (``method_ == "nndescent"``).
    cell_of_ : ndarray of int64, shape (n,) or None
        The cell each bank row lies in (``method_ == "cells"``; as :meth:`assign`).
    list_sizes_ : ndarray of int64, shape (n_lists_,) or None
        Bank rows in each cell's candidate list: the cell's own rows and their
        ``n_list_neighbors`` nearest rows (``method_ == "cells"``).
    """

    def __init__(self, bank, method, *, n_lists=None, n_probe=8, n_graph_neighbors=30,
                 n_list_neighbors=32, epsilon=0.1, random_state=None, device=None,
                 working_memory=None):
        self.bank_ = np.ascontiguousarray(bank, dtype=np.float32)
        if not self.bank_.flags.writeable:  # torch.from_numpy needs writeable memory
            self.bank_ = self.bank_.copy()
        self.method_ = method
        self.n_probe = n_probe
        self.epsilon = epsilon
        self.device = device
        self.working_memory = working_memory
        self.n_list_neighbors = n_list_neighbors
        self.graph_ = None
        self.n_lists_ = None
        self._ivf = None
        self._cells = None
        seed = seed_from(random_state)  # faiss, pynndescent and the cells take an int
        n, d = self.bank_.shape
        if method == "cells":
            self.n_lists_ = int(n_lists) if n_lists is not None else max(
                1, min(n // 39, int(round(math.sqrt(n))))
            )
            self._cells = _build_cells(self.bank_, self.n_lists_, int(n_list_neighbors), seed)
        elif method == "ivf":
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
        # an index built on a GPU searches on the CPU where there is none (its owner warns)
        state["device"] = loaded_device(state.get("device"))
        self.__dict__.update(state)

    # the "cells" structure stays one private dict (what _query_cells reads); these
    # views of it are computed, so pickles of any version have them
    @property
    def cell_of_(self):
        if self._cells is None:
            return None
        c = self._cells
        out = np.empty(len(self.bank_), np.int64)
        for cell, (start, n_own) in enumerate(zip(c["offsets"][:-1], c["n_own"])):
            out[c["ids"][start:start + n_own]] = cell
        return out

    @property
    def list_sizes_(self):
        return None if self._cells is None else np.diff(self._cells["offsets"])

    def assign(self, X):
        """The cell each row of ``X`` falls in (``method_ == "cells"``).

        Queries and bank rows alike go to the nearest k-means centroid in the bank's
        principal subspace; :meth:`query` with ``coarse=True`` ranks only the rows of
        that cell.

        Parameters
        ----------
        X : array-like of shape (m, d)

        Returns
        -------
        cells : ndarray of int64, shape (m,)
        """
        import torch

        if self._cells is None:
            raise ValueError(
                f"assign: cells exist only for method='cells'; this index is {self.method_!r}"
            )
        q = np.ascontiguousarray(X, dtype=np.float32).reshape(-1, self.bank_.shape[1])
        return _assign(torch.from_numpy(q.copy() if not q.flags.writeable else q),
                       self._cells)

    def _approx(self, q, k, coarse=False):
        """(distances, indices) of the approximate search; -1 / inf where none was found."""
        if self.method_ == "cells":
            return _query_cells(self._cells, self.bank_, q, int(k), self.working_memory,
                                coarse=coarse)
        if self.method_ == "ivf":
            _faiss()  # thread count follows torch's current setting
            self._ivf.nprobe = int(min(self.n_probe, self.n_lists_))
            d2, idx = self._ivf.search(q, int(k))
            dist = np.sqrt(np.maximum(d2, 0.0), dtype=np.float32)
            dist[idx < 0] = np.inf
            return dist, idx.astype(np.int64)
        idx, dist = self.graph_.query(q, k=int(k), epsilon=self.epsilon)
        return dist.astype(np.float32), idx.astype(np.int64)

    def _approx_excluding(self, q, k, qg, bg):
        """Approximate search with group exclusion: over-query, then filter."""
        n = self.bank_.shape[0]
        dist, idx = self._approx(q, int(min(n, k + same_group_counts(qg, bg).max())))
        dist = np.where((idx >= 0) & (bg[np.maximum(idx, 0)] == qg[:, None]), np.inf, dist)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        dist = np.take_along_axis(dist, order, 1)
        idx = np.take_along_axis(idx, order, 1)
        return dist, idx

    def query(self, query, k, *, query_groups=None, bank_groups=None, coarse=False,
              allowed=None):
        """k nearest bank rows of each query row (see :func:`~skad._kernels.knn.knn_search`).

        With groups, "cells" skips same-group rows inside its lists; "ivf" and
        "nndescent" are asked for ``k + (largest number of bank rows sharing a
        query's group)`` neighbours and same-group rows are filtered out. Query rows
        for which the approximate search returns fewer than ``k`` (eligible)
        neighbours are searched exactly, so every row gets ``k``.

        ``coarse=True`` asks for a cheaper search whose distances are still exact
        distances to the rows returned, hence upper bounds on the true ones: "cells"
        ranks a query against its cell's own rows only (without the neighbours'
        rows; its recall: ``doc/search.md``); the other searches ignore it.

        ``allowed`` (bool, ``(n_query_groups, n_bank_groups)``, with both group arrays
        of ids in those ranges) restricts each query to the bank rows whose group pair
        is allowed instead of excluding its own group (SPADE: a test image's patches
        against the patches of its nearest training images); "exact" and "cells" only.

        Returns
        -------
        distances : ndarray of float32, shape (m, k), ascending
        indices : ndarray of int64, shape (m, k)
        """
        if allowed is not None:
            return self._query_allowed(query, k, query_groups, bank_groups, allowed, coarse)
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
            dist, idx = self._approx(q, k, coarse)
            qg = bg = None
        else:
            qg, _ = _as_groups(query_groups, len(q), "query_groups", "cpu")
            bg, _ = _as_groups(bank_groups, n, "bank_groups", "cpu")
            _check_k(k, n, qg, bg)
            if self.method_ == "cells":  # skips same-group rows inside the lists
                dist, idx = _query_cells(self._cells, self.bank_, q, int(k),
                                         self.working_memory, qg, bg, coarse)
            else:
                dist, idx = self._approx_excluding(q, k, qg, bg)
        dist, idx = dist[:, : int(k)].astype(np.float32), idx[:, : int(k)].astype(np.int64)
        short = np.flatnonzero(~np.isfinite(dist).all(axis=1))
        if len(short):
            kw = {} if qg is None else {"query_groups": qg[short], "bank_groups": bg}
            dist[short], idx[short] = knn_search(
                q[short], self.bank_, k, device=self.device,
                working_memory=self.working_memory, **kw,
            )
        return dist, idx

    def _query_allowed(self, query, k, query_groups, bank_groups, allowed, coarse):
        """:meth:`query` restricted to the allowed (query group, bank group) pairs."""
        if self.method_ not in ("exact", "cells"):
            raise ValueError(
                f"allowed: supported by the 'exact' and 'cells' searches; this index is "
                f"{self.method_!r}"
            )
        q = np.ascontiguousarray(query, dtype=np.float32)
        n = self.bank_.shape[0]
        if q.ndim != 2 or q.shape[1] != self.bank_.shape[1]:
            raise ValueError(f"query: expected shape (m, {self.bank_.shape[1]}); got {q.shape}")
        if query_groups is None or bank_groups is None:
            raise ValueError("allowed: give query_groups and bank_groups with it")
        qg, _ = _as_groups(query_groups, len(q), "query_groups", "cpu")
        bg, _ = _as_groups(bank_groups, n, "bank_groups", "cpu")
        allowed = np.asarray(allowed, dtype=bool)
        if (allowed.ndim != 2 or qg.min(initial=0) < 0 or bg.min(initial=0) < 0
                or qg.max(initial=-1) >= allowed.shape[0]
                or bg.max(initial=-1) >= allowed.shape[1]):
            raise ValueError(
                f"allowed: expected a bool array (n_query_groups, n_bank_groups) indexed "
                f"by the group ids; got shape {allowed.shape} for query groups up to "
                f"{int(qg.max(initial=-1))} and bank groups up to {int(bg.max(initial=-1))}"
            )
        per_group = allowed.astype(np.int64) @ np.bincount(bg, minlength=allowed.shape[1])
        if len(q) and per_group[qg].min() < k:
            raise ValueError(
                f"k={k} exceeds the number of allowed bank entries for some queries "
                f"(as few as {int(per_group[qg].min())} of {n})"
            )
        k = int(k)
        if self.method_ == "cells":
            dist, idx = _query_cells(self._cells, self.bank_, q, k, self.working_memory,
                                     qg, bg, coarse, allowed)
            todo = np.flatnonzero(~np.isfinite(dist).all(axis=1))
        else:
            dist = np.empty((len(q), k), np.float32)
            idx = np.empty((len(q), k), np.int64)
            todo = np.arange(len(q))
        # exact search of the rest, one query group at a time against its allowed rows
        for g in np.unique(qg[todo]):
            rows = todo[qg[todo] == g]
            cols = np.flatnonzero(allowed[g][bg])
            dist[rows], local = knn_search(q[rows], self.bank_[cols], k, device=self.device,
                                           working_memory=self.working_memory)
            idx[rows] = cols[local]
        return dist, idx


def build_index(bank, *, method="auto", approx_threshold=DEFAULT_APPROX_THRESHOLD,
                n_lists=None, n_probe=8, n_graph_neighbors=30, n_list_neighbors=32,
                epsilon=0.1, random_state=None, device=None, working_memory=None):
    """Build a k-NN index over ``bank``.

    Parameters
    ----------
    bank : array-like of shape (n, d)
    method : {"auto", "exact", "cells", "ivf", "nndescent"}, default="auto"
        "exact": chunked brute force (:func:`~skad._kernels.knn.knn_search`);
        "cells": k-means cells, each with a candidate list (its rows and their
        ``n_list_neighbors`` nearest bank rows); a query is ranked against the list
        of its nearest cell by one matrix product per cell, for a whole batch;
        "ivf": a faiss inverted-file index (k-means lists, exact distances within
        the ``n_probe`` lists nearest to the query); "nndescent": a pynndescent
        graph; "auto": "ivf" when ``n >= approx_threshold``, else "exact".
    approx_threshold : int, default=1_000_000
        Bank size from which "auto" goes approximate.
    n_lists : int, optional
        k-means cells of "cells" / "ivf"; default ``round(sqrt(n))`` for "cells",
        ``round(2 sqrt(n))`` for "ivf" (at most ``n / 39``, faiss's minimum of
        training points per list).
    n_probe : int, default=8
        IVF lists searched per query (higher: better recall, slower query).
    n_graph_neighbors : int, default=30
        Degree of the pynndescent graph (higher: better recall, slower build).
    n_list_neighbors : int, default=32
        "cells": neighbours of each bank row added to its cell's candidate list
        (higher: better recall, longer lists, slower query).
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
    distance: a miss makes a patch look slightly *more* anomalous. Returned
    distances are always computed exactly between the query and the row returned.

    "cells" memory: the candidate lists hold each bank row about 2-4 times, about
    ``4 * (d + 1) * n * (2 to 4)`` bytes beside the bank's ``4 * d * n``. Its per-cell products
    pay off for batches of queries (hundreds of images' patches at once, as
    ``score_samples`` passes them); a query's recall depends on how close it is
    to the bank (anomalous patches are found less often, and only score higher).

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
    >>> index = build_index(bank, method="cells", random_state=0)
    >>> index.method_, index.n_lists_, index.query(bank[:3], k=1)[1].ravel().tolist()
    ('cells', 45, [0, 1, 2])
    """
    if method not in ("auto", "exact") + APPROX_METHODS:
        raise ValueError(
            f"method: expected 'auto', 'exact', 'cells', 'ivf' or 'nndescent'; got {method!r}"
        )
    if not isinstance(n_list_neighbors, Integral) or n_list_neighbors < 0:
        raise ValueError(
            f"n_list_neighbors: expected a non-negative int; got {n_list_neighbors!r}"
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
        n_list_neighbors=n_list_neighbors, epsilon=epsilon, random_state=random_state, device=device,
        working_memory=working_memory,
    )
