"""Exact k nearest bank rows by pruning with bounds (few rows; or restricted searches).

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

:func:`ball_knn` answers many rows exactly when each may only see some groups of bank
rows (SPADE: a test image's patches against those of its ``K`` nearest training
images), without a product over all allowed rows: :func:`ball_partition` sorts the bank
by k-means cell and distance to the cell's centre once; a query then visits cells
nearest first, skips those that the triangle inequality rules out, and measures only
the rows whose bounds (distance to the centre, then a partial distance over the
leading principal coordinates) are within its current ``k``-th distance. The loops
are compiled with numba.
"""

from __future__ import annotations

import numpy as np

from .ann import principal_directions
from .knn import knn_search, ranking_operand

__all__ = ["BOUND_DIM", "HEAD_DIM", "ball_knn", "ball_partition", "bank_products", "exact_knn",
           "pruned_knn", "rank_against_bank"]

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


# ---------------------------------------------------------------------------
# Restricted exact search by triangle-inequality pruning (SPADE's pixel level)
# ---------------------------------------------------------------------------

#: leading (principal) dimensions of a row compared first by :func:`ball_knn`; the
#: rest only for rows whose distance in these is within the current bound
HEAD_DIM = 16


def ball_partition(bank, groups, *, n_cells=None, random_state=None):
    """What :func:`ball_knn` needs of a bank, computed once per bank.

    The rows are split into k-means cells (:func:`~skad._kernels.kmeans.lloyd` on a
    sample, then every row to its nearest centre), sorted by cell and, inside a cell,
    by their distance ``rho`` to its centre, and rotated to the bank's principal axes
    (an orthonormal change of basis: distances do not change, but the leading
    coordinates carry most of each distance, so a partial sum over them rejects most
    rows early).

    Parameters
    ----------
    bank : ndarray of shape (n, d)
    groups : ndarray of int, shape (n,)
        Each row's group (SPADE: its training image), what ``allowed`` of
        :func:`ball_knn` selects.
    n_cells : int, optional
        k-means cells; default ``round(sqrt(n))``.
    random_state : int, RandomState instance or None

    Returns
    -------
    partition : dict
        ``rotation`` ``(d, d')`` float32 (orthonormal columns, ``d'`` = ``d`` padded to
        a multiple of ``HEAD_DIM`` with zero columns), ``rows`` ``(n, d')`` float32 (the
        rotated rows in sorted order), ``index`` (each sorted row's row in ``bank``),
        ``groups``, ``cell``, ``rho`` (float64) and ``starts`` (``(n_cells + 1,)``: the
        cells' ranges) of the sorted rows, ``centres`` ``(n_cells, d)`` float64,
        ``head_dim`` (``HEAD_DIM``).
        Memory: about ``4 n (d' + 6)`` bytes, the bank's size again.
    """
    from sklearn.utils import check_random_state

    from .kmeans import lloyd

    bank = np.ascontiguousarray(bank, dtype=np.float32)
    n, d = bank.shape
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,):
        raise ValueError(f"groups: expected shape ({n},); got {groups.shape}")
    if n_cells is None:
        n_cells = max(1, int(round(np.sqrt(n))))
    if not 1 <= int(n_cells) <= n:
        raise ValueError(f"n_cells: expected an int in [1, {n}]; got {n_cells!r}")
    rng = check_random_state(random_state)
    n_cells = int(n_cells)
    # centres from a sample (64 rows per centre is plenty for a bound: any centre
    # gives exact answers, a better one only prunes more)
    sample = bank[rng.choice(n, min(n, 64 * n_cells), replace=False)]
    centres = lloyd(sample, n_cells, n_iter=5, random_state=rng)[0]
    cell = knn_search(bank, centres, 1)[1][:, 0]
    centres = centres.astype(np.float64)
    rho = np.empty(n, np.float64)
    for s in range(0, n, 65536):  # bounded float64 blocks
        rho[s:s + 65536] = np.linalg.norm(bank[s:s + 65536] - centres[cell[s:s + 65536]], axis=1)
    index = np.lexsort((rho, cell))
    pad = (-d) % HEAD_DIM
    rotation = np.hstack([principal_directions(bank, d), np.zeros((d, pad), np.float32)])
    rows = np.empty((n, d + pad), np.float32)
    for s in range(0, n, 65536):
        rows[s:s + 65536] = bank[index[s:s + 65536]] @ rotation
    cell = cell[index]
    return {"rotation": rotation, "rows": rows, "index": index, "groups": groups[index],
            "cell": cell.astype(np.int64), "rho": rho[index],
            "starts": np.searchsorted(cell, np.arange(n_cells + 1)).astype(np.int64),
            "centres": centres, "head_dim": HEAD_DIM}


