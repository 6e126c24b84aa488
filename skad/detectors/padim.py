"""PaDiM: a Gaussian per patch position, Mahalanobis distance as the anomaly score."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state

from .._kernels.gaussian import (cholesky_factors, fit_gaussians, gaussians_from_moments,
                                mahalanobis, update_moments)
from ..utils._sklearn_compat import Interval
from ._base import BaseDetector, PatchDetectorMixin, StreamingMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["PaDiM"]


class PaDiM(StreamingMixin, DeviceMixin, PatchDetectorMixin, BaseDetector):
    """PaDiM (Defard et al. 2021): per-position Gaussians of patch features.

    A random subset of ``n_features`` channels is kept; at each of the ``h x w``
    positions a multivariate Gaussian (mean, covariance + ``eps * I``) is fitted
    over the training images. A test patch's score is its Mahalanobis distance to
    its position's Gaussian; the image score is the maximum of the map.

    Parameters
    ----------
    n_features : int or None, default=100
        Number of randomly selected channels (the paper: 100 for ResNet-18, 550 for
        WideResNet-50). None keeps all channels; a value above the channel count is
        clipped to it with a warning (``n_features_``; the rule:
        :func:`~skad.detectors.clip_to_data`). ``channels_`` records the ones used.
    eps : float > 0, default=0.01
        Ridge added to each covariance's diagonal (the paper's regularisation); it
        keeps every covariance invertible whatever the number of training images.
    shrinkage : float in [0, 1], default=0.0
        Extra shrinkage towards the scaled identity (not in the paper; helps with few
        training images).
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration sample (none flagged;
        with unbiased calibration scores, new normal samples are flagged with
        probability at most ``1 / (n_cal + 1)``); a float flags that fraction of the
        calibration samples.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples (biased: the
        Gaussians were fitted on them); "cv" each training sample scored by a model
        fitted without its fold (5 folds; the model kept is fitted on all samples);
        "holdout" the first fold only (a fifth of the samples scored); a float holds
        that fraction of the training samples out of fit (the exact split-conformal
        setting: the model kept is fitted on the rest); "auto": "cv". See
        ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps (the paper uses 4).
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the Gaussians are fitted and distances computed ("auto": CUDA when
        available).
    random_state : int, RandomState instance or None, default=None
        Seeds the channel subset.
    n_jobs : int, -1, "auto" or None, default=None
        CPU threads of fit and scoring (:func:`skad.utils.thread_limits`): None
        follows an enclosing ``thread_limits`` block, else "auto" (the cores other
        processes leave free); -1: all cores.

    Attributes
    ----------
    n_features_ : int
        Channels used (``n_selected``).
    channels_ : ndarray of int64, shape (n_selected,)
    means_ : ndarray of float32, shape (h * w, n_selected)
    cholesky_ : ndarray of float32, shape (h * w, n_selected, n_selected)
        Lower Cholesky factors of the covariances.
    n_features_in_ : int
    patch_shape_ : tuple of int
        Test patch maps must have this spatial size.
    device_ : torch.device
        The device fit resolved ``device`` to; scoring runs there (the CPU after
        unpickling on a machine without CUDA).
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    - Memory of the model: ``4 * h * w * d * (d + 1)`` bytes for ``d`` selected
      channels: 784 positions x 100 channels (the default) = 32 MB; all 120 of the default
      features = 46 MB; 3136 x 550
      (the paper's WRN50 at 56 x 56) = 3.8 GB. Fitting needs the same again plus the
      chunk of centred features (``working_memory`` of the kernel, 256 MB).
    - Streaming: :meth:`partial_fit` keeps running means and co-moments (float64), so
      chunks give the Gaussians ``fit`` gives on all images at once;
      :func:`skad.scale.fit_streaming` fits from image paths in bounded memory
      (``doc/scale.md``).
    - Distances use Cholesky factors and triangular solves, never an explicit
      inverse (:mod:`skad._kernels.gaussian`).
    - The image score is the maximum of the (unsmoothed) patch map, as in the
      reference implementation.

    References
    ----------
    T. Defard, A. Setkaliev, A. Loesch, R. Audigier. "PaDiM: a Patch Distribution
    Modeling Framework for Anomaly Detection and Localization", ICPR Workshops 2021
    (arXiv:2011.08785).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import PaDiM
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 6, 4, 4)).astype(np.float32)
    >>> X_test = X[:2].copy(); X_test[1, :, 1, 1] += 8.0
    >>> det = PaDiM(n_features=4, random_state=0).fit(X)
    >>> scores = det.anomaly_score(X_test)
    >>> bool(scores[1] > scores[0]), det.anomaly_map(X_test).shape
    (True, (2, 4, 4))
    """

    _requires_same_patch_shape = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "n_features": [Interval(Integral, 1, None, closed="left"), None],
        "eps": [Interval(Real, 0, None, closed="neither")],
        "shrinkage": [Interval(Real, 0, 1, closed="both")],
        **DeviceMixin._device_constraint,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_features=100,
        eps=0.01,
        shrinkage=0.0,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        device="auto",
        random_state=None,
        n_jobs=None,
    ):
        self.n_features = n_features
        self.eps = eps
        self.shrinkage = shrinkage
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _positions(self, X):
        """(n, C, h, w) -> (n, h * w, d) on the selected channels."""
        n = X.shape[0]
        Xs = X[:, self.channels_]
        return Xs.reshape(n, len(self.channels_), -1).transpose(0, 2, 1)

    def _fit(self, X):
        rng = check_random_state(self.random_state)
        n, c = X.shape[:2]
        if n < 2:
            raise ValueError(
                f"PaDiM needs at least 2 training images to estimate covariances; got {n} "
                "sample(s)"
            )
        self._select_channels(c, rng)
        dev = self._fit_device()
        self.means_, cov = fit_gaussians(
            self._positions(X), shrinkage=self.shrinkage, eps=self.eps, device=dev
        )
        self.cholesky_ = cholesky_factors(cov, device=dev)
        return self

    def _select_channels(self, c, rng):
        d = clip_to_data(self, "n_features", self.n_features, c, "channels of X")
        if d == c:
            self.channels_ = np.arange(c, dtype=np.int64)
        else:
            self.channels_ = np.sort(rng.choice(c, d, replace=False)).astype(np.int64)

    def _partial_fit(self, X, first):
        """Running moments (:func:`~skad._kernels.gaussian.update_moments`): the same
        Gaussians as ``fit`` on all chunks at once, in ``8 h w d (d + 1)`` bytes.
        Calibration scores: each chunk scored by the model of the chunks before it
        (prequential; the first chunk in-sample)."""
        if first:
            self._select_channels(X.shape[1], check_random_state(self.random_state))
            self._fit_device()
            self._moments = None
        anomaly = None if first else self._score(X)[0]
        self._moments = update_moments(self._moments, self._positions(X), device=self.device_)
        self.means_, cov = gaussians_from_moments(self._moments, shrinkage=self.shrinkage,
                                                  eps=self.eps)
        self.cholesky_ = cholesky_factors(cov, device=self.device_)
        return self._score(X)[0] if first else anomaly

    def _score(self, X):
        n, _, h, w = X.shape
        maps = mahalanobis(
            self._positions(X), self.means_, self.cholesky_, device=self.device_
        ).reshape(n, h, w)
        return maps.reshape(n, -1).max(axis=1), maps
