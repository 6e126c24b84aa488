"""k-means for many centres at linear cost: a coarse partition, then k-means in each cell.

N-pad's memory bank keeps a fixed fraction of the features as k-means centres
(``0.1 * n * h * w``), so one k-means over all of them costs
``n_samples * n_clusters * d`` per pass: quadratic in the number of images (bottle's
209 images: 164k features x 16k centres, 5 TFLOP over N-pad's six fits). Here a
coarse k-means first splits the rows into cells of about ``cell_size`` rows; each
cell then gets its share of the centres (proportional to its size) from a k-means of
its own rows (:func:`lloyd`: rows drawn at random as the first centres, then Lloyd
iterations; assignments by :func:`~skad._kernels.knn.knn_search`). A pass costs ``n_samples * (n_cells + n_clusters /
n_cells) * d``, linear in ``n_samples`` for a fixed cell size. Each centre stays
inside its cell, which is what a k-means centre near the cell's middle does anyway;
the quantisation error of both on held-out features is in ``doc/npad.md``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils import check_random_state

from .knn import _chunk_sizes, ranking_operand

__all__ = ["lloyd", "partitioned_kmeans", "restricted_kmeans"]


def lloyd(X, n_clusters, *, n_iter=1, random_state=None, return_seeds=False):
    """k-means by Lloyd iterations from ``n_clusters`` rows drawn at random.

    Each iteration assigns every row to its nearest centre
    (:func:`~skad._kernels.knn.knn_search`) and moves each centre to the mean of its
    rows; a centre without rows stays where it is.

    Parameters
    ----------
    X : ndarray of float32, shape (n_samples, d)
    n_clusters : int
    n_iter : int, default=1
    random_state : int, RandomState instance or None
    return_seeds : bool, default=False
        Also return the rows drawn as the first centres.

    Returns
    -------
    centres : ndarray of float32, shape (n_clusters, d)
    labels : ndarray of int64, shape (n_samples,)
        Each row's centre at the last assignment (before the last move).
    seeds : ndarray of int64, shape (n_clusters,)
        Only with ``return_seeds``: the row each centre started from.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.kmeans import lloyd
    >>> X = np.array([[0.0], [0.2], [10.0], [10.4]], np.float32)
    >>> c, lab = lloyd(X, 2, n_iter=3, random_state=1)
    >>> sorted(round(float(v), 1) for v in c.ravel())
    [0.1, 10.2]
    """
    import torch

    rng = check_random_state(random_state)
    X = np.ascontiguousarray(X, dtype=np.float32)
    Xt = torch.from_numpy(X)
    seeds = rng.choice(len(X), int(n_clusters), replace=False)
    centres = Xt[torch.from_numpy(seeds)].clone()
    # [x, 1] once for all iterations: each assignment is then one product per block
    X_aug = torch.cat([Xt, torch.ones((len(X), 1), dtype=Xt.dtype)], 1)
    for _ in range(int(n_iter)):
        labels = _nearest_centre(X_aug, centres)
        # the rows' sums per centre: rows sorted by centre, summed in runs (index_add_
        # is several times slower on the CPU)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(centres))
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(X[order], starts, axis=0)
        centres[torch.from_numpy(filled)] = torch.from_numpy(
            (sums / counts[filled, None]).astype(np.float32))
    if return_seeds:
        return centres.numpy(), labels, np.asarray(seeds, dtype=np.int64)
    return centres.numpy(), labels


def _nearest_centre(X_aug, centres):
    """Index of each row's nearest centre: the assignment of
    :func:`~skad._kernels.knn.knn_search` with ``k=1`` (the same ranking products, in
    the same blocks, so the same labels), without its distances.

    ``X_aug`` is ``[X, 1]`` (rows with a trailing one), shape (n, d + 1).
    """
    import torch

    m = X_aug.shape[0]
    mq, mb = _chunk_sizes(m, len(centres), 1, None, None, None)
    b_aug = ranking_operand(centres)
    labels = torch.empty(m, dtype=torch.int64)
    with torch.inference_mode():
        for qs in range(0, m, mq):
            qe = min(qs + mq, m)
            q_aug = X_aug[qs:qe]
            best_d = best_i = None
            for bs in range(0, len(centres), mb):
                be = min(bs + mb, len(centres))
                vals, idx = (q_aug @ b_aug[:, bs:be]).min(dim=1, keepdim=True)
                idx = idx + bs
                if best_d is None:
                    best_d, best_i = vals, idx
                else:  # as knn_search merges bank blocks: the first of equal minima
                    best_d, pos = torch.cat([best_d, vals], 1).min(dim=1, keepdim=True)
                    best_i = torch.gather(torch.cat([best_i, idx], 1), 1, pos)
            labels[qs:qe] = best_i[:, 0]
    return labels.numpy()


def partitioned_kmeans(X, n_clusters, *, cell_size=4096, batch_size=4096, max_iter=1,
                       random_state=None, coarse_iter=5, return_fit=False):
    """``n_clusters`` k-means centres of the rows of ``X``, found cell by cell.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    n_clusters : int
        Number of centres, ``1 <= n_clusters <= n_samples``.
    cell_size : int or None, default=4096
        Rows per coarse cell (about): a :func:`lloyd` k-means with ``coarse_iter``
        iterations splits the rows into ``ceil(n_samples / cell_size)`` cells, and
        each cell's share of the centres comes from :func:`lloyd` on its rows with
        ``max_iter`` iterations. ``None``: one
        :class:`~sklearn.cluster.MiniBatchKMeans` (``init="random"``) over all rows,
        ``max_iter`` epochs of ``batch_size`` (cost quadratic in the rows).
    batch_size : int, default=4096
        Batch size of the MiniBatchKMeans (``cell_size=None``).
    max_iter : int, default=1
        Epochs of the MiniBatchKMeans, or Lloyd iterations in each cell.
    random_state : int, RandomState instance or None
    coarse_iter : int, default=5
        Lloyd iterations of the coarse split.
    return_fit : bool, default=False
        Also return how the centres were found (cells only: ``cell_size`` not None),
        for :func:`restricted_kmeans`.

    Returns
    -------
    centres : ndarray of float32, shape (m, d)
        ``m = n_clusters``, except that a cell never gets more centres than rows nor
        fewer than one (``m`` then differs from ``n_clusters`` by those few).
    fit : dict
        Only with ``return_fit``: ``"labels"`` (each row's centre at the last
        assignment; each centre is the mean of its rows, except a centre no row
        chose, which stays at its seed), ``"seeds"`` (the row each centre started
        from), ``"cells"`` (each centre's cell) and ``"max_iter"``.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.kmeans import partitioned_kmeans
    >>> X = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    >>> partitioned_kmeans(X, 300, cell_size=500, random_state=0).shape
    (300, 4)
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    if not isinstance(n_clusters, Integral) or not 1 <= n_clusters <= n:
        raise ValueError(
            f"n_clusters: expected an int in [1, {n}] (the rows of X); got {n_clusters!r}"
        )
    if cell_size is not None and (not isinstance(cell_size, Integral) or cell_size < 1):
        raise ValueError(f"cell_size: expected a positive int or None; got {cell_size!r}")
    rng = check_random_state(random_state)
    if cell_size is None:
        if return_fit:
            raise ValueError("return_fit: needs cell_size (the MiniBatchKMeans of "
                             "cell_size=None does not label the rows)")
        km = MiniBatchKMeans(
            n_clusters=int(n_clusters), init="random", n_init=1, batch_size=int(batch_size),
            max_iter=int(max_iter),
            # only the centres are kept; the final labelling pass is skipped except for
            # data within two batches (cheap there, and scikit-learn sets the inertia of
            # a fit without labels from its second step on: fewer steps fail)
            compute_labels=n * int(max_iter) < 2 * int(batch_size),
            random_state=rng,
        )
        return np.ascontiguousarray(km.fit(X).cluster_centers_, dtype=np.float32)
    n_cells = min(int(np.ceil(n / cell_size)), int(n_clusters))
    labels = (np.zeros(n, np.int64) if n_cells == 1
              else lloyd(X, n_cells, n_iter=coarse_iter, random_state=rng)[1])
    sizes = np.bincount(labels, minlength=n_cells)
    # each cell's share of the centres (largest remainders), at least one per
    # non-empty cell and at most its rows
    share = n_clusters * sizes / n
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share, kind="stable")[: int(n_clusters - counts.sum())]] += 1
    counts = np.clip(counts, (sizes > 0).astype(np.int64), sizes)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    centres, seeds, cells = [], [], []
    labels_out = np.empty(n, np.int64)
    n_done = 0
    for c in np.flatnonzero(counts):
        rows_idx = order[bounds[c]:bounds[c + 1]]
        rows = X[rows_idx]
        if counts[c] == len(rows):  # every row a centre (its own seed)
            cell_centres, cell_labels = rows, np.arange(len(rows))
            cell_seeds = cell_labels
        else:
            cell_centres, cell_labels, cell_seeds = lloyd(
                rows, int(counts[c]), n_iter=max_iter, random_state=rng, return_seeds=True)
        centres.append(cell_centres)
        labels_out[rows_idx] = n_done + cell_labels
        seeds.append(rows_idx[cell_seeds])
        cells.append(np.full(len(cell_centres), c, np.int64))
        n_done += len(cell_centres)
    centres = np.ascontiguousarray(np.concatenate(centres), dtype=np.float32)
    if not return_fit:
        return centres
    return centres, {"labels": labels_out, "seeds": np.concatenate(seeds),
                     "cells": np.concatenate(cells), "max_iter": int(max_iter)}