def _ball_kernels():
    """The compiled loops of :func:`ball_knn` (numba, compiled once and cached)."""
    global _BALL
    if _BALL is not None:
        return _BALL
    from numba import njit, prange

    @njit(cache=True)
    def compact(allowed_rows, rows, rho, cell, n_cells, head_dim):
        # the allowed rows, in their (cell, rho) order, with their cells' ranges
        n = allowed_rows.shape[0]
        m = 0
        for p in range(n):
            m += allowed_rows[p]
        pos = np.empty(m, np.int64)
        head = np.empty((m, head_dim), np.float32)
        rho_a = np.empty(m, np.float64)
        starts = np.zeros(n_cells + 1, np.int64)
        t = 0
        for p in range(n):
            if allowed_rows[p]:
                pos[t] = p
                head[t] = rows[p, :head_dim]
                rho_a[t] = rho[p]
                starts[cell[p] + 1] += 1
                t += 1
        for j in range(n_cells):
            starts[j + 1] += starts[j]
        return pos, head, rho_a, starts

    @njit(fastmath={"reassoc", "contract", "arcp", "nsz"}, cache=True)
    def scan(qi, dqj, slack, head, rows, pos, rho, a, e, best, bidx):
        # the rows of one cell whose rho is within the bound of |q - c_j|
        k = best.shape[0]
        dp = qi.shape[0]
        hd = head.shape[1]
        lo_v = dqj - (best[k - 1] + slack)
        b = e
        while a < b:  # binary search of the first rho >= |q - c_j| - bound
            h = (a + b) >> 1
            if rho[h] < lo_v:
                a = h + 1
            else:
                b = h
        for p in range(a, e):
            u = best[k - 1] + slack
            if rho[p] > dqj + u:
                break
            lim = u * u
            acc = np.float32(0.0)
            for c in range(hd):
                t = qi[c] - head[p, c]
                acc += t * t
            if acc > lim:  # partial sums only grow: the head bounds from below
                continue
            r = pos[p]
            for c0 in range(hd, dp, hd):
                part = np.float32(0.0)
                for c in range(c0, c0 + hd):
                    t = qi[c] - rows[r, c]
                    part += t * t
                acc += part
                if acc > lim:
                    break
            dist = np.float32(np.sqrt(acc))
            if dist < best[k - 1]:
                x = k - 1
                while x > 0 and best[x - 1] > dist:
                    best[x] = best[x - 1]
                    bidx[x] = bidx[x - 1]
                    x -= 1
                best[x] = dist
                bidx[x] = r

    @njit(parallel=True, fastmath={"reassoc", "contract", "arcp", "nsz"}, cache=True)
    def search(q, dq, slack, head, rows, pos, rho, starts, k, out_d, out_i):
        m = q.shape[0]
        n_cells = starts.shape[0] - 1
        for i in prange(m):
            best = np.full(k, np.inf, np.float32)
            bidx = np.full(k, -1, np.int64)
            # |q - b| >= |q - c_j| - rho_b >= |q - c_j| - (largest rho in the cell)
            lower = np.full(n_cells, np.inf)
            near = -1
            for j in range(n_cells):
                if starts[j + 1] > starts[j]:
                    lower[j] = dq[i, j] - rho[starts[j + 1] - 1]
                    if near < 0 or dq[i, j] < dq[i, near]:
                        near = j
            # the nearest centre's cell first: a small k-th distance early
            scan(q[i], dq[i, near], slack[i], head, rows, pos, rho, starts[near],
                 starts[near + 1], best, bidx)
            while not np.isfinite(best[k - 1]):  # fewer than k rows there
                lower[near] = np.inf
                near = np.argmin(lower)
                scan(q[i], dq[i, near], slack[i], head, rows, pos, rho, starts[near],
                     starts[near + 1], best, bidx)
            lower[near] = np.inf
            # then the cells the bound cannot rule out, nearest bound first
            cand = np.flatnonzero(lower <= best[k - 1] + slack[i])
            cand = cand[np.argsort(lower[cand])]
            for j in cand:
                if lower[j] > best[k - 1] + slack[i]:
                    break  # every further cell is farther
                scan(q[i], dq[i, j], slack[i], head, rows, pos, rho, starts[j],
                     starts[j + 1], best, bidx)
            out_d[i] = best
            out_i[i] = bidx

    _BALL = (compact, search)
    return _BALL


