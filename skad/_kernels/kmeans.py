"""k-means for many centres at linear cost: a coarse partition, then k-means in each cell.

N-pad's memory bank keeps a fixed fraction of the features as k-means centres
(``0.1 * n * h * w``), so one k-means over all of them costs
``n_samples * n_clusters * d`` per pass: quadratic in the number of images (bottle's
209 images: 164k features x 16k centres, 5 TFLOP over N-pad's six fits). Here a
coarse k-means first splits the rows into cells of about ``cell_size`` rows; each
cell then gets its share of the centres (proportional to its size) from a
MiniBatchKMeans of its own rows. A pass costs ``n_samples * (n_cells + n_clusters /
n_cells) * d``, linear in ``n_samples`` for a fixed cell size. Each centre stays
inside its cell, which is what a k-means centre near the cell's middle does anyway;
the quantisation error of both on held-out features is in ``doc/npad.md``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils import check_random_state

__all__ = ["partitioned_kmeans"]


def _minibatch(X, n_clusters, batch_size, max_iter, rng, init):
    km = MiniBatchKMeans(
        n_clusters=n_clusters, init=init, n_init=1, batch_size=batch_size,
        max_iter=max_iter,
        # only the centres are kept; the final labelling pass is skipped except for
        # data within two batches (cheap there, and scikit-learn sets the inertia of a
        # fit without labels from its second step on: fewer steps fail)
        compute_labels=len(X) * max_iter < 2 * batch_size,
        random_state=rng,
    )
    return km.fit(X)


def partitioned_kmeans(X, n_clusters, *, cell_size=4096, batch_size=4096, max_iter=1,
                       random_state=None):
    """``n_clusters`` k-means centres of the rows of ``X``, found cell by cell.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
    n_clusters : int
        Number of centres, ``1 <= n_clusters <= n_samples``.
    cell_size : int or None, default=4096
        Rows per coarse cell (about). ``None``, or ``n_samples <= cell_size``: one
        MiniBatchKMeans over all rows.
    batch_size : int, default=4096
        Batch size of each :class:`~sklearn.cluster.MiniBatchKMeans`.
    max_iter : int, default=1
        Passes of each MiniBatchKMeans over its rows.
    random_state : int, RandomState instance or None

    Returns
    -------
    centres : ndarray of float32, shape (m, d)
        ``m = n_clusters``, except that a cell never gets more centres than rows nor
        fewer than one (``m`` then differs from ``n_clusters`` by those few).

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
    batch_size, max_iter = int(batch_size), int(max_iter)
    n_cells = 1 if cell_size is None else min(int(np.ceil(n / cell_size)), int(n_clusters))
    if n_cells <= 1:
        km = _minibatch(X, int(n_clusters), batch_size, max_iter, rng, "random")
        return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)
    # coarse cells: k-means++ seeding is cheap for a few dozen centres
    coarse = _minibatch(X, n_cells, batch_size, max(3, max_iter), rng, "k-means++")
    labels = coarse.predict(X)
    sizes = np.bincount(labels, minlength=n_cells)
    # each cell's share of the centres (largest remainders), at least one per
    # non-empty cell and at most its rows
    share = n_clusters * sizes / n
    counts = np.floor(share).astype(np.int64)
    counts[np.argsort(counts - share, kind="stable")[: int(n_clusters - counts.sum())]] += 1
    counts = np.clip(counts, (sizes > 0).astype(np.int64), sizes)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    centres = []
    for c in np.flatnonzero(counts):
        rows = X[order[bounds[c]:bounds[c + 1]]]
        if counts[c] == len(rows):
            centres.append(rows)
            continue
        km = _minibatch(rows, int(counts[c]), batch_size, max_iter, rng, "random")
        centres.append(km.cluster_centers_)
    return np.ascontiguousarray(np.concatenate(centres), dtype=np.float32)