def restricted_kmeans(X, fit, rows):
    """The k-means of :func:`partitioned_kmeans` redone on the rows ``rows`` alone.

    With ``max_iter=1`` a cell's centres are one Lloyd step from rows drawn at random
    (the seeds): every row goes to its nearest seed and each centre to its rows'
    mean. Restricted to ``rows``, the seeds among them stay (a random draw from these
    rows), every one of these rows goes to its nearest remaining seed of its cell
    (rows whose seed was dropped are re-assigned; the others keep theirs, which is
    still the nearest) and the centres move to their rows' means: what
    :func:`lloyd` gives on these rows of the cell from those seeds, without a pass
    over the rows whose seed stayed. The cells themselves are the full fit's. A cell
    none of whose seeds is among ``rows`` gets one centre, its rows' mean.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        The rows ``partitioned_kmeans`` was fitted on.
    fit : dict
        ``partitioned_kmeans(X, ..., return_fit=True)[1]``; ``max_iter`` must be 1.
    rows : array-like of int
        The rows to keep.

    Returns
    -------
    centres : ndarray of float32, shape (m, d)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.kmeans import partitioned_kmeans, restricted_kmeans
    >>> X = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    >>> centres, fit = partitioned_kmeans(X, 300, cell_size=500, random_state=0,
    ...                                   return_fit=True)
    >>> restricted_kmeans(X, fit, np.arange(2400)).shape[0] < 300
    True
    """
    import torch

    if fit["max_iter"] != 1:
        raise ValueError(f"fit: expected a k-means of max_iter=1 (one Lloyd step from "
                         f"its seeds); got max_iter={fit['max_iter']}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    labels, seeds, cells = fit["labels"], fit["seeds"], fit["cells"]
    member = np.zeros(len(X), bool)
    member[np.asarray(rows)] = True
    idx = np.flatnonzero(member)
    kept = member[seeds]  # centres seeded at one of the rows
    lab = labels[idx].copy()
    row_cell = cells[lab]
    moved = ~kept[lab]
    extra = []  # cells without a kept seed: one centre each
    for c in np.unique(row_cell[moved]):
        sel = np.flatnonzero(moved & (row_cell == c))
        cand = np.flatnonzero(kept & (cells == c))
        if not len(cand):
            extra.append(X[idx[sel]].astype(np.float64).mean(0))
            lab[sel] = -1
            continue
        q = torch.from_numpy(X[idx[sel]])
        q_aug = torch.cat([q, torch.ones((len(sel), 1), dtype=q.dtype)], 1)
        lab[sel] = cand[_nearest_centre(q_aug, torch.from_numpy(X[seeds[cand]]))]
    ok = lab >= 0
    lab_t = torch.from_numpy(lab[ok])
    sums = torch.zeros((len(seeds), X.shape[1]), dtype=torch.float64).index_add_(
        0, lab_t, torch.from_numpy(X[idx[ok]]).to(torch.float64))
    counts = torch.bincount(lab_t, minlength=len(seeds))
    filled = counts > 0
    out = (sums[filled] / counts[filled, None]).numpy()
    if extra:
        out = np.concatenate([out, np.stack(extra)])
    return np.ascontiguousarray(out, dtype=np.float32)
