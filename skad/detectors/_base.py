"""The outlier-detector contract shared by every skad detector, implemented once."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._kernels.maps import resize_smooth
from ..utils._sklearn_compat import Hidden, Interval, StrOptions, _fit_context
from ..utils._threads import estimator_threads
from ..utils._warnings import warn_user
from ..utils.validation import ImageSet, _is_path_sequence, check_images, check_patches

__all__ = ["BaseDetector", "BlindModeMixin", "ClippedParameterWarning", "ImageDetectorMixin",
           "PatchDetectorMixin", "StreamingMixin", "blind_offset", "clip_to_data",
           "conformal_offset"]

#: robust z of ``contamination="auto"`` in blind mode (the usual 3-MAD outlier rule)
_BLIND_MADS = 3.0

#: folds of ``calibration="cv"`` (cross-fitted calibration scores); ``"holdout"``
#: scores the first of them only
_CV_FOLDS = 5
#: fewer training samples than this: "cv" and "holdout" fall back to in-sample scores
_CV_MIN_SAMPLES = 4
#: the fraction held out when ``calibration="auto"`` means a split (detectors whose
#: fit draws a random subsample, see ``BaseDetector._default_calibration``)
_AUTO_SPLIT = 0.2


def conformal_offset(calibration_anomaly, false_alarm_rate):
    """Split-conformal threshold on anomaly scores for a target false-alarm rate.

    With ``n`` calibration anomaly scores of normal samples, the threshold is the
    ``k``-th smallest, ``k = ceil((n + 1) (1 - false_alarm_rate))``; a new sample is
    flagged when its anomaly score is strictly above it. If the calibration scores and
    the new normal sample's score are exchangeable (the calibration samples were not
    used to fit the model, and all are drawn alike), the probability of a false alarm
    is at most ``false_alarm_rate`` whatever the distribution (Vovk et al. 2005;
    Lei et al. 2018, Thm. 2.1), and at least ``false_alarm_rate - 1 / (n + 1)`` when
    scores have no ties.

    Parameters
    ----------
    calibration_anomaly : array-like of shape (n,)
        Anomaly scores (higher = more anomalous) of held-out normal samples.
    false_alarm_rate : float in (0, 1)

    Returns
    -------
    threshold : float
        ``+inf`` when ``k > n`` (too few calibration samples for the target: nothing
        can be flagged with the guarantee).

    Examples
    --------
    >>> from skad.detectors._base import conformal_offset
    >>> conformal_offset([0.1, 0.2, 0.3, 0.4], 0.2)   # k = ceil(5 * 0.8) = 4
    0.4
    >>> conformal_offset([0.1, 0.2, 0.3, 0.4], 0.1)   # k = 5 > n
    inf
    """
    a = np.sort(np.asarray(calibration_anomaly, dtype=np.float64).ravel())
    n = len(a)
    # the 1e-12 guards against (n + 1) * (1 - alpha) landing a hair above an integer
    k = math.ceil((n + 1) * (1.0 - float(false_alarm_rate)) - 1e-12)
    if k > n:
        return float("inf")
    return float(a[max(k, 1) - 1])


class ClippedParameterWarning(UserWarning):
    """A size parameter exceeded what the data holds and was clipped (:func:`clip_to_data`)."""


def clip_to_data(detector, name, value, limit, what):
    """The value of a size parameter that the data allows: skad's clip-or-raise rule.

    Every detector applies one rule to its size parameters (``n_neighbors``,
    ``n_features``, ``n_channels``, ``n_components``, ``n_memory``, ...):

    - a value no data could allow (0 neighbours, a negative ratio, ``eps <= 0``) is
      refused by the parameter constraints when ``fit`` starts
      (``InvalidParameterError``, a ``ValueError``);
    - a valid value that exceeds what *this* data holds (more neighbours than eligible
      bank rows, more channels than ``X`` has) is clipped to ``limit``, as scikit-learn's
      :class:`~sklearn.neighbors.LocalOutlierFactor` does with ``n_neighbors``: a
      :class:`ClippedParameterWarning` (a ``UserWarning``) names the parameter, the
      value asked and the limit, and the value used is stored in the fitted attribute
      ``<name>_`` (the cross-fitted models of ``calibration="cv"`` clip alike, without
      repeating the warning);
    - ``value=None`` means "as many as the data holds" (``limit``, no warning);
    - a limit below 1 (the data leaves nothing to use) raises a ``ValueError`` saying
      what is missing.

    Parameters
    ----------
    detector : estimator
        Receives the fitted attribute ``<name>_``.
    name : str
        The parameter's name.
    value : int or None
        The parameter's value.
    limit : int
        The largest value the data allows.
    what : str
        What ``limit`` counts, for the messages ("channels of X", "bank rows a
        training patch may match").

    Returns
    -------
    effective : int
        ``min(value, limit)`` (``limit`` for None), also stored as ``<name>_``.

    Examples
    --------
    >>> import warnings
    >>> from skad.detectors import PaDiM
    >>> from skad.detectors._base import clip_to_data
    >>> det = PaDiM()
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     clip_to_data(det, "n_features", 100, 6, "channels of X")
    6
    >>> det.n_features_, str(w[0].message)[:43]
    (6, 'n_features=100 exceeds the 6 channels of X')
    """
    limit = int(limit)
    if limit < 1:
        raise ValueError(
            f"{type(detector).__name__}: {name} needs at least 1 of the {what}; the "
            f"training data leaves {limit}: fit on more (or larger) samples"
        )
    if value is None:
        effective = limit
    elif int(value) > limit:
        warn_user(
            f"{name}={value} exceeds the {limit} {what}; {type(detector).__name__} uses "
            f"{name}_={limit}", ClippedParameterWarning,
        )
        effective = limit
    else:
        effective = int(value)
    setattr(detector, f"{name}_", effective)
    return effective


def blind_offset(calibration_scores):
    """``offset_`` of ``contamination="auto"`` in blind mode: median - 3 scaled MADs.

    In blind mode the training set is the set scored and holds the anomalies to find,
    so "no training sample flagged" would flag nothing. A sample is flagged instead
    when its anomaly score is a robust outlier among the training samples' anomaly
    scores: more than 3 scaled median absolute deviations
    (``1.4826 * median |a - median(a)|``, the standard deviation for normal data)
    above their median.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        Normality scores (higher = more normal) of the training samples.

    Returns
    -------
    offset : float

    Examples
    --------
    >>> from skad.detectors._base import blind_offset
    >>> blind_offset([-1.0, -1.1, -0.9, -1.0, -9.0])   # -(1 + 3 * 1.4826 * 0.1)
    -1.44478
    """
    anomaly = -np.asarray(calibration_scores, dtype=np.float64)
    med = float(np.median(anomaly))
    mad = 1.4826 * float(np.median(np.abs(anomaly - med)))
    return -(med + _BLIND_MADS * mad)


class BlindModeMixin:
    """One switch for blind use (the scored set is the fitted set): ``exclude``.

    ``exclude`` says which training entries a training patch may not match when the
    fitted set is scored: None (one-class use: nothing), ``"self"`` (the patch
    itself: a patch never counts as its own nearest neighbour) or, where the detector
    offers it, ``"image"`` (every patch of its own image).
    ``fit`` records ``exclude_`` and ``blind_`` (``exclude_ is not None``); in blind
    mode ``contamination="auto"`` is the robust rule of :func:`blind_offset`
    (:meth:`BaseDetector._offset_from`).

    The earlier boolean ``exclude_self`` (PatchCore, SPADE) still works until skad 0.3
    with a ``FutureWarning``: ``exclude_self=True`` is ``exclude="self"``.
    """

    @staticmethod
    def _exclude_constraints(options=("self",), deprecated_exclude_self=False):
        """``_parameter_constraints`` entries of ``exclude`` (values ``options`` or
        None) and, for the detectors that had it, the deprecated ``exclude_self``."""
        out = {"exclude": [StrOptions(set(options)), None]}
        if deprecated_exclude_self:
            out["exclude_self"] = ["boolean", Hidden(StrOptions({"deprecated"}))]
        return out

    def _fit_exclude(self):
        """Resolve ``exclude`` (and the deprecated ``exclude_self``) into ``exclude_``."""
        exclude = self.exclude
        old = getattr(self, "exclude_self", "deprecated")
        if not isinstance(old, str) or old != "deprecated":
            warn_user(
                "`exclude_self` was renamed `exclude` in skad 0.2 and will be removed in "
                f"0.3: use exclude={'self' if old else None!r} instead of exclude_self={old!r}",
                FutureWarning,
            )
            if exclude is not None:
                raise ValueError(
                    f"got exclude={exclude!r} and exclude_self={old!r}: give only "
                    "`exclude` (exclude_self is deprecated)"
                )
            exclude = "self" if old else None
        self.exclude_ = exclude
        self.blind_ = exclude is not None
        return exclude


def _take(X, idx):
    """Rows ``idx`` of a validated input (ndarray or :class:`~skad.utils.ImageSet`)."""
    if isinstance(X, ImageSet):
        if X.array is not None:
            return ImageSet(array=X.array[idx], name=X.name)
        return ImageSet(paths=[X.paths[i] for i in idx], name=X.name)
    return X[idx]


class BaseDetector(OutlierMixin, BaseEstimator):
    """Base class of skad detectors (scikit-learn outlier convention).

    Subclasses implement

    - ``_fit(X)``: learn from validated input,
    - ``_score(X) -> (image_anomaly (n,), maps (n, h, w))``: anomaly scores, higher =
      more anomalous, for validated input,
    - optionally ``_score_images(X)``: the image scores alone (default:
      ``_score(X)[0]``; detectors whose maps cost more than their image scores
      override it: ``score_samples``, ``decision_function`` and ``predict`` use it),
    - optionally ``_offset_scores(X)``: anomaly scores of the training set used to set
      ``offset_`` from ``contamination`` (default: ``_score(X)[0]``; memory-bank
      detectors override it so a training sample is not scored against itself),
    - ``_validate_input(X, reset)``: validation (patch detectors use
      :class:`PatchDetectorMixin`; image detectors validate images),
    - optionally ``_default_calibration(X)``: what ``calibration="auto"`` means for
      the validated training set ``X`` ("cv" here; "in_sample" where
      ``_offset_scores`` are already unbiased, and for :class:`ImageDetectorMixin`;
      "split" where each fit draws a random subsample; "holdout" where scoring every
      training image costs more than a fit),
    - optionally ``_fold_scores(X, train, test)``: anomaly scores of ``X[test]`` by a
      model fitted on ``X[train]`` alone ("cv" and "holdout"; default: a clone fitted
      from scratch),

    and declare ``contamination`` and ``sigma`` parameters, and, to expose them,
    ``calibration`` (default "auto") and ``false_alarm_rate`` (default None).

    Thresholds (``doc/operating.md``): ``fit`` computes calibration scores, anomaly
    scores of normal samples the model did not fit (``calibration``: a held-out
    fraction, cross-fitted folds "cv", one such fold "holdout", or "in_sample" =
    ``_offset_scores``), stores
    them as ``calibration_scores_`` (normality, like ``score_samples``) and sets
    ``offset_`` from them: ``false_alarm_rate`` -> the split-conformal quantile
    (:func:`conformal_offset`); ``contamination="auto"`` -> the least normal
    calibration score (no calibration sample flagged: the conformal rule at
    ``1 / (n_cal + 1)``), or in blind mode (``blind_``, :class:`BlindModeMixin`: the
    training set holds the anomalies) the robust rule of :func:`blind_offset`; a
    float ``contamination`` -> that percentile.
    :meth:`pvalues` gives conformal p-values against the same scores.

    The public API: ``fit``, ``score_samples`` (higher = more normal),
    ``decision_function`` (= ``score_samples - offset_``, negative = anomalous),
    ``predict`` (+1 normal / -1 anomalous), ``fit_predict``, ``anomaly_score``
    (= ``-score_samples``), ``anomaly_map`` and ``score_and_map``.
    """

    _parameter_constraints: dict = {
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "sigma": [Interval(Real, 0, None, closed="left")],
        # declared here for every detector; a detector takes them as parameters by
        # listing them in __init__ (the others get the defaults through getattr)
        "calibration": [StrOptions({"auto", "in_sample", "cv", "holdout"}),
                        Interval(Real, 0, 1, closed="neither")],
        "false_alarm_rate": [Interval(Real, 0, 1, closed="neither"), None],
        # CPU threads of fit and scoring (skad.utils.thread_limits); None: an enclosing
        # thread_limits block's count, else "auto" (the free cores)
        "n_jobs": [Interval(Integral, -1, None, closed="left"), StrOptions({"auto"}), None],
    }

    def _threads(self):
        return estimator_threads(getattr(self, "n_jobs", None), "n_jobs")

    # False: detectors fit estimators they are given (extractor, synthesizer, LOF's
    # estimator), whose parameters must be validated in turn (_sklearn_compat)
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the detector.

        Parameters
        ----------
        X : array-like
            Training data (normal samples in the one-class setting; the set to be
            scored in the blind setting).
        y : Ignored
            Not used, present for API consistency (use
            :class:`~skad.pipeline.AnomalyPipeline` with ``normal_only=True`` to drop
            labelled anomalies before fitting).

        Returns
        -------
        self : object
        """
        X = self._validate_input(X, reset=True)
        self.calibration_ = self._calibration_mode(X)
        with self._threads():
            if self.calibration_ == "split":
                fit_idx, cal_idx = self._calibration_split(len(X))
                self._fit(_take(X, fit_idx))
                self._calibration_input = _take(X, cal_idx)
            else:
                self._fit(X)
            self._set_offset(X)
        return self

    # -- offset / thresholds -------------------------------------------------
    # How offset_ is set (doc/operating.md):
    # 1. calibration scores: anomaly scores of normal samples the model did not fit
    #    (calibration_, see _calibration_mode);
    # 2. offset_ from them: false_alarm_rate -> split-conformal quantile; contamination
    #    "auto" -> the least normal calibration score (no calibration sample flagged;
    #    blind mode: blind_offset); a float contamination -> that percentile of the
    #    calibration scores.
    def _score_images(self, X):
        return self._score(X)[0]

    def _offset_scores(self, X):
        return self._score_images(X)

    def _default_calibration(self, X):
        """What ``calibration="auto"`` means for this detector and training set ``X``.

        "cv" (cross-fitted scores) unless the detector's ``_offset_scores`` already
        leave each training image out (memory banks: PatchCore, SPADE override this
        to "in_sample"). Cross-fitting assumes that a model fitted on 4/5 of the
        samples scores on the scale of the model fitted on all of them. A detector
        whose fit draws a random subsample breaks that: each draw gives the scores a
        scale of its own, so fold scores do not transfer to the model kept
        (``benchmarks/results/lof_calibration.md``). Such a detector returns "split":
        the fraction ``_AUTO_SPLIT`` of the samples is held out and scored by the
        model kept (split conformal, exact for that very model).
        """
        return "cv"

    def _calibration_mode(self, X):
        n = len(X)
        mode = getattr(self, "calibration", "auto")
        if mode == "auto":
            mode = self._default_calibration(X)
            if mode == "split":
                if n < _CV_MIN_SAMPLES:
                    return "in_sample"  # too few samples to hold any out
                return "split"
        if isinstance(mode, Real) and not isinstance(mode, bool):
            n_cal = int(round(float(mode) * n))
            if n_cal < 1 or n - n_cal < 1:
                raise ValueError(
                    f"calibration={mode!r} holds out {n_cal} of the {n} training samples; "
                    "the fraction must leave at least one sample for fitting and one for "
                    "calibration (use more samples or calibration='in_sample')"
                )
            return "split"
        if mode in ("cv", "holdout") and n < _CV_MIN_SAMPLES:
            return "in_sample"  # too few samples to leave any out
        return mode

    def _split_rng(self):
        # the split follows random_state where the detector has one, else a fixed seed:
        # never the global RNG, and the same fit gives the same threshold
        seed = getattr(self, "random_state", None)
        return check_random_state(0 if seed is None else seed)

    def _calibration_split(self, n):
        mode = getattr(self, "calibration", "auto")
        fraction = _AUTO_SPLIT if mode == "auto" else float(mode)
        perm = self._split_rng().permutation(n)
        n_cal = int(round(fraction * n))
        return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])

    def _cv_folds(self, n):
        """The folds of "cv" (sorted indices); "holdout" scores the first one."""
        folds = np.array_split(self._split_rng().permutation(n), min(_CV_FOLDS, n))
        return [np.sort(f) for f in folds]

    def _fold_scores(self, X, train, test):
        """Anomaly scores of ``X[test]`` by a model fitted on ``X[train]`` alone."""
        est = clone(self)
        with warnings.catch_warnings():  # fit already warned about its clips
            warnings.simplefilter("ignore", ClippedParameterWarning)
            est._fit(est._validate_input(_take(X, train), reset=True))
        return est._score_images(est._validate_input(_take(X, test), reset=False))

    def _cross_fit_scores(self, X, n_folds=None):
        """Anomaly scores of the training samples of the first ``n_folds`` folds
        (default: all, i.e. every sample), each from a model fitted without its fold.

        Returns the scores and the samples' indices (fold by fold, each fold sorted).
        """
        n = len(X)
        folds = self._cv_folds(n)[:n_folds]
        scores = []
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            scores.append(np.asarray(self._fold_scores(X, train, test), dtype=np.float64))
        return np.concatenate(scores), np.concatenate(folds)

    def _calibration_scores(self, X):
        """Anomaly scores of the calibration samples, per ``calibration_``."""
        if self.calibration_ == "split":
            X_cal = self._calibration_input
            del self._calibration_input
            return self._score_images(X_cal)
        if self.calibration_ == "cv":
            scores, idx = self._cross_fit_scores(X)
            out = np.empty(len(X), dtype=np.float64)
            out[idx] = scores  # in the order of the training samples
            return out
        if self.calibration_ == "holdout":
            return self._cross_fit_scores(X, n_folds=1)[0]
        return self._offset_scores(X)

    def _offset_from(self, calibration_scores):
        """``offset_`` from calibration normality scores (higher = more normal)."""
        alpha = getattr(self, "false_alarm_rate", None)
        if alpha is not None:
            if self.contamination != "auto":
                raise ValueError(
                    f"got contamination={self.contamination!r} and false_alarm_rate="
                    f"{alpha!r}: give one of them (leave contamination='auto')"
                )
            threshold = conformal_offset(-calibration_scores, alpha)
            if not np.isfinite(threshold):
                warn_user(
                    f"false_alarm_rate={alpha} needs at least {math.ceil(1 / alpha) - 1} "
                    f"calibration samples; got {len(calibration_scores)}: nothing will be "
                    "flagged (offset_ = -inf)", UserWarning,
                )
            return -threshold
        if self.contamination == "auto":
            if getattr(self, "blind_", False):
                # blind mode: the training set holds the anomalies (blind_offset)
                return blind_offset(calibration_scores)
            # No calibration sample flagged: the least normal one sits on the boundary.
            # With unbiased calibration scores this is the conformal rule at
            # false_alarm_rate = 1 / (n + 1) (conformal_offset with k = n).
            return float(calibration_scores.min())
        return float(np.percentile(calibration_scores, 100.0 * self.contamination))

    def _set_offset(self, X):
        anomaly = np.asarray(self._calibration_scores(X), dtype=np.float64)
        self.calibration_scores_ = -anomaly
        self.train_scores_ = self.calibration_scores_  # the earlier name, kept
        self.offset_ = float(self._offset_from(self.calibration_scores_))

    def set_threshold(self, X_normal, false_alarm_rate=0.01):
        """Recalibrate on held-out normals: ``offset_`` for a target false-alarm rate.

        ``X_normal`` becomes the calibration set (``calibration_scores_``, used by
        :meth:`pvalues` too) and ``offset_`` its split-conformal quantile
        (:func:`conformal_offset`): if ``X_normal`` and future normal samples are
        drawn alike, at most a fraction ``false_alarm_rate`` of them is flagged in
        expectation.

        Parameters
        ----------
        X_normal : array-like
            Held-out normal samples, not used in fit (never the anomalies of a test
            split).
        false_alarm_rate : float in (0, 1), default=0.01

        Returns
        -------
        self : object

        Examples
        --------
        >>> import numpy as np
        >>> from skad.detectors import PaDiM
        >>> rng = np.random.default_rng(0)
        >>> det = PaDiM(random_state=0).fit(rng.normal(size=(60, 4)))
        >>> det = det.set_threshold(rng.normal(size=(99, 4)), false_alarm_rate=0.05)
        >>> float(np.mean(det.predict(rng.normal(size=(2000, 4))) == -1)) < 0.1
        True
        """
        if not 0.0 < float(false_alarm_rate) < 1.0:
            raise ValueError(
                f"false_alarm_rate: expected a float in (0, 1); got {false_alarm_rate!r}"
            )
        scores = self.score_samples(X_normal)
        self.calibration_scores_ = scores
        self.offset_ = -conformal_offset(-scores, false_alarm_rate)
        return self

    def pvalues(self, X):
        """Conformal p-value of each sample against the calibration scores.

        ``p = (1 + #{calibration anomaly scores >= its anomaly score}) / (n + 1)``:
        small = unlike the normal calibration samples. For a new normal sample
        exchangeable with the calibration samples, ``P(p <= a) <= a`` for every
        ``a``; flagging ``p <= false_alarm_rate`` is the same rule as ``predict``
        with that ``false_alarm_rate``.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        p : ndarray of shape (n_samples,), values in [1 / (n_cal + 1), 1]

        Examples
        --------
        >>> import numpy as np
        >>> from skad.detectors import PaDiM
        >>> rng = np.random.default_rng(0)
        >>> det = PaDiM(random_state=0).fit(rng.normal(size=(50, 3)))
        >>> p = det.pvalues(np.vstack([np.zeros(3), np.full(3, 10.0)]))
        >>> bool(p[0] > 0.5), float(p[1]) == 1 / (len(det.calibration_scores_) + 1)
        (True, True)
        """
        anomaly = -self.score_samples(X)
        cal = np.sort(-np.asarray(self.calibration_scores_, dtype=np.float64))
        n_ge = len(cal) - np.searchsorted(cal, anomaly, side="left")
        return (1.0 + n_ge) / (len(cal) + 1.0)

    # -- scoring -------------------------------------------------------------
    def _checked_input(self, X):
        check_is_fitted(self)
        return self._validate_input(X, reset=False)

    def _checked_score(self, X):
        X = self._checked_input(X)
        with self._threads():
            return self._score(X)

    def score_samples(self, X):
        """Normality score of each sample (higher = more normal), as scikit-learn's LOF.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        X = self._checked_input(X)
        with self._threads():
            return -np.asarray(self._score_images(X), dtype=np.float64)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for anomalies.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal samples, -1 for anomalies.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        decision = self.decision_function(X)
        return np.where(decision < 0, -1, 1)

    def anomaly_score(self, X):
        """Anomaly score of each sample (higher = more anomalous): ``-score_samples(X)``.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return -self.score_samples(X)

    def _postprocess_maps(self, maps, output_size):
        maps = np.asarray(maps, dtype=np.float32)
        if output_size is None:
            return maps
        return resize_smooth(maps, output_size, self.sigma)

    def anomaly_map(self, X, output_size=None):
        """Pixel-level anomaly maps (higher = more anomalous).

        Parameters
        ----------
        X : array-like
        output_size : int or (H, W), optional
            If given, maps are bilinearly upsampled to this size and smoothed with a
            Gaussian of standard deviation ``sigma`` pixels. If None, the raw maps at
            the feature resolution are returned.

        Returns
        -------
        maps : ndarray of float32, shape (n_samples, h, w) or (n_samples, H, W)
        """
        return self._postprocess_maps(self._checked_score(X)[1], output_size)

    def score_and_map(self, X, output_size=None):
        """``(anomaly_score(X), anomaly_map(X, output_size))`` in one pass over ``X``.

        Parameters
        ----------
        X : array-like
        output_size : int or (H, W), optional

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            Higher = more anomalous.
        maps : ndarray of float32, shape (n_samples, h, w) or (n_samples, H, W)
        """
        scores, maps = self._checked_score(X)
        return np.asarray(scores, dtype=np.float64), self._postprocess_maps(maps, output_size)


