"""The outlier-detector contract shared by every skad detector, implemented once."""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .._kernels.maps import resize_smooth
from ..utils.validation import _is_path_sequence, check_images, check_patches

__all__ = ["BaseDetector", "ImageDetectorMixin", "PatchDetectorMixin"]


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
      :class:`PatchDetectorMixin`; image detectors validate images).

    and declare ``contamination`` and ``sigma`` parameters.

    The public API: ``fit``, ``score_samples`` (higher = more normal),
    ``decision_function`` (= ``score_samples - offset_``, negative = anomalous),
    ``predict`` (+1 normal / -1 anomalous), ``fit_predict``, ``anomaly_score``
    (= ``-score_samples``), ``anomaly_map`` and ``score_and_map``.
    """

    _parameter_constraints: dict = {
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "sigma": [Interval(Real, 0, None, closed="left")],
    }

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
        self._validate_params()
        X = self._validate_input(X, reset=True)
        self._fit(X)
        self._set_offset(X)
        return self

    # -- offset / thresholds -------------------------------------------------
    def _score_images(self, X):
        return self._score(X)[0]

    def _offset_scores(self, X):
        return self._score_images(X)

    def _set_offset(self, X):
        train_anomaly = np.asarray(self._offset_scores(X), dtype=np.float64)
        self.train_scores_ = -train_anomaly
        if self.contamination == "auto":
            # No false alarm on the training normals: the least normal training sample
            # sits on the boundary (predicted normal).
            self.offset_ = float(self.train_scores_.min())
        else:
            self.offset_ = float(np.percentile(self.train_scores_, 100.0 * self.contamination))

    def set_threshold(self, X_normal, false_alarm_rate=0.01):
        """Set ``offset_`` so a fraction ``false_alarm_rate`` of held-out normals is flagged.

        Parameters
        ----------
        X_normal : array-like
            Held-out normal samples (never the anomalies of a test split).
        false_alarm_rate : float in [0, 1), default=0.01

        Returns
        -------
        self : object
        """
        if not 0.0 <= float(false_alarm_rate) < 1.0:
            raise ValueError(
                f"false_alarm_rate: expected a float in [0, 1); got {false_alarm_rate!r}"
            )
        scores = self.score_samples(X_normal)
        self.offset_ = float(np.percentile(scores, 100.0 * float(false_alarm_rate)))
        return self

    # -- scoring -------------------------------------------------------------
    def _checked_input(self, X):
        check_is_fitted(self)
        return self._validate_input(X, reset=False)

    def _checked_score(self, X):
        return self._score(self._checked_input(X))

    def score_samples(self, X):
        """Normality score of each sample (higher = more normal), as scikit-learn's LOF.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return -np.asarray(self._score_images(self._checked_input(X)), dtype=np.float64)

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
            X2 = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
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
