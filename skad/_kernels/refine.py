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
the rows whose bound (from their distance to the centre) is within its current
``k``-th distance; optionally at most ``max_cells`` cells per row (approximate: the
distances returned are never below the exact ones). The exact search copies each query
group's allowed rows into contiguous buffers; the capped one chooses every query's cells
first and then reads the bank group by group, measuring each row against the queries
that visit its cell (no copy, each allowed row read once per pass). The loops are
compiled with numba.
"""

from __future__ import annotations

import numpy as np

from .ann import principal_directions
from .knn import knn_search, ranking_operand

__all__ = ["BOUND_DIM", "ROW_PAD", "ball_knn", "ball_partition", "bank_products", "exact_knn",
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
# Restricted search by triangle-inequality pruning (SPADE's pixel level)
# ---------------------------------------------------------------------------

#: the rotated rows of :func:`ball_partition` are padded with zero columns to a multiple
#: of this (whole SIMD registers in the distance loop)
ROW_PAD = 16


def ball_partition(bank, groups, *, n_cells=None, random_state=None):
    """What :func:`ball_knn` needs of a bank, computed once per bank.

    The rows are split into k-means cells (:func:`~skad._kernels.kmeans.lloyd` on a
    sample, then every row to its nearest centre), sorted by cell and, inside a cell,
    by their distance ``rho`` to its centre, and rotated to the bank's principal axes
    (an orthonormal change of basis: distances do not change).

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
        a multiple of ``ROW_PAD`` with zero columns), ``rows`` ``(n, d')`` float32 (the
        rotated rows in sorted order), ``index`` (each sorted row's row in ``bank``),
        ``groups``, ``cell``, ``rho`` (float64) and ``starts`` (``(n_cells + 1,)``: the
        cells' ranges) of the sorted rows, ``centres`` ``(n_cells, d)`` float64,
        ``norm_max`` (the largest row norm, for the rounding slack); for the capped
        search of :func:`ball_knn`, in the bank's order, ``bank_cell`` and ``bank_rho``,
        ``group_order`` / ``group_starts`` (the bank rows by group), and per (cell,
        group) ``cell_count`` and ``cell_rho_max``.
        Memory: about ``4 n (d' + 11)`` bytes, the bank's size again.
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
    norm_max = 0.0
    for s in range(0, n, 65536):  # bounded float64 blocks
        block = bank[s:s + 65536].astype(np.float64)
        rho[s:s + 65536] = np.linalg.norm(block - centres[cell[s:s + 65536]], axis=1)
        norm_max = max(norm_max, float(np.sqrt((block * block).sum(1).max())))
    index = np.lexsort((rho, cell))
    pad = (-d) % ROW_PAD
    rotation = np.hstack([principal_directions(bank, d), np.zeros((d, pad), np.float32)])
    rows = np.empty((n, d + pad), np.float32)
    for s in range(0, n, 65536):
        rows[s:s + 65536] = bank[index[s:s + 65536]] @ rotation
    part = {"rotation": rotation, "rows": rows, "index": index, "groups": groups[index],
            "cell": cell[index].astype(np.int64), "rho": rho[index],
            "starts": np.searchsorted(cell[index], np.arange(n_cells + 1)).astype(np.int64),
            "centres": centres, "norm_max": norm_max}
    part.update(_sweep_tables(part))
    return part


def _sweep_tables(part):
    """What the capped search of :func:`ball_knn` reads beside the bank: each bank row's
    cell and ``rho`` (in the bank's order), the bank rows by group (``group_order``,
    ``group_starts``) and, per (cell, group), the row count and the largest ``rho``
    (-inf: none)."""
    index, cell, groups, rho = part["index"], part["cell"], part["groups"], part["rho"]
    n = len(index)
    n_cells = len(part["centres"])
    n_groups = int(groups.max()) + 1 if n else 0
    bank_cell = np.empty(n, np.int32)
    bank_cell[index] = cell
    bank_rho = np.empty(n, np.float64)
    bank_rho[index] = rho
    bank_groups = np.empty(n, np.int64)
    bank_groups[index] = groups
    order = np.argsort(bank_groups, kind="stable")
    count = np.zeros((n_cells, n_groups), np.int32)
    np.add.at(count, (cell, groups), 1)
    rho_max = np.full((n_cells, n_groups), -np.inf)
    np.maximum.at(rho_max, (cell, groups), rho)
    return {"bank_cell": bank_cell, "bank_rho": bank_rho, "group_order": order,
            "group_starts": np.searchsorted(bank_groups[order],
                                            np.arange(n_groups + 1)).astype(np.int64),
            "cell_count": count, "cell_rho_max": rho_max}


_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


def _ball_kernels():
    """The compiled loops of :func:`ball_knn` (numba, compiled once and cached)."""
    global _BALL
    if _BALL is not None:
        return _BALL
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def compact(ok, rows, rho, starts, out_rows, out_pos, out_rho, out_starts, out_max):
        # the allowed rows into contiguous buffers, cell by cell in their rho order
        # (scans then read consecutive rows: several times faster than skipping), and
        # each cell's largest allowed rho (-inf: no allowed row)
        n_cells = starts.shape[0] - 1
        out_starts[0] = 0
        for j in prange(n_cells):
            c = 0
            top = -np.inf
            for p in range(starts[j], starts[j + 1]):
                if ok[p]:
                    c += 1
                    top = rho[p]
            out_starts[j + 1] = c
            out_max[j] = top
        for j in range(n_cells):
            out_starts[j + 1] += out_starts[j]
        for j in prange(n_cells):
            t = out_starts[j]
            for p in range(starts[j], starts[j + 1]):
                if ok[p]:
                    out_pos[t] = p
                    for c in range(rows.shape[1]):  # (faster than a slice assignment)
                        out_rows[t, c] = rows[p, c]
                    out_rho[t] = rho[p]
                    t += 1
        return out_starts[n_cells]

    @njit(fastmath=_FASTMATH, cache=True)
    def scan(qi, dlo, dhi, slack, rows, rho, a, e, best, bidx):
        # the rows of one cell whose rho is within the bound of |q - c_j|, known to lie
        # in [dlo, dhi]: |q - b| >= max(dlo - rho_b, rho_b - dhi)
        k = best.shape[0]
        dp = qi.shape[0]
        lo_v = dlo - (best[k - 1] + slack)
        b = e
        while a < b:  # binary search of the first rho >= |q - c_j| - bound
            h = (a + b) >> 1
            if rho[h] < lo_v:
                a = h + 1
            else:
                b = h
        for p in range(a, e):
            u = best[k - 1] + slack
            if rho[p] > dhi + u:
                break
            acc = np.float32(0.0)
            for c in range(dp):  # one pass (vectorised): faster than early exits
                t = qi[c] - rows[p, c]
                acc += t * t
            if acc > u * u:
                continue
            dist = np.float32(np.sqrt(acc))
            if dist < best[k - 1]:
                x = k - 1
                while x > 0 and best[x - 1] > dist:
                    best[x] = best[x - 1]
                    bidx[x] = bidx[x - 1]
                    x -= 1
                best[x] = dist
                bidx[x] = p

    @njit(parallel=True, fastmath=_FASTMATH, cache=True)
    def search(q, prod, qn, cn, c_norm, err, slack, rows, rho, starts, rho_max, k, out_d, out_i):
        # the exact search, query by query (max_cells=None)
        m = q.shape[0]
        n_cells = starts.shape[0] - 1
        for i in prange(m):
            best = np.full(k, np.inf, np.float32)
            bidx = np.full(k, -1, np.int64)
            # |q - c_j|^2 in [d2_j - e_j, d2_j + e_j] from the float32 product q.c_j
            # (its rounding is at most err |q| |c_j|, see ball_knn); square roots only
            # for the cells visited
            d2 = np.empty(n_cells)
            e = np.empty(n_cells)
            qi_n = np.sqrt(qn[i])
            near = -1  # the nearest centre with allowed rows
            for j in range(n_cells):
                d2[j] = qn[i] + cn[j] - 2.0 * prod[i, j]
                e[j] = err * qi_n * c_norm[j]
                if rho_max[j] > -np.inf and (near < 0 or d2[j] < d2[near]):
                    near = j
            # the nearest centre's cell first: a small k-th distance early
            scan(q[i], np.sqrt(max(d2[near] - e[near], 0.0)), np.sqrt(d2[near] + e[near]),
                 slack[i], rows, rho, starts[near], starts[near + 1], best, bidx)
            done = np.zeros(n_cells, np.bool_)
            done[near] = True
            while not np.isfinite(best[k - 1]):  # fewer than k rows there: the next
                near = -1
                for j in range(n_cells):
                    if rho_max[j] > -np.inf and not done[j] and (
                            near < 0 or d2[j] < d2[near]):
                        near = j
                scan(q[i], np.sqrt(max(d2[near] - e[near], 0.0)),
                     np.sqrt(d2[near] + e[near]), slack[i], rows, rho, starts[near],
                     starts[near + 1], best, bidx)
                done[near] = True
            # then the cells the bound cannot rule out: |q - b| >= |q - c_j| - rho_b
            # >= sqrt(d2_j - e_j) - (largest rho in the cell), nearest bound first
            bound = best[k - 1] + slack[i]
            n_cand = 0
            cand = np.empty(n_cells, np.int64)
            for j in range(n_cells):
                r = rho_max[j] + bound
                if not done[j] and rho_max[j] > -np.inf and d2[j] - e[j] <= r * r:
                    cand[n_cand] = j
                    n_cand += 1
            lower = np.empty(n_cand)
            for t in range(n_cand):
                j = cand[t]
                lower[t] = np.sqrt(max(d2[j] - e[j], 0.0)) - rho_max[j]
            for _ in range(n_cand):  # the smallest remaining bound (few are taken)
                t = 0
                for u in range(1, n_cand):
                    if lower[u] < lower[t]:
                        t = u
                if lower[t] > best[k - 1] + slack[i]:
                    break  # every further cell is farther
                lower[t] = np.inf
                j = cand[t]
                scan(q[i], np.sqrt(max(d2[j] - e[j], 0.0)), np.sqrt(d2[j] + e[j]),
                     slack[i], rows, rho, starts[j], starts[j + 1], best, bidx)
            out_d[i] = best
            out_i[i] = bidx

    # the capped search (max_cells): each query's cells are chosen first (the nearest
    # centres' cells, pass 1; then by bound, pass 2), then the bank is read group by group
    # and each row is measured against the queries that visit its cell ("sweeps"), so the
    # allowed rows are read once per pass, not copied per query group

    @njit(inline="always")
    def listed(cells, n, j):
        for u in range(n):
            if cells[u] == j:
                return True
        return False

    @njit(parallel=True, fastmath=_FASTMATH, cache=True)
    def first_cells(prod, qn, cn, c_norm, err, qgi, count, k, cells, lo, hi, n_vis):
        # pass 1: the nearest centre's cell with allowed rows, then the next nearest until
        # the cells hold k allowed rows; |q - c| lies in [lo, hi] (see ball_knn)
        m, n_cells = prod.shape
        for i in prange(m):
            g = qgi[i]
            rows = 0
            t = 0
            while rows < k:
                near = -1
                dmin = np.inf
                for j in range(n_cells):
                    if count[g, j] > 0:
                        d2 = qn[i] + cn[j] - 2.0 * prod[i, j]
                        if d2 < dmin and not listed(cells[i], t, j):
                            dmin = d2
                            near = j
                e = err * np.sqrt(qn[i]) * c_norm[near]
                cells[i, t] = near
                lo[i, t] = np.sqrt(max(dmin - e, 0.0))
                hi[i, t] = np.sqrt(max(dmin + e, 0.0))
                rows += count[g, near]
                t += 1
            n_vis[i] = t

    @njit(parallel=True, fastmath=_FASTMATH, cache=True)
    def more_cells(prod, qn, cn, c_norm, err, slack, qgi, count, rho_max, first, n_first, kth,
                   max_cells, cells, lo, hi, n_vis, next_lower):
        # pass 2: the cells whose bound |q - c_j| - (largest allowed rho) is within the k-th
        # distance of pass 1 (+ slack), smallest bound first, max_cells in all with pass 1;
        # next_lower: the smallest bound of the admitted cells left out (inf: none)
        m, n_cells = prod.shape
        for i in prange(m):
            g = qgi[i]
            u = kth[i] + slack[i]
            e0 = err * np.sqrt(qn[i])
            room = max(max_cells - n_first[i], 0)
            # the admitted cells' bounds, the room smallest kept sorted in cells / lower
            lower = np.empty(room + 1)
            t = 0
            nxt = np.inf
            for j in range(n_cells):
                if count[g, j] == 0:
                    continue
                d2 = qn[i] + cn[j] - 2.0 * prod[i, j] - e0 * c_norm[j]
                r = u + rho_max[g, j]
                if d2 > r * r or listed(first[i], n_first[i], j):
                    continue
                b = np.sqrt(max(d2, 0.0)) - rho_max[g, j]
                x = t
                while x > 0 and lower[x - 1] > b:
                    x -= 1
                if x == room:  # not among the room smallest
                    nxt = min(nxt, b)
                    continue
                if t == room:  # the largest kept makes way
                    nxt = min(nxt, lower[t - 1])
                    t -= 1
                for y in range(t, x, -1):
                    lower[y] = lower[y - 1]
                    cells[i, y] = cells[i, y - 1]
                lower[x] = b
                cells[i, x] = j
                t += 1
            n_vis[i] = t
            next_lower[i] = nxt
            for v in range(t):
                j = cells[i, v]
                d2 = qn[i] + cn[j] - 2.0 * prod[i, j]
                e = e0 * c_norm[j]
                lo[i, v] = np.sqrt(max(d2 - e, 0.0))
                hi[i, v] = np.sqrt(max(d2 + e, 0.0))

    @njit(cache=True)
    def visitors(qstart, cells, lo, hi, n_vis, n_cells, vstart, vlist, vlo, vhi):
        # per query group, the queries visiting each cell (CSR: vstart (groups, cells + 1)
        # into vlist, with their [lo, hi])
        at = 0
        for g in range(qstart.shape[0] - 1):
            vstart[g, :] = 0
            for i in range(qstart[g], qstart[g + 1]):
                for v in range(n_vis[i]):
                    vstart[g, cells[i, v] + 1] += 1
            vstart[g, 0] = at
            for j in range(n_cells):
                vstart[g, j + 1] += vstart[g, j]
            fill = vstart[g, :n_cells].copy()
            for i in range(qstart[g], qstart[g + 1]):
                for v in range(n_vis[i]):
                    j = cells[i, v]
                    vlist[fill[j]] = i
                    vlo[fill[j]] = lo[i, v]
                    vhi[fill[j]] = hi[i, v]
                    fill[j] += 1
            at = vstart[g, n_cells]

    @njit(parallel=True, fastmath=_FASTMATH, cache=True)
    def sweep(q, bank, order, gstart, bank_cell, bank_rho, hs, hstart, hgrp, pstart, vstart,
              vlist, vlo, vhi, slack, best, bidx, bound):
        # part t reads the bank groups hs[pstart[t]:pstart[t + 1]], each group's rows once
        # per query group allowing it (hgrp; the rows stay in cache), and measures each row
        # against the queries visiting its cell whose bound | |q - c| - rho | does not rule
        # it out; best / bidx (squared distances) are the part's own, bound (a k-th
        # distance + slack) is shared: any part's k-th distance bounds the final one, and a
        # racing write can only leave a larger, still valid, bound
        k = best.shape[2]
        d = q.shape[1]
        for t in prange(pstart.shape[0] - 1):
            for a in range(pstart[t], pstart[t + 1]):
                h = hs[a]
                for b in range(hstart[a], hstart[a + 1]):
                    g = hgrp[b]
                    for p in range(gstart[h], gstart[h + 1]):
                        r = order[p]
                        j = bank_cell[r]
                        rr = bank_rho[r]
                        for s in range(vstart[g, j], vstart[g, j + 1]):
                            i = vlist[s]
                            u = bound[i]
                            if rr > vhi[s] + u or rr < vlo[s] - u:
                                continue
                            acc = np.float32(0.0)
                            for c in range(d):  # one pass (vectorised)
                                x = q[i, c] - bank[r, c]
                                acc += x * x
                            if acc < best[t, i, k - 1]:
                                x = k - 1
                                while x > 0 and best[t, i, x - 1] > acc:
                                    best[t, i, x] = best[t, i, x - 1]
                                    bidx[t, i, x] = bidx[t, i, x - 1]
                                    x -= 1
                                best[t, i, x] = acc
                                bidx[t, i, x] = r
                                bound[i] = min(bound[i], np.sqrt(best[t, i, k - 1]) + slack[i])

    _BALL = (compact, search, first_cells, more_cells, visitors, sweep)
    return _BALL


_BALL = None


def ball_knn(q, bank, k, partition, query_groups, allowed, *, max_cells=None,
             return_exact=False):
    """``k`` nearest allowed bank rows of the rows of ``q``, by pruning (exact by default).

    Each query row of group ``g`` is searched among the bank rows whose group ``h``
    has ``allowed[g, h]`` (SPADE: a test image's patches among those of its ``K``
    nearest training images). With ``max_cells=None`` nothing is approximated: a cell
    ``j`` of :func:`ball_partition` is skipped only when ``|q - c_j| - max rho`` (a
    lower bound on the distance to each of its rows, by the triangle inequality)
    exceeds the current ``k``-th distance, a row only when ``| |q - c_j| - rho_b |``
    does. Cells are visited nearest bound first, so the ``k``-th distance falls fast
    and most of the bank is never read. The bounds carry a slack of
    ``1e-4 (|q| + max |b|)`` for float rounding. The exact search copies the allowed
    rows of each query group into contiguous buffers (cell by cell), which each query's
    scans then read in order; the distances of the rows returned are measured again
    in the original basis, ``||q - b||``.

    With ``max_cells`` each query's cells are chosen before any row is read, in two
    passes: first the nearest centre's cell (and the next nearest until they hold
    ``k`` allowed rows), then, from the ``k``-th distance found there, the cells whose
    bound does not rule them out, smallest bound first, ``max_cells`` cells in all.
    Each pass reads the bank group by group (each allowed group's rows once per query
    group, while they are in cache) and measures a row against the queries visiting
    its cell that its ``rho`` does not rule out, so the allowed rows are neither
    copied nor read once per query. A query whose bound still admits a cell left out
    keeps the nearest rows among those read: its distances are never below the exact
    ones (``return_exact`` says which queries are exact).

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
    max_cells : int or None, default=None
        At most this many cells per query (the nearest centre's first, then by lower
        bound; more only where the nearest centres' cells hold fewer than ``k`` allowed
        rows): approximate, see above. None: exact.
    return_exact : bool, default=False
        Also return, per query, whether no cell its final bound admits was left out
        (always True with ``max_cells=None``).

    Returns
    -------
    distances : ndarray of float32, shape (m, k), ascending
    indices : ndarray of int64, shape (m, k)
    exact : ndarray of bool, shape (m,)
        Only with ``return_exact=True``.

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
    >>> d1, _, exact = ball_knn(bank[:2], bank, 1, part, np.zeros(2, int), allowed,
    ...                         max_cells=1, return_exact=True)
    >>> bool(np.all(d1 >= d - 1e-6))
    True
    """
    import numba
    import torch

    if max_cells is not None and (isinstance(max_cells, bool) or int(max_cells) != max_cells
                                  or max_cells < 1):
        raise ValueError(f"max_cells: expected an int >= 1 or None; got {max_cells!r}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    query_groups = np.asarray(query_groups, dtype=np.int64)
    allowed = np.asarray(allowed, dtype=bool)
    m = len(q)
    k = int(k)
    n_groups = int(partition["groups"].max()) + 1 if len(partition["groups"]) else 0
    if allowed.ndim != 2 or allowed.shape[1] < n_groups:
        raise ValueError(f"allowed: expected shape (n_query_groups, >= {n_groups}) (the "
                         f"partition's bank groups); got {allowed.shape}")
    dist = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    exact = np.ones(m, bool)
    if not m:
        return (dist, idx, exact) if return_exact else (dist, idx)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    # |q - c_j| from one float32 product per query group: the rounding of q.c is at
    # most gamma_d |q| |c| (gamma_d = d u / (1 - d u), u = 2^-24), so |q - c32_j|^2
    # lies within 2 gamma_d |q| |c| (4 gamma_d here: a margin) of the float64 value;
    # rounding the centres to float32 moves them by at most u |c|, which the slack
    # (1e-4 (|q| + max |b|)) covers with room to spare
    centres = partition["centres"]
    c32 = np.ascontiguousarray(centres, dtype=np.float32)
    cn = (c32.astype(np.float64) ** 2).sum(1)
    err = 4.0 * c32.shape[1] * 2.0 ** -24 / (1.0 - c32.shape[1] * 2.0 ** -24)
    bank_norm = partition.get("norm_max")
    if bank_norm is None:  # a partition pickled before norm_max
        rows = partition["rows"]
        bank_norm = float(np.sqrt((rows * rows).sum(axis=1).max()))
    by_group = np.argsort(query_groups, kind="stable")
    ug, first = np.unique(query_groups[by_group], return_index=True)
    bounds = np.r_[first, m].astype(np.int64)
    per_group = np.bincount(partition["groups"], minlength=allowed.shape[1])
    n_ok = allowed[ug].astype(np.int64) @ per_group
    if n_ok.min() < k:
        g = int(np.argmin(n_ok))
        raise ValueError(
            f"k={k} exceeds the {int(n_ok[g])} bank rows allowed for query group {int(ug[g])}")
    ctx = dict(bank=bank, k=k, partition=partition, allowed=allowed, c32=c32, cn=cn, err=err,
               bank_norm=bank_norm)
    if max_cells is None:  # buffers for the largest allowed set, reused for every group
        run, step = _exact_group, 1
        size, n_cells = int(n_ok.max()), len(c32)
        ctx["buffers"] = (np.empty((size, partition["rows"].shape[1]), np.float32),
                          np.empty(size, np.int64), np.empty(size, np.float64),
                          np.empty(n_cells + 1, np.int64), np.empty(n_cells, np.float64))
    else:  # query groups in chunks of about CAPPED_ROWS rows (its products and lists)
        run = _capped_groups
        step = max(1, int(CAPPED_ROWS // max(1, m / len(ug))))
        ctx["max_cells"] = int(max_cells)
    for c in range(0, len(ug), step):
        sel = by_group[bounds[c]:bounds[min(c + step, len(ug))]]
        dist[sel], idx[sel], exact[sel] = run(q[sel], query_groups[sel], ug[c:c + step], **ctx)
    return (dist, idx, exact) if return_exact else (dist, idx)


#: query rows per chunk of the capped search of :func:`ball_knn`
CAPPED_ROWS = 16384


def _centre_products(q, c32):
    # in torch: numpy's OpenBLAS threads spin for a while after a product, taking the
    # cores from the numba loops that follow
    import torch

    return (torch.from_numpy(q) @ torch.from_numpy(c32).T).numpy()


def _exact_group(q, qg, ug, *, bank, k, partition, allowed, c32, cn, err, bank_norm,
                 buffers):
    """:func:`ball_knn`'s exact search for the queries ``q`` of one group ``ug[0]``."""
    import torch

    from .ann import _row_distances

    compact, search = _ball_kernels()[:2]
    rotation, rows = partition["rotation"], partition["rows"]
    buf_rows, buf_pos, buf_rho, buf_starts, buf_max = buffers
    compact(allowed[ug[0]][partition["groups"]], rows, partition["rho"], partition["starts"],
            buf_rows, buf_pos, buf_rho, buf_starts, buf_max)
    qn = (q.astype(np.float64) ** 2).sum(1)
    # one product gives the rotated rows and q.c_j
    qb = _centre_products(q, np.ascontiguousarray(np.vstack([rotation.T, c32])))
    slack = 1e-4 * (np.sqrt(qn) + bank_norm)
    d_g = np.empty((len(q), k), np.float32)
    i_g = np.empty((len(q), k), np.int64)
    search(np.ascontiguousarray(qb[:, :rotation.shape[1]]), qb[:, rotation.shape[1]:], qn, cn,
           np.sqrt(cn), err, slack, buf_rows, buf_rho, buf_starts, buf_max, k, d_g, i_g)
    i_g = partition["index"][buf_pos[i_g]]
    d_g = _row_distances(torch.from_numpy(q), torch.from_numpy(bank), i_g, 1 << 26)
    order = np.argsort(d_g, axis=1, kind="stable")
    return (np.take_along_axis(d_g, order, 1), np.take_along_axis(i_g, order, 1),
            np.ones(len(q), bool))


def _capped_groups(q, qg, ug, *, bank, k, partition, allowed, c32, cn, err, bank_norm,
                   max_cells):
    """:func:`ball_knn`'s capped search for the queries ``q`` of the groups ``ug``."""
    import numba

    kern = _ball_kernels()
    first_cells, more_cells, visitors, sweep = kern[2:]
    tables = partition if "bank_cell" in partition else _sweep_tables(partition)
    order, gstart = tables["group_order"], tables["group_starts"]
    m = len(q)
    n_cells = len(c32)
    G = len(ug)
    qstart = np.r_[0, np.cumsum(np.bincount(np.searchsorted(ug, qg), minlength=G))]
    qgi = np.repeat(np.arange(G), np.diff(qstart))  # q is sorted by group
    ok = allowed[ug][:, :tables["cell_count"].shape[1]]
    count = np.ascontiguousarray(ok.astype(np.int32) @ tables["cell_count"].T)  # (G, cells)
    rho_max = np.empty((G, n_cells))
    for g in range(G):
        rho_max[g] = tables["cell_rho_max"][:, ok[g]].max(axis=1)
    # the bank groups some query group allows, each with the query groups allowing it,
    # cut into parts of about equal work (rows x query groups), two per thread
    hs = np.flatnonzero(ok.any(axis=0)).astype(np.int64)
    by_h = ok[:, hs].T
    hgrp = np.nonzero(by_h)[1].astype(np.int64)
    hstart = np.r_[0, np.cumsum(by_h.sum(axis=1))].astype(np.int64)
    n_parts = max(1, min(len(hs), 2 * numba.get_num_threads()))
    work = np.cumsum(by_h.sum(axis=1) * np.diff(gstart)[hs])
    pstart = np.r_[0, np.searchsorted(work, work[-1] * np.arange(1, n_parts) / n_parts),
                   len(hs)].astype(np.int64)
    qn = (q.astype(np.float64) ** 2).sum(1)
    prod = _centre_products(q, c32)
    c_norm = np.sqrt(cn)
    slack = 1e-4 * (np.sqrt(qn) + bank_norm)
    vstart = np.empty((G, n_cells + 1), np.int64)
    best = np.full((n_parts, m, k), np.inf, np.float32)
    bidx = np.full((n_parts, m, k), -1, np.int64)
    bound = np.full(m, np.inf)

    def run(cells, lo, hi, n_vis):
        total = int(n_vis.sum())
        vlist, vlo, vhi = np.empty(total, np.int64), np.empty(total), np.empty(total)
        visitors(qstart, cells, lo, hi, n_vis, n_cells, vstart, vlist, vlo, vhi)
        sweep(q, bank, order, gstart, tables["bank_cell"], tables["bank_rho"], hs, hstart,
              hgrp, pstart, vstart, vlist, vlo, vhi, slack, best, bidx, bound)
        if n_parts > 1:  # the parts' k nearest into part 0
            b = best.transpose(1, 0, 2).reshape(m, -1)
            pick = np.argsort(b, axis=1, kind="stable")[:, :k]
            best[0] = np.take_along_axis(b, pick, 1)
            bidx[0] = np.take_along_axis(bidx.transpose(1, 0, 2).reshape(m, -1), pick, 1)
            best[1:] = np.inf
            bidx[1:] = -1

    width = min(n_cells, k)
    cells1, n1 = np.empty((m, width), np.int32), np.empty(m, np.int64)
    lo, hi = np.empty((m, width)), np.empty((m, width))
    first_cells(prod, qn, cn, c_norm, err, qgi, count, k, cells1, lo, hi, n1)
    run(cells1, lo, hi, n1)
    kth = np.sqrt(best[0, :, k - 1].astype(np.float64))
    width = min(n_cells, max_cells)
    cells2, n2 = np.empty((m, width), np.int32), np.empty(m, np.int64)
    lo, hi = np.empty((m, width)), np.empty((m, width))
    next_lower = np.empty(m)
    more_cells(prod, qn, cn, c_norm, err, slack, qgi, count, rho_max, cells1, n1, kth,
               max_cells, cells2, lo, hi, n2, next_lower)
    bound[:] = kth + slack
    run(cells2, lo, hi, n2)
    d = np.sqrt(best[0])
    return d, bidx[0].copy(), next_lower > d[:, k - 1] + slack