class PatchDetectorMixin:
    """Validation for detectors on patch tensors ``(n, C, h, w)`` (2-D = 1x1 maps).

    Sets ``n_features_in_`` (= C) and ``patch_shape_`` (= (h, w)) in fit; at predict
    time the channel count must match (the spatial size may differ unless
    ``_requires_same_patch_shape`` is True).
    """

    _requires_same_patch_shape = False

    def _validate_input(self, X, reset):
        try:
            ndim = np.asarray(X).ndim
        except (ValueError, TypeError):  # ragged nested sequences
            ndim = None
        if ndim is None or ndim >= 3 or _is_path_sequence(X):
            # images, paths or patch tensors: check_patches gives the skad error
            X4 = check_patches(X)  # checks finiteness: not repeated below
            validate_data(self, X4, reset=reset, allow_nd=True, dtype=np.float32,
                          ensure_all_finite=False)
        else:
            try:
                X2 = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
            except (ValueError, TypeError) as exc:
                # scikit-learn's messages ("Found array with 0 sample(s) ...", "Expected
                # 2D array, got scalar array instead") do not always say which input
                msg = str(exc)
                if msg.startswith("X"):
                    raise
                raise type(exc)(f"X: {msg}") from exc
            X4 = np.ascontiguousarray(X2, dtype=np.float32)[:, :, None, None]
        if reset:
            self.patch_shape_ = tuple(int(s) for s in X4.shape[2:])
        elif self._requires_same_patch_shape and tuple(X4.shape[2:]) != self.patch_shape_:
            raise ValueError(
                f"X: patch maps of spatial size {tuple(X4.shape[2:])} differ from the "
                f"{self.patch_shape_} seen in fit; {type(self).__name__} models each "
                "position, so use the same extractor and input size for fit and predict"
            )
        return X4

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class ImageDetectorMixin:
    """Validation for detectors that take images (the trained detectors).

    ``X`` is what :class:`~skad.features.PatchFeatureExtractor` takes: an array
    ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 0-255 or float 0-1) or a sequence of image
    paths, decoded lazily batch by batch; the validated :class:`~skad.utils.ImageSet`
    reaches ``_fit`` and ``_score``. ``fit`` needs at least ``_min_train_images``
    images. Patch tensors are refused with a message saying what to pass instead.
    """

    _min_train_images = 2

    def _default_calibration(self, X):
        # cross-fitting would train the network 5 more times: in-sample scores (the
        # detectors' own _offset_scores) unless the user asks for "cv" or a split
        return "in_sample"

    def _validate_input(self, X, reset):
        try:
            arr = None if _is_path_sequence(X) else np.asarray(X)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.ndim == 4 and arr.dtype.kind == "f" and (
                arr.shape[-1] not in (1, 3) and arr.shape[1] not in (1, 3)):
            raise ValueError(
                f"X: got an array of shape {arr.shape}, which looks like patch tensors "
                f"(n, C, h, w); {type(self).__name__} takes images (n, H, W, 3) and "
                "extracts its own features (its `extractor` parameter)"
            )
        images = check_images(X)
        if reset and len(images) < self._min_train_images:
            raise ValueError(
                f"X: {type(self).__name__} needs at least {self._min_train_images} training "
                f"images; got {len(images)}"
            )
        return images

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