_BALL = None


def ball_knn(q, bank, k, partition, query_groups, allowed):
    """Exact ``k`` nearest allowed bank rows of the rows of ``q``, by pruning.

    Each query row of group ``g`` is searched among the bank rows whose group ``h``
    has ``allowed[g, h]`` (SPADE: a test image's patches among those of its ``K``
    nearest training images). Nothing is approximated: a cell ``j`` of
    :func:`ball_partition` is skipped only when ``|q - c_j| - max rho`` (a lower bound
    on the distance to each of its rows, by the triangle inequality) exceeds the
    current ``k``-th distance, a row only when ``| |q - c_j| - rho_b |`` or its
    partial distance over the leading principal coordinates does. Cells are visited
    nearest bound first, so the ``k``-th distance falls fast and most of the bank is
    never read. The bounds carry a slack of ``1e-4 (|q| + max |b|)`` for float
    rounding; the distances of the rows returned are measured again in the original
    basis, ``||q - b||``.

    Parameters
    ----------
    q : ndarray of shape (m, d)
    bank : ndarray of float32, shape (n, d)
        The bank :func:`ball_partition` was built from.
    k : int
    partition : dict
        :func:`ball_partition` of ``bank``.
    query_groups : ndarray of int, shape (m,)
        Ids in ``[0, allowed.shape[0])``.
    allowed : ndarray of bool, shape (n_query_groups, n_bank_groups)
        Every query group must allow at least ``k`` bank rows.

    Returns
    -------
    distances : ndarray of float32, shape (m, k), ascending
    indices : ndarray of int64, shape (m, k)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.refine import ball_knn, ball_partition
    >>> bank = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    >>> groups = np.repeat(np.arange(4), 100)
    >>> part = ball_partition(bank, groups, random_state=0)
    >>> allowed = np.array([[False, True, True, False]])
    >>> d, i = ball_knn(bank[:2], bank, 1, part, np.zeros(2, int), allowed)
    >>> bool(np.all((i >= 100) & (i < 300)))
    True
    """
    import numba
    import torch

    from .ann import _row_distances

    q = np.ascontiguousarray(q, dtype=np.float32)
    bank = np.asarray(bank, dtype=np.float32)
    query_groups = np.asarray(query_groups, dtype=np.int64)
    allowed = np.asarray(allowed, dtype=bool)
    m = len(q)
    k = int(k)
    dist = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    if not m:
        return dist, idx
    compact, search = _ball_kernels()
    rotation, rows, rho = partition["rotation"], partition["rows"], partition["rho"]
    centres = partition["centres"]
    n_cells = len(centres)
    bank_norm = float(np.sqrt((rows * rows).sum(axis=1).max()))
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    for g in np.unique(query_groups):
        sel = np.flatnonzero(query_groups == g)
        ok = allowed[g][partition["groups"]]
        q64 = q[sel].astype(np.float64)
        # |q - c_j| in float64 (the bounds' rounding stays far below the slack)
        dq = np.sqrt(np.maximum((q64 * q64).sum(1)[:, None] - 2.0 * q64 @ centres.T
                                + (centres * centres).sum(1)[None], 0.0))
        pos, head, rho_a, starts = compact(ok, rows, rho, partition["cell"], n_cells,
                                           partition["head_dim"])
        if len(pos) < k:
            raise ValueError(
                f"k={k} exceeds the {len(pos)} bank rows allowed for query group {int(g)}")
        qg = q[sel]
        slack = 1e-4 * (np.sqrt((q64 * q64).sum(1)) + bank_norm)
        d_g = np.empty((len(sel), k), np.float32)
        i_g = np.empty((len(sel), k), np.int64)
        search(np.ascontiguousarray(qg @ rotation), dq, slack, head, rows, pos, rho_a,
               starts, k, d_g, i_g)
        i_g = partition["index"][i_g]
        d_g = _row_distances(torch.from_numpy(qg), torch.from_numpy(bank), i_g, 1 << 26)
        order = np.argsort(d_g, axis=1, kind="stable")
        dist[sel] = np.take_along_axis(d_g, order, 1)
        idx[sel] = np.take_along_axis(i_g, order, 1)
    return dist, idx
