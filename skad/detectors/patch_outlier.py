"""Any scikit-learn outlier detector applied to patch vectors."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.neighbors import LocalOutlierFactor
from sklearn.utils import check_random_state

from .._kernels import patch_rows
from .._kernels.knn import knn_search
from ..utils._sklearn_compat import HasMethods, Interval, StrOptions
from ._base import BaseDetector, PatchDetectorMixin, clip_to_data
from ._device import DeviceMixin
from .patchcluster import _sample_digests

__all__ = ["PatchOutlierDetector", "self_excluded_knn_graph"]


def self_excluded_knn_graph(rows, n_neighbors, *, device=None):
    """Exact k-NN graph of ``rows`` among themselves, as scikit-learn's training graph.

    Each row's ``n_neighbors`` nearest *other* rows (Euclidean, found by the shared
    chunked kernel :func:`skad._kernels.knn.knn_search` with the row itself excluded
    by index), preceded by the row itself at distance 0: the layout scikit-learn's
    ``kneighbors()`` expects of a ``metric="precomputed"`` graph on the training set
    (it drops each sample's own entry and keeps the next ``n_neighbors``).

    Parameters
    ----------
    rows : ndarray of shape (m, d)
    n_neighbors : int
        Neighbours per row, at most ``m - 1``.
    device : {"auto", "cpu", "cuda"}, optional
        Where the search runs (default: CPU for numpy input).

    Returns
    -------
    graph : scipy.sparse.csr_matrix of float64, shape (m, m)
        ``n_neighbors + 1`` stored entries per row, sorted by distance.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from skad.detectors.patch_outlier import self_excluded_knn_graph
    >>> X = np.random.default_rng(0).normal(size=(50, 2))
    >>> G = self_excluded_knn_graph(X, 10)
    >>> lof = LocalOutlierFactor(n_neighbors=10, metric="precomputed").fit(G)
    >>> ref = LocalOutlierFactor(n_neighbors=10).fit(X)
    >>> bool(np.allclose(lof.negative_outlier_factor_, ref.negative_outlier_factor_))
    True
    """
    rows = np.asarray(rows)
    m = rows.shape[0]
    if not 1 <= n_neighbors <= m - 1:
        raise ValueError(
            f"n_neighbors={n_neighbors}: expected 1 <= n_neighbors <= {m - 1} (the other "
            f"rows of {m}); use fewer neighbours or more samples"
        )
    ids = np.arange(m, dtype=np.int64)
    dist, idx = knn_search(
        rows, rows, int(n_neighbors), query_groups=ids, bank_groups=ids, device=device
    )
    k1 = n_neighbors + 1
    data = np.empty((m, k1), np.float64)
    data[:, 0] = 0.0  # the row itself, stored explicitly (removed again by kneighbors())
    data[:, 1:] = dist
    cols = np.empty((m, k1), np.int64)
    cols[:, 0] = ids
    cols[:, 1:] = idx
    return sp.csr_matrix(
        (data.ravel(), cols.ravel(), np.arange(0, m * k1 + 1, k1, dtype=np.int64)),
        shape=(m, m),
    )


def _is_blind_lof(estimator):
    """LOF in outlier-detection mode: scores its own training set only."""
    return isinstance(estimator, LocalOutlierFactor) and not estimator.novelty


def _is_euclidean(lof):
    if lof.metric_params:
        return False
    return lof.metric in ("euclidean", "l2") or (lof.metric == "minkowski" and lof.p == 2)


class PatchOutlierDetector(DeviceMixin, PatchDetectorMixin, BaseDetector):
    """Fit a scikit-learn outlier detector on patch vectors; map its per-patch scores.

    Every patch (one C-vector per position of each training image; subsampled to
    ``max_patches``) is a training sample of a clone of ``estimator``. A test
    patch's anomaly score is ``-estimator.score_samples(patch)``; the image score
    is the max (or mean) of its map.

    With ``LocalOutlierFactor(novelty=False)`` (scikit-learn's outlier-detection
    mode) the detector is *blind*, as the LOF baseline of the PatchCluster paper [1]_:
    ``fit(X)`` scores the patches of ``X`` themselves, each patch's local outlier
    factor among all the other patches of ``X`` (``-negative_outlier_factor_``), and
    only ``X`` (or any of its samples) can be scored afterwards.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``score_samples``, LocalOutlierFactor or \
None, default=None
        The outlier detector, e.g. ``LocalOutlierFactor(novelty=True)``,
        ``IsolationForest()``, ``OneClassSVM()``. None means
        ``LocalOutlierFactor(n_neighbors=20, novelty=True)``. Its parameters are
        tunable as ``estimator__<param>``. ``LocalOutlierFactor(novelty=False)``
        selects the blind mode (Notes); the paper's baseline is
        ``LocalOutlierFactor(n_neighbors=100)`` with ``max_patches=None``.
    max_patches : int or None, default=50_000
        Random subset of training patches the estimator is fitted on (None: all).
        LOF's fit is quadratic-ish in this number. The blind mode must fit every
        patch it scores: there it must be None or at least the number of patches.
    image_score : {"max", "mean"}, default="max"
        Reduction of each patch map to the image score.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration sample (none flagged;
        with unbiased calibration scores, new normal samples are flagged with
        probability at most ``1 / (n_cal + 1)``); in the blind mode (``blind_``) the
        robust rule of :func:`~skad.detectors.blind_offset`; a float flags that
        fraction of the calibration samples.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples (biased for a novelty
        LOF: a training patch is its own neighbour); "cv" each training sample scored by
        a model fitted without its fold (5 folds; the model kept is fitted on all
        samples); "holdout" the first fold only (a fifth of the samples scored); a float
        holds that fraction of the training samples out of fit (the exact
        split-conformal setting: the model kept is fitted on the rest); "auto":
        "in_sample" for a blind (``novelty=False``) LOF; a held-out fifth (0.2) when
        ``max_patches`` subsamples the training patches (each fit draws its own sample,
        and the scores take their scale from the draw, so the fold models' scores of
        "cv" do not transfer to the model kept); "cv" otherwise. See
        ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    random_state : int, RandomState instance or None, default=None
        Seeds the patch subsample (set the estimator's own ``random_state`` for
        its randomness).
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the blind mode's exact neighbour search runs ("auto": CUDA when
        available). Unused by the other estimators.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone. In the blind mode with a Euclidean LOF it is fitted with
        ``metric="precomputed"`` on the self-excluded k-NN graph (Notes).
    blind_ : bool
        True when the estimator scores its own training patches
        (``LocalOutlierFactor(novelty=False)``).
    n_patches_fit_ : int
    device_ : torch.device
        The device fit resolved ``device`` to.
    n_features_in_ : int
    patch_shape_ : tuple of int
    train_maps_ : ndarray of float32, shape (n_samples, h, w)
        Blind mode only: each training patch's local outlier factor.
    train_anomaly_ : ndarray of float32, shape (n_samples,)
        Blind mode only: the training images' anomaly scores (``image_score`` of
        ``train_maps_``).
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    The training scores (for ``offset_``) are the estimator's scores of the training
    patches; for ``LocalOutlierFactor(novelty=True)`` a training patch is among its
    own neighbours there, so ``contamination="auto"`` can put the threshold close
    to the training patches.

    **Blind mode.** scikit-learn's ``LocalOutlierFactor(novelty=False)`` has no
    ``score_samples``: it scores the samples it was fitted on, each excluding itself
    from its neighbours (``negative_outlier_factor_``). Here those are the patches of
    ``X``. When the LOF's metric is Euclidean (the default ``minkowski`` with
    ``p=2``, ``euclidean`` or ``l2``) the neighbours come from skad's exact chunked
    search (:func:`self_excluded_knn_graph`, the kernel PatchCluster and PatchCore
    use) and the clone is fitted on that graph with ``metric="precomputed"``, so
    scikit-learn applies the LOF formula to it; the result equals
    ``LocalOutlierFactor(novelty=False).fit(patches).negative_outlier_factor_`` up to
    float32 distance rounding (tested). Other metrics fit the clone on the patch
    rows directly. As in :class:`~skad.detectors.PatchCluster`, ``fit`` keeps a
    digest of each training sample; scoring a sample byte-identical to a training
    sample returns its blind result, and any other sample raises a ``ValueError``
    (a novelty=False LOF cannot score new points: use ``novelty=True`` for the
    one-class use).

    References
    ----------
    .. [1] PatchCluster: blind anomaly detection by local patch clustering
       (``../shared/papers/patchcluster-blind-ad.txt``), Sec. 5: "PatchCore with LOF",
       full memory bank, 100 neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from skad.detectors import PatchOutlierDetector
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(10, 3, 5, 5)).astype(np.float32)
    >>> X_test = X[:2].copy(); X_test[1, :, 2, 2] += 10.0
    >>> det = PatchOutlierDetector().fit(X)
    >>> s = det.anomaly_score(X_test)
    >>> bool(s[1] > s[0]), det.anomaly_map(X_test).shape
    (True, (2, 5, 5))
    >>> det = PatchOutlierDetector(IsolationForest(random_state=0)).fit(X)
    >>> int(det.anomaly_map(X_test)[1].argmax())
    12

    Blind LOF (the PatchCluster paper's baseline): fit and score the same set.

    >>> X[4, :, 1, 3] += 10.0                       # one anomalous patch in image 4
    >>> blind = PatchOutlierDetector(LocalOutlierFactor(n_neighbors=20), max_patches=None)
    >>> scores = blind.fit(X).anomaly_score(X)
    >>> int(scores.argmax()), int(blind.anomaly_map(X)[4].argmax())
    (4, 8)
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "estimator": [HasMethods(["fit", "score_samples"]), LocalOutlierFactor, None],
        "max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "image_score": [StrOptions({"max", "mean"})],
        "random_state": ["random_state"],
        **DeviceMixin._device_constraint,
    }

    def __init__(
        self,
        estimator=None,
        *,
        max_patches=50_000,
        image_score="max",
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        random_state=None,
        device="auto",
    ):
        self.estimator = estimator
        self.max_patches = max_patches
        self.image_score = image_score
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.random_state = random_state
        self.device = device

    def _fit(self, X):
        rng = check_random_state(self.random_state)
        self._fit_device()
        rows = patch_rows(X)
        self.blind_ = _is_blind_lof(self.estimator)
        if self.blind_:
            return self._fit_blind(X, rows)
        if self.max_patches is not None and len(rows) > self.max_patches:
            rows = rows[np.sort(rng.choice(len(rows), self.max_patches, replace=False))]
        if self.estimator is None:
            est = LocalOutlierFactor(n_neighbors=20, novelty=True)
        else:
            est = clone(self.estimator)
        self.estimator_ = est.fit(rows)
        self.n_patches_fit_ = len(rows)
        return self

    def _fit_blind(self, X, rows):
        m = rows.shape[0]
        if self.max_patches is not None and m > self.max_patches:
            raise ValueError(
                f"max_patches={self.max_patches} is below the {m} patches of X: "
                "LocalOutlierFactor(novelty=False) scores exactly the patches it is "
                "fitted on, so every patch must be fitted; set max_patches=None (or "
                "use LocalOutlierFactor(novelty=True) to fit a subsample and score "
                "new images)"
            )
        if m < 2:
            raise ValueError(
                f"LocalOutlierFactor(novelty=False) needs at least 2 patches to score "
                f"each against the others; got {m} from X of shape {X.shape}"
            )
        est = clone(self.estimator)
        if _is_euclidean(est):
            # as scikit-learn's LOF: clipped to the other patches, with a warning
            k = clip_to_data(est, "n_neighbors", est.n_neighbors, m - 1,
                             "other patches of X")
            graph = self_excluded_knn_graph(rows, k, device=self.device_)
            est.set_params(metric="precomputed", p=2, metric_params=None)
            est.fit(graph)
        else:
            est.fit(rows)
        self.estimator_ = est
        self.n_patches_fit_ = m
        n, _, h, w = X.shape
        self.train_maps_ = (-est.negative_outlier_factor_).astype(np.float32).reshape(n, h, w)
        self.train_anomaly_ = self._reduce(self.train_maps_)
        digests = _sample_digests(X)
        first = {}
        for i, d in enumerate(digests):
            first.setdefault(d, i)
        self._train_digests = first
        return self

    def _reduce(self, maps):
        flat = maps.reshape(maps.shape[0], -1)
        return flat.max(axis=1) if self.image_score == "max" else flat.mean(axis=1)

    def _default_calibration(self, X):
        if _is_blind_lof(self.estimator):
            # a blind LOF cannot score samples outside its fit: its own scores
            return "in_sample"
        n_patches = X.shape[0] * X.shape[2] * X.shape[3]
        if self.max_patches is not None and n_patches > self.max_patches:
            # every fit draws its own patch sample, and the image score (the highest
            # patch score) takes its scale from the draw: cross-fitted scores do not
            # transfer to the model kept (BaseDetector._default_calibration)
            return "split"
        return "cv"

    def _offset_scores(self, X):
        if self.blind_:
            return self.train_anomaly_
        return super()._offset_scores(X)

    def _score(self, X):
        if self.blind_:
            return self._score_blind(X)
        n, _, h, w = X.shape
        maps = -np.asarray(self.estimator_.score_samples(patch_rows(X)), dtype=np.float32)
        maps = maps.reshape(n, h, w)
        return self._reduce(maps), maps

    def _score_blind(self, X):
        known = np.array([self._train_digests.get(d, -1) for d in _sample_digests(X)],
                         dtype=np.int64)
        if (known < 0).any():
            raise ValueError(
                f"X: {int((known < 0).sum())} of {len(known)} sample(s) were not in the "
                "set this detector was fitted on; LocalOutlierFactor(novelty=False) "
                "scores only its training patches (blind use: fit(X) then score X, or "
                "fit_predict(X)). To score new images, fit with "
                "LocalOutlierFactor(novelty=True)"
            )
        return self.train_anomaly_[known], self.train_maps_[known]
