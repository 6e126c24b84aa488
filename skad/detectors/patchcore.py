"""PatchCore: nearest-neighbour distance to a coreset memory bank of nominal patches."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state

from .._kernels import patch_rows
from .._kernels.ann import build_index
from .._kernels.coreset import greedy_coreset
from .._kernels.refine import bank_products, exact_knn
from .._kernels.reweight import reweighted_image_scores
from ..utils._sklearn_compat import Interval, StrOptions
from ..utils._warnings import warn_user
from ._base import (
    BaseDetector,
    BlindModeMixin,
    ClippedParameterWarning,
    PatchDetectorMixin,
    StreamingMixin,
    clip_to_data,
)
from ._device import DeviceMixin

__all__ = ["PatchCore"]

#: PatchCore's default bank size from which ``nn_method="auto"`` searches approximately
PATCHCORE_APPROX_THRESHOLD = 10_000
#: training patches per coreset chunk (bottle's 209 images x 784 patches: one chunk)
PATCHCORE_CORESET_CHUNK = 200_000


class PatchCore(StreamingMixin, BlindModeMixin, DeviceMixin, PatchDetectorMixin,
                BaseDetector):
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
        ``b``, the neighbourhood of the reweighting (eq. 7); clipped to the bank size
        with a warning (``n_neighbors_``; the rule: :func:`~skad.detectors.clip_to_data`).
    projection_dim : int or None, default=128
        Random-projection dimension for the coreset selection (None: none).
    coreset_chunk_size : int, default=200_000
        Training patches per greedy selection. Up to this many patches the coreset
        is the paper's exact greedy over all of them; beyond it the images are split
        at random into chunks of at most this many patches and each chunk is reduced
        to ``coreset_ratio`` of its patches on its own, so fit time grows linearly
        with the number of images instead of with ``n x picks`` (greedy k-center
        composes: each chunk's coreset covers its patches, the union covers them
        all). Accuracy against the exact selection and fit times:
        ``benchmarks/results/scale_coreset.md``.
    exclude : {"self"} or None, default=None
        Blind use (``fit(X)`` then score the same ``X``; :class:`BlindModeMixin`):
        ``"self"``: a patch's distance is to its *second* nearest bank patch, so a patch
        kept in the bank does not match itself, and ``contamination="auto"`` is the
        blind rule (:func:`~skad.detectors.blind_offset`).
    exclude_self : bool
        Deprecated (FutureWarning; removed in 0.3): ``exclude_self=True`` is
        ``exclude="self"``.
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
    n_jobs : int, -1, "auto" or None, default=None
        CPU threads of fit and scoring (:func:`skad.utils.thread_limits`): None
        follows an enclosing ``thread_limits`` block, else "auto" (the cores other
        processes leave free); -1: all cores.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration sample (none flagged;
        with unbiased calibration scores, new normal samples are flagged with
        probability at most ``1 / (n_cal + 1)``); a float flags that fraction of the
        calibration samples.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples, each against the
        bank rows of the *other* training images (leave-one-image-out); "cv" each
        training sample scored by a model fitted without its fold (5 folds; the model
        kept is fitted on all samples); "holdout" the first fold only (a fifth of the
        samples scored); a float holds that fraction of the training samples out of fit
        (the exact split-conformal setting: the model kept is fitted on the rest);
        "auto": "in_sample". See ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the coreset selection and the neighbour searches run ("auto": CUDA when
        available).
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset (projection and start point) and the approximate index.
    verbose : bool, default=False
        A progress bar over the coreset selection in ``fit`` (the long step on large
        training sets; ``skad fit`` turns it on).

    Attributes
    ----------
    memory_bank_ : ndarray of float32, shape (n_bank, n_features_in_)
        ``n_bank = max(int(coreset_ratio * n * h * w), h * w + 1)`` rows (at most all
        of them): one image's patches plus one, so that every training image has a
        bank row of another image (a ``UserWarning`` says when the floor applies).
    n_neighbors_ : int
        ``b`` used: ``min(n_neighbors, n_bank)``.
    bank_image_ids_ : ndarray of int64, shape (n_bank,)
        Training image of each bank patch.
    coreset_indices_ : ndarray of int64, shape (n_bank,)
        Rows of the full bank (image-major, then row-major position) that were kept.
    nn_method_ : {"exact", "cells", "ivf", "nndescent"}
    exclude_ : {"self"} or None
        The exclusion used (``exclude``, or the deprecated ``exclude_self``).
    blind_ : bool
        ``exclude_ is not None``.
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
      the training set to follow ``contamination``) does not hold. In blind mode
      (``exclude="self"``) the fitted set is the scored set, so its training scores
      are its blind scores (``score_samples(X_train)``) and that check holds.
    - The coreset projection is Gaussian, to ``projection_dim`` dimensions as the
      paper (anomalib's sparse projection sized by the JL bound raises the default's
      120 channels to about 296). The first center is random (Algorithm 1 leaves it open).
    - ``N_b(m*)`` includes ``m*`` itself (the reference implementation's reading of
      eq. 7).
    - Memory: the full bank ``4 * n * h * w * C`` bytes during fit (209 bottle images
      x 784 patches x 120 channels, the default features: 79 MB), ``coreset_ratio`` of it afterwards.
    - Search: the paper searches exactly (faiss flat). Here banks of at least
      ``approx_threshold`` rows are searched approximately on the CPU by default
      ("cells"), which can only raise a patch's score (distances are exact to the
      row found). Image scores stay exact: approximate scores are upper bounds, so
      each image's highest-scoring patch is searched exactly
      (:func:`~skad._kernels.refine.exact_knn`) until it is one already searched
      exactly. ``score_samples`` / ``decision_function`` / ``predict``, which need no
      maps, start from the "coarse" search instead (each query against its cell's own
      rows only). ``N_b(m*)`` is found exactly by pruning (lower bounds from the
      bank's principal subspace). ``nn_method="exact"`` restores the paper's search
      for the maps too; on a GPU "auto" searches exactly. Recall, rounds and timings
      on bottle: ``doc/search.md``.
    - Coreset: exact greedy selection (same picks as the naive loop), computed in
      lazy batches with pruned updates (:func:`~skad._kernels.coreset.greedy_coreset`),
      over all patches up to ``coreset_chunk_size``, per chunk of images beyond.
    - Streaming: :meth:`partial_fit` adds each chunk's coreset to the bank (the search
      index is built at the first scoring); :func:`skad.scale.fit_streaming` fits from
      image paths in bounded memory (``doc/scale.md``).

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
        **BlindModeMixin._exclude_constraints(deprecated_exclude_self=True),
        "nn_method": [StrOptions({"auto", "exact", "cells", "ivf", "nndescent"})],
        "approx_threshold": [Interval(Integral, 1, None, closed="left")],
        "n_probe": [Interval(Integral, 1, None, closed="left")],
        "coreset_chunk_size": [Interval(Integral, 1, None, closed="left")],
        **DeviceMixin._device_constraint,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        coreset_ratio=0.1,
        n_neighbors=9,
        projection_dim=128,
        coreset_chunk_size=PATCHCORE_CORESET_CHUNK,
        exclude=None,
        nn_method="auto",
        approx_threshold=PATCHCORE_APPROX_THRESHOLD,
        n_probe=8,
        n_jobs=None,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        device="auto",
        random_state=None,
        exclude_self="deprecated",
        verbose=False,
    ):
        self.coreset_ratio = coreset_ratio
        self.n_neighbors = n_neighbors
        self.projection_dim = projection_dim
        self.coreset_chunk_size = coreset_chunk_size
        self.exclude = exclude
        self.exclude_self = exclude_self
        self.nn_method = nn_method
        self.approx_threshold = approx_threshold
        self.n_probe = n_probe
        self.n_jobs = n_jobs
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit(self, X):
        rng = check_random_state(self.random_state)
        device = self._fit_device()
        self._fit_exclude()
        n, _, h, w = X.shape
        if n < 2:
            raise ValueError(
                "PatchCore needs at least 2 training images (training scores compare "
                f"each image with the others); got {n} sample(s)"
            )
        rows = patch_rows(X)
        image_ids = np.repeat(np.arange(n, dtype=np.int64), h * w)
        idx = self._coreset(rows, n, h * w, rng, device)
        self.coreset_indices_ = idx
        self.memory_bank_ = rows[idx]
        self.bank_image_ids_ = image_ids[idx]
        self._build_index(rng, device)
        return self

    def _coreset(self, rows, n_images, hw, rng, device):
        """Rows kept: exact greedy up to ``coreset_chunk_size`` rows, else per chunk of
        whole images (random image order), each reduced to ``coreset_ratio``.

        The leave-one-image-out training scores need a bank row of another image for
        every training image: one image's patches plus one row guarantee that, so at
        least that many rows are kept (with a warning when ``coreset_ratio`` asks for
        fewer)."""
        n_select = max(1, int(self.coreset_ratio * len(rows)))
        n_min = min(hw + 1, len(rows))
        if n_select < n_min:
            warn_user(
                f"coreset_ratio={self.coreset_ratio} keeps {n_select} of {len(rows)} patch "
                f"rows; PatchCore keeps {n_min} (one image's {hw} patches plus one) so "
                "that every training image has a bank row of another image",
                ClippedParameterWarning,
            )
            n_select = n_min
        n_chunks = max(1, -(-len(rows) // int(self.coreset_chunk_size)))
        groups = ([np.arange(n_images)] if n_chunks == 1 else
                  np.array_split(rng.permutation(n_images), min(n_chunks, n_images)))
        verbose = "PatchCore coreset" if self.verbose else False
        kept = []
        for images in groups:
            sub = (np.sort(images)[:, None] * hw + np.arange(hw)).ravel()
            k = n_select if len(groups) == 1 else max(
                1, int(self.coreset_ratio * len(sub)), -(-n_min * len(sub) // len(rows)))
            if k < len(sub):
                sub = sub[greedy_coreset(rows[sub] if len(groups) > 1 else rows, k,
                                         projection_dim=self.projection_dim,
                                         random_state=rng, device=device, verbose=verbose)]
            kept.append(sub)
        return np.concatenate(kept).astype(np.int64)

    def _build_index(self, rng, device):
        self._products_cache = None
        clip_to_data(self, "n_neighbors", self.n_neighbors, len(self.memory_bank_),
                     "bank rows")
        method = self.nn_method
        if method == "auto":
            approx = len(self.memory_bank_) >= self.approx_threshold and device.type == "cpu"
            method = "cells" if approx else "exact"
        index = build_index(
            self.memory_bank_, method=method, n_probe=self.n_probe, random_state=rng,
            device=device,
        )
        self.nn_method_ = index.method_
        self.index_ = index
        if self.nn_method_ != "exact":
            self._products()  # in fit, not in the first predict

    def _partial_fit(self, X, first):
        """Add a chunk's coreset to the bank; its calibration scores are the chunk's
        leave-one-image-out scores against the chunk's own coreset (never lower than
        against the whole bank: ``offset_`` errs towards fewer false alarms)."""
        if first:
            self._stream_rng = check_random_state(self.random_state)
            self._fit_device()
            self._fit_exclude()
        sub = clone(self)
        sub.random_state = self._stream_rng.randint(np.iinfo(np.int32).max)
        sub.n_features_in_, sub.patch_shape_ = self.n_features_in_, tuple(X.shape[2:])
        sub._fit(X)
        anomaly = sub._offset_scores(X)
        n_seen = 0 if first else self.n_images_seen_
        rows_seen = 0 if first else self._stream_rows
        hw = X.shape[2] * X.shape[3]
        parts = [] if first else [(self.memory_bank_, self.bank_image_ids_,
                                   self.coreset_indices_)]
        parts.append((sub.memory_bank_, sub.bank_image_ids_ + n_seen,
                      sub.coreset_indices_ + rows_seen))
        self.memory_bank_ = np.concatenate([p[0] for p in parts])
        self.bank_image_ids_ = np.concatenate([p[1] for p in parts])
        self.coreset_indices_ = np.concatenate([p[2] for p in parts])
        self._stream_rows = rows_seen + len(X) * hw
        self.index_ = self.nn_method_ = None  # built at the first scoring (_ensure_index)
        return anomaly

    def _ensure_index(self):
        if self.index_ is None:
            self._build_index(self._stream_rng, self.device_)

    def _products(self):
        """:func:`~skad._kernels.refine.bank_products` of the bank plus, from the
        approximate index, an upper bound on each bank row's ``n_neighbors``-th
        neighbour distance (for pruning ``N_b(m*)``); computed once per fit (in fit;
        again after unpickling, where it is not stored)."""
        if getattr(self, "_products_cache", None) is None:
            p = bank_products(self.memory_bank_)
            p["b"] = self.n_neighbors_
            p["upper"] = self.index_.query(self.memory_bank_, p["b"])[0][:, -1]
            self._products_cache = p
        return self._products_cache

    def _bank_neighbors(self, idx, b):
        """``N_b`` of bank rows ``idx``, exactly (pruned by the index's upper bounds)."""
        p = self._products()
        upper = (p["upper"][idx] if b == p["b"]  # n_neighbors unchanged since fit
                 else self.index_.query(self.memory_bank_[idx], b)[0][:, -1])
        return self._exact_knn(self.memory_bank_[idx], b, upper=upper)[1]

    def _exact_knn(self, q, k, groups=None, upper=None):
        """Exact k-NN of a few rows (:func:`~skad._kernels.refine.exact_knn`)."""
        return exact_knn(q, self.memory_bank_, k, self._products(), groups=groups,
                         upper=upper)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_products_cache", None)
        return state

    def __setstate__(self, state):
        # models pickled before the clip-or-raise rule: b was clipped at scoring time
        if "memory_bank_" in state and "n_neighbors_" not in state:
            state["n_neighbors_"] = int(min(state["n_neighbors"], len(state["memory_bank_"])))
        if "exclude" not in state:  # pickled before `exclude` replaced `exclude_self`
            state["exclude"] = None
        if "memory_bank_" in state and "exclude_" not in state:
            state["exclude_"] = "self" if state.get("exclude_self") is True else None
            state["blind_"] = state["exclude_"] is not None
        super().__setstate__(state)

    def _nearest(self, rows, image_ids, exclude_own_image, search):
        """Nearest bank row of each patch row (distance, index), per the exclusions.

        ``search(q, k, groups)`` is :meth:`_index_search` or :meth:`_exact_knn`;
        ``groups = (query_groups, bank_groups)`` or None.
        """
        if exclude_own_image:
            dist, nn = search(rows, 1, (image_ids, self.bank_image_ids_))
        elif self.exclude_ == "self":  # the second nearest row
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
        self._ensure_index()
        n, c, h, w = X.shape
        hw = h * w
        rows = patch_rows(X)
        image_ids = np.repeat(np.arange(n, dtype=np.int64), hw)
        approx = self.nn_method_ != "exact"
        # image scores alone: the coarse search's upper bounds suffice for the
        # exact rounds below (a few more rows searched exactly, for a third of the
        # search's products: doc/search.md)
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
            # round streams the whole bank, so few rounds beat few rows (the
            # alternatives measured: doc/search.md).
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
            scores, rows.reshape(n, hw, c), nn, self.memory_bank_, self.n_neighbors_,
            device=self.device_,
            neighbors=self._bank_neighbors if approx else None,
        )
        return image, scores.reshape(n, h, w)

    def _score(self, X):
        return self._patch_scores(X, exclude_own_image=False)

    def _score_images(self, X):
        return self._patch_scores(X, exclude_own_image=False, maps=False)[0]

    def _default_calibration(self, X):
        return "in_sample"  # _offset_scores leave each training image out

    def _offset_scores(self, X):
        if self.blind_:  # the fitted set is the scored set: its blind scores
            return self._score_images(X)
        return self._patch_scores(X, exclude_own_image=True, maps=False)[0]
