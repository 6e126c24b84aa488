"""PatchCore: nearest-neighbour distance to a coreset memory bank of nominal patches."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state

from .._kernels import patch_rows
from .._kernels.ann import build_index, principal_directions
from .._kernels.coreset import greedy_coreset
from .._kernels.knn import knn_search
from ..utils._sklearn_compat import Interval, StrOptions
from ._base import BaseDetector, PatchDetectorMixin
from ._device import DeviceMixin

__all__ = ["PatchCore", "reweighted_image_scores"]

#: PatchCore's default bank size from which ``nn_method="auto"`` searches approximately
PATCHCORE_APPROX_THRESHOLD = 10_000


#: dimensions of the principal subspace whose distances bound distances to bank rows
#: from below in :func:`_pruned_knn`
BOUND_DIM = 32


def _bank_products(bank):
    """What the exact searches of few rows need, computed once per fit.

    ``bank_m2``, ``norms``: ``-2 bank`` and ``||b||^2`` (torch) for
    :func:`_rank_against_bank`; ``proj`` (orthonormal columns: the bank's
    ``BOUND_DIM`` leading principal directions), ``bank_z = bank @ proj`` and
    ``bank_zn = ||bank_z||^2`` for the lower bounds of :func:`_pruned_knn`.
    """
    import torch

    bank = np.asarray(bank, dtype=np.float32)
    out = {"bank_m2": torch.from_numpy(-2.0 * bank),
           "norms": torch.from_numpy(np.einsum("ij,ij->i", bank, bank)[:, None])}
    proj = torch.from_numpy(principal_directions(bank, BOUND_DIM))
    bank_z = torch.mm(torch.from_numpy(bank), proj)
    out.update(proj=proj, bank_z=bank_z.T.contiguous(),
               bank_zn=torch.linalg.vector_norm(bank_z, dim=1) ** 2)
    return out


def _rank_against_bank(q, products):
    """``||b||^2 - 2 q.b`` for every (bank row, row of ``q``), shape ``(n_bank, m)``.

    One product ``(-2 bank) q^T``: with the bank as the tall operand, torch's product
    of few rows took 0.5-0.8x the time of ``q (-2 bank^T)``.
    """
    import torch

    q = np.array(q, dtype=np.float32, order="C")  # a few rows: copying is cheap
    # numpy allocates the result: it asks for huge pages, torch does not (first
    # touch of a multi-MB torch buffer measured ~3x slower here)
    out = np.empty((products["bank_m2"].shape[0], len(q)), np.float32)
    torch.addmm(products["norms"], products["bank_m2"], torch.from_numpy(q).T,
                out=torch.from_numpy(out))
    return out


def _pruned_knn(q, bank, k, upper, products, groups=None):
    """Exact ``k`` nearest bank rows of the rows of ``q``, by pruning.

    ``upper[i]`` must bound the ``k``-th neighbour distance of ``q[i]`` from above
    (e.g. the ``k``-th distance an approximate search returned). Distances in the
    bank's principal subspace bound true distances from below (the projection is
    orthonormal), so only bank rows whose bound is within ``upper`` can be among the
    ``k`` nearest; those are measured exactly. With ``groups = (query_groups,
    bank_groups)`` bank rows sharing the query's group are skipped. Rows with more
    than ``n_bank // 16`` candidates come back as -1 / inf: a full search is cheaper.

    Returns
    -------
    distances : ndarray of float32, shape (m, k), ascending
    indices : ndarray of int64, shape (m, k)
    """
    import torch

    n = bank.shape[0]
    dist = np.full((len(q), k), np.inf, np.float32)
    idx = np.full((len(q), k), -1, np.int64)
    for s in range(0, len(q), 256):  # bounded (rows x bank) blocks
        e = min(len(q), s + 256)
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
        # (flat indices: np.nonzero of the 2-D mask was 7x slower)
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


def reweighted_image_scores(patch_scores, patch_features, nn_indices, bank, n_neighbors,
                            *, device=None, neighbors=None):
    """PatchCore's image score (Roth et al. 2021, eq. 7) from per-patch results.

    ``s = (1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||) * s*``
    where ``m_test*`` is the image's patch with the largest score ``s*``, ``m*`` its
    nearest bank patch and ``N_b(m*)`` the ``b`` nearest bank patches of ``m*``
    (``m*`` itself included, as in the reference implementation).

    Parameters
    ----------
    patch_scores : ndarray of shape (n, P)
        Nearest-bank distance of each patch.
    patch_features : ndarray of shape (n, P, C)
    nn_indices : ndarray of int, shape (n, P)
        Bank row of each patch's nearest neighbour.
    bank : ndarray of shape (M, C)
    n_neighbors : int
        ``b``; clipped to the bank size.
    device : {"auto", "cpu", "cuda"}, torch.device or None
    neighbors : callable, optional
        ``neighbors(idx, b)`` -> the ``b`` nearest bank rows of bank rows ``idx``
        (``N_b(m*)``); default: :func:`~skad._kernels.knn.knn_search`.

    Returns
    -------
    scores : ndarray of float32, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors.patchcore import reweighted_image_scores
    >>> bank = np.array([[0.0], [1.0], [10.0]], np.float32)
    >>> feats = np.array([[[0.0], [3.0]]], np.float32)
    >>> s = reweighted_image_scores(np.array([[0.0, 2.0]]), feats, np.array([[0, 1]]), bank, 2)
    >>> np.round(s.astype(float), 4).tolist()      # 2 * (1 - e^2 / (e^2 + e^3))
    [1.4621]
    """
    n = patch_scores.shape[0]
    arg = np.argmax(patch_scores, axis=1)
    rows = np.arange(n)
    s_star = patch_scores[rows, arg]  # s* (eq. 6)
    m_test = patch_features[rows, arg]  # m_test*
    star = nn_indices[rows, arg]
    m_star = bank[star]  # m*
    b = int(min(n_neighbors, len(bank)))
    if neighbors is None:
        _, support = knn_search(m_star, bank, b, device=device)  # N_b(m*)
    else:
        support = neighbors(star, b)
    dist = np.linalg.norm(bank[support] - m_test[:, None, :], axis=2).astype(np.float64)
    d_star = np.linalg.norm(m_star - m_test, axis=1).astype(np.float64)
    # softmax over the support set (m* is in it), in a numerically stable form
    top = dist.max(axis=1)
    weight = 1.0 - np.exp(d_star - top) / np.exp(dist - top[:, None]).sum(axis=1)
    return (weight * s_star).astype(np.float32)


class PatchCore(DeviceMixin, PatchDetectorMixin, BaseDetector):
    """PatchCore (Roth et al. 2021): distance of each patch to a coreset memory bank.

    Every training patch goes into a memory bank, which a greedy k-center coreset
    (on a random projection) reduces to ``coreset_ratio`` of its size. A test
    patch's anomaly score is its Euclidean distance to the nearest bank patch; the
    image score is the largest patch score, reweighted by how isolated that patch's
    nearest bank patch is (eq. 7).

    Parameters
    ----------
    coreset_ratio : float in (0, 1], default=0.1
        Fraction of training patches kept (1.0: the full bank).
    n_neighbors : int, default=9
        ``b``, the neighbourhood of the reweighting (eq. 7).
    projection_dim : int or None, default=128
        Random-projection dimension for the coreset selection (None: none).
    exclude_self : bool, default=False
        Blind use (``fit(X)`` then score the same ``X``): a patch's distance is to its
        *second* nearest bank patch, so a patch kept in the bank does not match itself.
    nn_method : {"auto", "exact", "cells", "ivf", "nndescent"}, default="auto"
        Nearest-neighbour search: "exact" (chunked brute force), "cells" (each
        query ranked by matrix products against the candidate list of its nearest
        of ``sqrt(n_bank)`` k-means cells: the cell's rows and their 32 nearest bank
        rows), "ivf" (a faiss inverted-file index: exact distances within the
        ``n_probe`` nearest of ``2 sqrt(n_bank)`` k-means lists), "nndescent" (a
        pynndescent graph) or "auto": "cells" from ``approx_threshold`` bank rows
        on the CPU, else "exact" (``nn_method_`` records the choice).
    approx_threshold : int, default=10_000
        Bank size from which "auto" searches approximately (bottle at 10 %: 16.4k).
    n_probe : int, default=8
        Lists an "ivf" search visits per query (higher: better recall, slower);
        unused by the other searches.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the training scores ("auto": no training image flagged).
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the coreset selection and the neighbour searches run ("auto": CUDA when
        available).
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset (projection and start point) and the approximate index.

    Attributes
    ----------
    memory_bank_ : ndarray of float32, shape (n_bank, n_features_in_)
    bank_image_ids_ : ndarray of int64, shape (n_bank,)
        Training image of each bank patch.
    coreset_indices_ : ndarray of int64, shape (n_bank,)
        Rows of the full bank (image-major, then row-major position) that were kept.
    nn_method_ : {"exact", "cells", "ivf", "nndescent"}
    index_ : :class:`~skad._kernels.ann.NeighborIndex`
        The search over ``memory_bank_``.
    device_ : torch.device
        The device fit resolved ``device`` to; scoring runs there (the CPU after
        unpickling on a machine without CUDA).
    n_features_in_ : int
    patch_shape_ : tuple of int
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    - Training scores (for ``offset_``) match each training image's patches against
      bank patches of *other* training images only; otherwise every training image
      would score almost 0 against its own patches. Consequently
      ``score_samples(X_train)`` (no exclusion) is higher than ``train_scores_``
      and scikit-learn's ``check_outliers_train`` (which expects predictions on
      the training set to follow ``contamination``) does not hold.
    - The coreset projection is Gaussian, to ``projection_dim`` dimensions as the
      paper (anomalib's sparse projection sized by the JL bound raises 152 channels
      to about 296). The first center is random (Algorithm 1 leaves it open).
    - ``N_b(m*)`` includes ``m*`` itself (the reference implementation's reading of
      eq. 7); ``b`` is clipped to the bank size.
    - Memory: the full bank ``4 * n * h * w * C`` bytes during fit (209 bottle images
      x 784 patches x 152 channels: 100 MB), ``coreset_ratio`` of it afterwards.
    - Search: the paper searches exactly (faiss flat). Here banks of at least
      ``approx_threshold`` rows are searched approximately on the CPU by default
      ("cells"), which can only raise a patch's score (distances are exact to the
      row found); on bottle at 10 % it finds the exact nearest neighbour of 98.8 %
      of the test patches and gives the exact search's image AUROC, pixel AUROC and
      PRO (``benchmarks/results/bottle_baselines.md``). Image scores stay exact:
      approximate scores are upper bounds, so each image's highest-scoring patch is
      searched exactly until it is one already searched exactly (on bottle: 4
      rounds, 151 rows for 83 images). ``score_samples`` / ``decision_function`` /
      ``predict``, which need no maps, start from the "coarse" search instead (each
      query against its cell's own rows only: a third of the products; the exact
      rounds then search 247 rows, same scores). ``N_b(m*)`` is found exactly by
      pruning (lower bounds from the bank's 32-dim principal subspace; about 60 of
      16.4k bank rows measured per ``m*``). ``nn_method="exact"`` restores the paper's
      search for the maps too; on a GPU "auto" searches exactly.
    - Coreset: exact greedy selection (same picks as the naive loop), computed in
      lazy batches with pruned updates (:func:`~skad._kernels.coreset.greedy_coreset`).

    References
    ----------
    K. Roth, L. Pemula, J. Zepeda, B. Schoelkopf, T. Brox, P. Gehler. "Towards Total
    Recall in Industrial Anomaly Detection", CVPR 2022 (arXiv:2106.08265).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import PatchCore
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 8, 6, 6)).astype(np.float32)
    >>> X_test = X[:2].copy(); X_test[1, :, 2, 3] += 10.0   # one defective patch
    >>> det = PatchCore(coreset_ratio=0.5, random_state=0).fit(X)
    >>> scores = det.anomaly_score(X_test)
    >>> bool(scores[1] > scores[0]), det.anomaly_map(X_test, output_size=24).shape
    (True, (2, 24, 24))
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "coreset_ratio": [Interval(Real, 0, 1, closed="right")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left"), None],
        "exclude_self": ["boolean"],
        "nn_method": [StrOptions({"auto", "exact", "cells", "ivf", "nndescent"})],
        "approx_threshold": [Interval(Integral, 1, None, closed="left")],
        "n_probe": [Interval(Integral, 1, None, closed="left")],
        **DeviceMixin._device_constraint,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        coreset_ratio=0.1,
        n_neighbors=9,
        projection_dim=128,
        exclude_self=False,
        nn_method="auto",
        approx_threshold=PATCHCORE_APPROX_THRESHOLD,
        n_probe=8,
        contamination="auto",
        sigma=4.0,
        device="auto",
        random_state=None,
    ):
        self.coreset_ratio = coreset_ratio
        self.n_neighbors = n_neighbors
        self.projection_dim = projection_dim
        self.exclude_self = exclude_self
        self.nn_method = nn_method
        self.approx_threshold = approx_threshold
        self.n_probe = n_probe
        self.contamination = contamination
        self.sigma = sigma
        self.device = device
        self.random_state = random_state

    def _fit(self, X):
        rng = check_random_state(self.random_state)
        device = self._fit_device()
        n, _, h, w = X.shape
        if n < 2:
            raise ValueError(
                "PatchCore needs at least 2 training images (training scores compare "
                f"each image with the others); got {n} sample(s)"
            )
        rows = patch_rows(X)
        image_ids = np.repeat(np.arange(n, dtype=np.int64), h * w)
        n_select = max(1, int(self.coreset_ratio * len(rows)))
        if n_select < len(rows):
            idx = greedy_coreset(
                rows, n_select, projection_dim=self.projection_dim, random_state=rng,
                device=device,
            )
        else:
            idx = np.arange(len(rows), dtype=np.int64)
        self.coreset_indices_ = idx
        self._products_cache = None
        self.memory_bank_ = rows[idx]
        self.bank_image_ids_ = image_ids[idx]
        method = self.nn_method
        if method == "auto":
            approx = len(idx) >= self.approx_threshold and device.type == "cpu"
            method = "cells" if approx else "exact"
        index = build_index(
            self.memory_bank_, method=method, n_probe=self.n_probe, random_state=rng,
            device=device,
        )
        self.nn_method_ = index.method_
        self.index_ = index
        if self.nn_method_ != "exact":
            self._products()  # in fit, not in the first predict
        return self

    def _products(self):
        """:func:`_bank_products` plus, from the approximate index, an upper bound on
        each bank row's ``n_neighbors``-th neighbour distance; computed once per fit
        (in fit; again after unpickling, where it is not stored)."""
        if getattr(self, "_products_cache", None) is None:
            p = _bank_products(self.memory_bank_)
            p["b"] = int(min(self.n_neighbors, len(self.memory_bank_)))
            p["upper"] = self.index_.query(self.memory_bank_, p["b"])[0][:, -1]
            self._products_cache = p
        return self._products_cache

    def _bank_neighbors(self, idx, b):
        """``N_b`` of bank rows ``idx``, exactly (see :meth:`_exact_knn`)."""
        p = self._products()
        upper = (p["upper"][idx] if b == p["b"]  # n_neighbors unchanged since fit
                 else self.index_.query(self.memory_bank_[idx], b)[0][:, -1])
        return self._exact_knn(self.memory_bank_[idx], b, upper=upper)[1]

    def _exact_knn(self, q, k, groups=None, upper=None):
        """Exact k-NN of a few rows: pruned given upper bounds (:func:`_pruned_knn`),
        else (and for rows with too many candidates) one product against the bank.

        Pruning pays for bank rows (``N_b(m*)``: about 60 candidates of 16.4k on
        bottle), not for the top test patches, which lie far from the bank (hundreds
        to thousands of candidates: measured 2x slower than the product).
        """
        import torch

        p = self._products()
        if upper is None:
            dist = np.full((len(q), k), np.inf, np.float32)
            idx = np.full((len(q), k), -1, np.int64)
        else:
            dist, idx = _pruned_knn(q, self.memory_bank_, k, upper, p, groups)
        for s0 in range(0, len(q), 1024):  # the rest, in bounded (rows x bank) blocks
            rest = s0 + np.flatnonzero(idx[s0:s0 + 1024, 0] < 0)
            if not len(rest):
                continue
            d2 = _rank_against_bank(q[rest], p)  # (bank, rows)
            if groups is not None:
                d2[groups[1][:, None] == groups[0][None, rest]] = np.inf
            if k == 1:  # (torch's min over the bank axis: 3x numpy's argmin here)
                part = torch.from_numpy(d2).min(dim=0).indices.numpy()[:, None]
            else:
                d2 = d2.T
                part = (np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1]
                        else np.broadcast_to(np.arange(k), (len(rest), k)))
                part = np.take_along_axis(part, np.argsort(
                    np.take_along_axis(d2, part, 1), axis=1, kind="stable"), 1)
            diff = q[rest][:, None, :] - self.memory_bank_[part]
            dist[rest] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            idx[rest] = part
        return dist, idx

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_products_cache", None)
        return state

    def _nearest(self, rows, image_ids, exclude_own_image, search):
        """Nearest bank row of each patch row (distance, index), per the exclusions.

        ``search(q, k, groups)`` is :meth:`_index_search` or :meth:`_exact_knn`;
        ``groups = (query_groups, bank_groups)`` or None.
        """
        if exclude_own_image:
            dist, nn = search(rows, 1, (image_ids, self.bank_image_ids_))
        elif self.exclude_self:  # the second nearest row
            dist, nn = search(rows, 2, None)
            dist, nn = dist[:, 1:], nn[:, 1:]
        else:
            dist, nn = search(rows, 1, None)
        return dist[:, 0], nn[:, 0]

    def _index_search(self, q, k, groups, coarse=False):
        if groups is None:
            return self.index_.query(q, k, coarse=coarse)
        return self.index_.query(q, k, query_groups=groups[0], bank_groups=groups[1],
                                 coarse=coarse)

    def _coarse_search(self, q, k, groups):
        return self._index_search(q, k, groups, coarse=True)

    def _patch_scores(self, X, exclude_own_image, maps=True):
        n, c, h, w = X.shape
        hw = h * w
        rows = patch_rows(X)
        image_ids = np.repeat(np.arange(n, dtype=np.int64), hw)
        approx = self.nn_method_ != "exact"
        # image scores alone: the coarse search's upper bounds suffice for the
        # exact rounds below (bottle: they search 247 rows instead of 151, for a
        # third of the search's products)
        dist, nn = self._nearest(rows, image_ids, exclude_own_image,
                                 self._index_search if maps else self._coarse_search)
        scores = dist.reshape(n, hw)  # s_i = min_m ||m_test_i - m|| (eq. 6)
        nn = nn.reshape(n, hw)
        if approx:
            # The image score needs the largest patch score exactly. Approximate
            # scores are upper bounds, so each image's top patch is searched exactly
            # until the top patch is one already searched exactly: no other patch
            # can then score higher. Each round searches the `per` highest patches
            # not yet exact of each unfinished image, `per` doubling from 1: every
            # round streams the whole bank, so few rounds beat few rows
            # (bottle: 1 per round took 11 rounds / 124 rows; all patches above the
            # first exact value at once, 2 rounds / 752 rows; doubling 4 / 151).
            done = np.zeros(scores.shape, bool)
            images = np.arange(n)
            per = 1
            while True:
                top = scores.argmax(axis=1)
                todo = ~done[images, top]
                if not todo.any():
                    break
                r = images[todo]
                open_scores = np.where(done[r], -np.inf, scores[r])
                per = min(per, hw)
                p = np.argpartition(-open_scores, per - 1, axis=1)[:, :per]
                r = np.repeat(r, per)
                p = p.ravel()
                keep = ~done[r, p]
                r, p = r[keep], p[keep]
                scores[r, p], nn[r, p] = self._nearest(
                    rows[r * hw + p], r, exclude_own_image, self._exact_knn)
                done[r, p] = True
                per *= 2
        image = reweighted_image_scores(
            scores, rows.reshape(n, hw, c), nn, self.memory_bank_, self.n_neighbors,
            device=self.device_,
            neighbors=self._bank_neighbors if approx else None,
        )
        return image, scores.reshape(n, h, w)

    def _score(self, X):
        return self._patch_scores(X, exclude_own_image=False)

    def _score_images(self, X):
        return self._patch_scores(X, exclude_own_image=False, maps=False)[0]

    def _offset_scores(self, X):
        return self._patch_scores(X, exclude_own_image=True, maps=False)[0]