class StreamingMixin:
    """``partial_fit``: a detector learned chunk by chunk, in bounded memory.

    For data sets too large to hold as one patch tensor: feed chunks of images' patch
    tensors (e.g. :func:`skad.scale.fit_streaming` over image paths). The detector
    implements ``_partial_fit(X, first) -> anomaly scores of X``, which updates its
    state with the chunk and returns the chunk's calibration scores (how each
    detector gets scores of normal samples it did not simply memorise is said in its
    docstring). ``offset_`` follows from all calibration scores so far, with the same
    ``contamination`` / ``false_alarm_rate`` rules as ``fit`` (``calibration_`` is
    "streamed"); :meth:`~BaseDetector.set_threshold` on held-out normals replaces it.
    ``fit`` starts over. Parameters are validated when ``partial_fit`` is called on an
    unfitted detector (scikit-learn's ``_fit_context`` rule): after ``fit`` or earlier
    chunks, a ``set_params`` takes effect unvalidated until the next ``fit``.
    """

    def fit(self, X, y=None):
        self.__dict__.pop("n_images_seen_", None)
        return super().fit(X, y)

    @_fit_context(prefer_skip_nested_validation=False)
    def partial_fit(self, X, y=None):
        """Update the detector with one chunk of training samples.

        Parameters
        ----------
        X : array-like
            A chunk of training samples (at least 2); later chunks must have the
            channels (and, where the detector needs it, the spatial size) of the first.
        y : Ignored

        Returns
        -------
        self : object
        """
        first = not hasattr(self, "n_images_seen_")
        X = self._validate_input(X, reset=first)
        if len(X) < 2:
            raise ValueError(
                f"X: each partial_fit chunk needs at least 2 samples; got {len(X)}"
            )
        with self._threads():
            anomaly = np.asarray(self._partial_fit(X, first), dtype=np.float64)
        self.n_images_seen_ = (0 if first else self.n_images_seen_) + len(X)
        previous = () if first else (self.calibration_scores_,)
        self.calibration_ = "streamed"
        self.calibration_scores_ = np.concatenate([*previous, -anomaly])
        self.train_scores_ = self.calibration_scores_
        self.offset_ = float(self._offset_from(self.calibration_scores_))
        return self
