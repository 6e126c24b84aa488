"""SPADE: image-level kNN on pooled features, then pixel kNN among the nearest images."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from .._kernels import patch_rows
from .._kernels.ann import build_index
from .._kernels.knn import knn_search
from .._kernels.refine import _sweep_tables, ball_knn, ball_partition
from ..utils._sklearn_compat import Interval, StrOptions
from ._base import BaseDetector, BlindModeMixin, PatchDetectorMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["SPADE"]


class SPADE(BlindModeMixin, DeviceMixin, PatchDetectorMixin, BaseDetector):
    """SPADE (Cohen & Hoshen 2020): semantic pyramid anomaly detection.

    Image level: the image's globally pooled feature (spatial mean of its patch
    tensor) is compared with those of the training images; the image score is the
    mean distance to the ``n_neighbors`` nearest. Pixel level: each test patch is
    compared with every patch of those nearest training images; its score is the
    mean distance to its ``n_pixel_neighbors`` nearest patches.

    The image score is the image level alone, so ``score_samples``,
    ``decision_function`` and ``predict`` run no pixel search; ``anomaly_map`` and
    ``score_and_map`` do. On the CPU the pixel search prunes (``nn_method="pruned"``,
    :func:`~skad._kernels.refine.ball_knn`): the training patches are split into
    k-means cells at fit; each test patch visits the nearest centre's cell, then the
    cells that the triangle inequality does not rule out, smallest bound first, at most
    ``n_probe`` cells in all (default 4), and skips the patches of a cell that the
    inequality rules out; ``n_probe=None`` runs to the exact criterion and gives the
    brute-force distances to float rounding. On CUDA it is by products
    (``nn_method="exact"``: every test patch against the ``K * h * w`` patches of its
    image's nearest training images, several GFLOP per image at the defaults).
    ``nn_method="cells"`` is PatchCore's approximate search over all training patches
    restricted to those images (:meth:`~skad._kernels.ann.NeighborIndex.query` with
    ``allowed``); it did not make predict faster on bottle and its index makes fit
    much slower. Speed and recall of each: ``benchmarks/results/issue19_speed.md``.

    Parameters
    ----------
    n_neighbors : int, default=50
        ``K``, nearest training images (the paper: 50); clipped with a warning to the
        ``n_train - 1`` other training images (``n_neighbors_``; the rule:
        :func:`~skad.detectors.clip_to_data`).
    n_pixel_neighbors : int, default=1
        ``kappa``, nearest gallery patches per test patch (the paper: 1); clipped to
        the ``K * h * w`` gallery patches (``n_pixel_neighbors_``).
    exclude : {"self"} or None, default=None
        Blind use (score the fitted set; :class:`BlindModeMixin`): ``"self"`` skips
        each image's nearest training image (itself) at both levels, and
        ``contamination="auto"`` is the blind rule
        (:func:`~skad.detectors.blind_offset`).
    exclude_self : bool
        Deprecated (FutureWarning; removed in 0.3): ``exclude_self=True`` is
        ``exclude="self"``.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration sample (none flagged;
        with unbiased calibration scores, new normal samples are flagged with
        probability at most ``1 / (n_cal + 1)``); a float flags that fraction of the
        calibration samples.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples, each against the
        *other* training images (leave-one-image-out, unbiased); "cv" each training
        sample scored by a model fitted without its fold (5 folds; the model kept is
        fitted on all samples); "holdout" the first fold only (a fifth of the samples
        scored); a float holds that fraction of the training samples out of fit (the
        exact split-conformal setting: the model kept is fitted on the rest); "auto":
        "in_sample". See ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    nn_method : {"auto", "pruned", "exact", "cells"}, default="auto"
        Pixel-level search (see above); "auto" is "pruned" on the CPU, "exact" on CUDA.
    n_probe : int or None, default=4
        With ``nn_method_="pruned"``: at most this many k-means cells visited per test
        patch (``max_cells`` of :func:`~skad._kernels.refine.ball_knn`; the nearest
        centre's cell, then by lower bound). A patch whose bounds still admit further
        cells then keeps the nearest patches among those read, so its distance is never
        below the exact one (it can only look more anomalous); image scores do not
        depend on it, and which patches are approximated depends on the cells (seeded
        by ``random_state``). None: the exact search. Ignored by the other searches.
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means of the "pruned" cells (any seed gives the same distances) and
        of the "cells" index.
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps (the paper uses 4).
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the neighbour searches run ("auto": CUDA when available).

    Attributes
    ----------
    index_ : NeighborIndex
        The pixel-level index over all training patches (``index_.bank_``: one row per
        patch, image by image; "exact" with ``nn_method_="pruned"``).
    partition_ : dict or None
        With ``nn_method_="pruned"``: the cells, bounds and rotated patches of
        :func:`~skad._kernels.refine.ball_partition`; else None.
    nn_method_ : {"pruned", "exact", "cells"}
    train_pooled_ : ndarray of float32, shape (n_train, C)
    n_neighbors_ : int
        Images used at the image level: ``min(n_neighbors, n_train - 1)`` so that the
        training scores (each image against the *other* training images) and test
        scores use the same ``K``.
    n_pixel_neighbors_ : int
        ``kappa`` used.
    exclude_ : {"self"} or None
        The exclusion used (``exclude``, or the deprecated ``exclude_self``).
    blind_ : bool
        ``exclude_ is not None``.
    device_ : torch.device
        The device fit resolved ``device`` to; scoring runs there (the CPU after
        unpickling on a machine without CUDA).
    n_features_in_ : int
    patch_shape_ : tuple of int
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    - The paper pools the backbone's last layer for the image kNN and uses a
      multi-layer pyramid for pixels; here both levels use the given patch tensor
      (mean-pooled for images), so SPADE runs on the same features as the other
      detectors.
    - Memory: all training patches, ``4 * n_train * C * h * w`` bytes (209 bottle
      images x 120 x 28 x 28, the default features: 79 MB); "pruned" keeps a rotated,
      sorted copy beside them for the exact search and each patch's cell and distance
      to its centre (about as much again, also in a pickle), "cells" their candidate lists
      (each row about 2-4 times more).
    - What is exact: the image level (image scores, ``predict``, ``offset_``) always;
      the pixel level with ``n_probe=None`` (or ``nn_method="exact"``). With the
      default ``n_probe=4`` a test patch's distance is exact when the cap left out no
      cell its bound admits, else an upper bound (``return_exact`` of
      :func:`~skad._kernels.refine.ball_knn` says which). Its recall (the fraction of
      patches given their exact nearest patch, distance ratios), the accuracy it moves
      and its speed against the exact search on bottle: ``doc/detectors.md`` and
      ``benchmarks/results/issue19_speed.md``.
    - Training scores for ``offset_`` exclude each image from its own neighbours (in
      blind mode: the blind scores of the fitted set, which skip its nearest image).
      Like every memory-bank method, ``score_samples(X_train)`` is therefore higher
      than ``train_scores_`` and scikit-learn's ``check_outliers_train`` does not
      hold.

    References
    ----------
    N. Cohen, Y. Hoshen. "Sub-Image Anomaly Detection with Deep Pyramid
    Correspondences", arXiv:2005.02357, 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import SPADE
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(12, 5, 4, 4)).astype(np.float32)
    >>> X_test = X[:2] + 0.1; X_test[1, :, 0, 0] += 9.0
    >>> det = SPADE(n_neighbors=3).fit(X)
    >>> bool(det.anomaly_score(X_test)[1] > det.anomaly_score(X_test)[0])
    True
    >>> int(det.anomaly_map(X_test)[1].argmax())
    0
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_pixel_neighbors": [Interval(Integral, 1, None, closed="left")],
        **BlindModeMixin._exclude_constraints(deprecated_exclude_self=True),
        "nn_method": [StrOptions({"auto", "exact", "pruned", "cells"})],
        "n_probe": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        **DeviceMixin._device_constraint,
    }

    def __init__(
        self,
        *,
        n_neighbors=50,
        n_pixel_neighbors=1,
        exclude=None,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        nn_method="auto",
        n_probe=4,
        random_state=None,
        sigma=4.0,
        device="auto",
        exclude_self="deprecated",
    ):
        self.n_neighbors = n_neighbors
        self.n_pixel_neighbors = n_pixel_neighbors
        self.exclude = exclude
        self.exclude_self = exclude_self
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.nn_method = nn_method
        self.n_probe = n_probe
        self.random_state = random_state
        self.sigma = sigma
        self.device = device

    def _fit(self, X):
        n = X.shape[0]
        if n < 2:
            raise ValueError(
                "SPADE needs at least 2 training images (training scores compare each "
                f"image with the others); got {n} sample(s)"
            )
        self._fit_device()
        self._fit_exclude()
        X = np.asarray(X, dtype=np.float32)
        self.train_pooled_ = X.mean(axis=(2, 3))
        # the training scores compare each image with the n - 1 others
        K = clip_to_data(self, "n_neighbors", self.n_neighbors, n - 1,
                         "other training images")
        clip_to_data(self, "n_pixel_neighbors", self.n_pixel_neighbors,
                     K * X.shape[2] * X.shape[3], "patches of the K nearest training images")
        method = self.nn_method
        if method == "auto":  # the pruned search is a CPU kernel
            method = "pruned" if self.device_.type == "cpu" else "exact"
        rows = patch_rows(X)
        self.index_ = build_index(rows, method="exact" if method == "pruned" else method,
                                  random_state=self.random_state, device=self.device_)
        self.partition_ = None
        if method == "pruned":
            self.partition_ = ball_partition(
                rows, np.repeat(np.arange(n), X.shape[2] * X.shape[3]),
                random_state=self.random_state)
        self.nn_method_ = method
        self._train_hw = X.shape[2] * X.shape[3]
        return self

    def __setstate__(self, state):
        if "exclude" not in state:  # pickled before `exclude` replaced `exclude_self`
            state = dict(state, exclude=None)
            if "train_pooled_" in state:  # fitted
                state["exclude_"] = "self" if state.get("exclude_self") is True else None
                state["blind_"] = state["exclude_"] is not None
                state["n_pixel_neighbors_"] = state["n_pixel_neighbors"]
        if "n_probe" not in state:  # pickled before the cap on cells
            state = dict(state, n_probe=None)
        if "train_pooled_" in state and "partition_" not in state:  # before "pruned"
            state = dict(state, partition_=None)
        part = state.get("partition_")
        if part is not None and "bank_cell" not in part:  # before the capped search's sweeps
            state = dict(state, partition_={**part, **_sweep_tables(part)})
        if "train_patches_" in state and "index_" not in state:
            # pickled before the index: the exact search over the stored patches
            state = dict(state, nn_method="exact", random_state=None)
            patches = state.pop("train_patches_")
            state["index_"] = build_index(patch_rows(patches), method="exact")
            state["nn_method_"] = state["index_"].method_
            state["_train_hw"] = patches.shape[2] * patches.shape[3]
        super().__setstate__(state)

    def _image_level(self, X, exclude_own):
        """Image scores and the K nearest training images of each image."""
        n = X.shape[0]
        dev = self.device_
        K = self.n_neighbors_
        n_train = self.train_pooled_.shape[0]
        pooled = X.mean(axis=(2, 3))
        if exclude_own:
            ids = np.arange(n, dtype=np.int64)
            dist, nbr = knn_search(pooled, self.train_pooled_, K, query_groups=ids,
                                   bank_groups=np.arange(n_train, dtype=np.int64), device=dev)
        elif self.exclude_ == "self":
            dist, nbr = knn_search(pooled, self.train_pooled_, K + 1, device=dev)
            dist, nbr = dist[:, 1:], nbr[:, 1:]
        else:
            dist, nbr = knn_search(pooled, self.train_pooled_, K, device=dev)
        return dist.mean(axis=1), nbr  # mean distance to the K nearest images

    def _spade_scores(self, X):
        n, c, h, w = X.shape
        image, nbr = self._image_level(X, exclude_own=False)
        kappa = self.n_pixel_neighbors_
        thw = self._train_hw
        # each test patch against the patches of its image's K nearest training images
        n_train = self.train_pooled_.shape[0]
        allowed = np.zeros((n, n_train), dtype=bool)
        allowed[np.arange(n)[:, None], nbr] = True
        if self.nn_method_ == "pruned":
            d, _ = ball_knn(patch_rows(X), self.index_.bank_, kappa, self.partition_,
                            np.repeat(np.arange(n), h * w), allowed,
                            max_cells=self.n_probe)
            return image, d.mean(axis=1).reshape(n, h, w).astype(np.float32)
        d, _ = self.index_.query(
            patch_rows(X), kappa, query_groups=np.repeat(np.arange(n), h * w),
            bank_groups=np.repeat(np.arange(n_train), thw), allowed=allowed)
        return image, d.mean(axis=1).reshape(n, h, w).astype(np.float32)

    def _score(self, X):
        return self._spade_scores(X)

    def _score_images(self, X):
        # the image score is the image level alone: score_samples, decision_function
        # and predict need no pixel search
        return self._image_level(X, exclude_own=False)[0]

    def _default_calibration(self, X):
        return "in_sample"  # _offset_scores leave each training image out

    def _offset_scores(self, X):
        # image level only: the offset needs no pixel maps; in blind mode the fitted set
        # is the scored set (its blind scores), else leave-one-image-out
        return self._image_level(X, exclude_own=not self.blind_)[0]
