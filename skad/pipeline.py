"""AnomalyPipeline: a scikit-learn Pipeline that also delegates anomaly maps."""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .utils._sklearn_compat import _name_estimators, _safe_indexing
from .utils.validation import _is_path_sequence, check_images, labels_from_y

__all__ = ["AnomalyPipeline", "make_pipeline"]


def _final_has(attr):
    def check(self):
        getattr(self._final_estimator, attr)
        return True

    return check


def _input_image_size(X):
    """(H, W) of images ``X``, or None when ``X`` is not images (e.g. patch tensors)."""
    if _is_path_sequence(X):
        return check_images(X).image_size
    arr = np.asarray(X) if not hasattr(X, "image_size") else None
    if arr is None:
        return X.image_size
    if arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3)):
        return check_images(arr).image_size
    return None


class AnomalyPipeline(Pipeline):
    """Pipeline of transforms ending in an anomaly detector.

    Behaves as :class:`sklearn.pipeline.Pipeline` and adds

    - ``anomaly_map(X, output_size=None)``: maps from the final detector, upsampled to
      the input images' size by default;
    - ``anomaly_score(X)`` and ``score_and_map(X, output_size=None)``;
    - the one-class protocol: with ``normal_only=True``, ``fit(X, y)`` drops the
      samples ``y`` marks as anomalous (labels ``(n,)`` with 1 = anomalous, or masks
      ``(n, H, W)``) before fitting, so ``GridSearchCV``'s refit never trains on defects.

    Parameters
    ----------
    steps : list of (str, estimator) tuples
        Transforms followed by a detector.
    normal_only : bool, default=True
        Drop anomalous samples from ``fit`` when ``y`` is given.
    memory : str or object with the joblib.Memory interface, default=None
        Cache of fitted transformers, as in :class:`sklearn.pipeline.Pipeline`.
    verbose : bool, default=False
        Print the time of each step.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from skad import AnomalyPipeline
    >>> X = np.random.default_rng(0).normal(size=(30, 4))
    >>> y = np.r_[np.zeros(25, int), np.ones(5, int)]
    >>> pipe = AnomalyPipeline([("scale", StandardScaler()),
    ...                         ("lof", LocalOutlierFactor(novelty=True))])
    >>> pipe.fit(X, y).score_samples(X).shape     # fitted on the 25 normals only
    (30,)
    """

    def __init__(self, steps, *, normal_only=True, memory=None, verbose=False):
        super().__init__(steps, memory=memory, verbose=verbose)
        self.normal_only = normal_only

    def fit(self, X, y=None, **params):
        """Fit the steps on ``X`` (its normal samples only when ``y`` is given).

        Parameters
        ----------
        X : images, patch tensors or features
        y : array-like of shape (n,) or (n, H, W), optional
            Labels (1 = anomalous) or masks; with ``normal_only=True`` anomalous samples
            are dropped, and ``y`` is not passed to the steps.
        **params : dict
            Fit parameters routed to the steps as in :class:`~sklearn.pipeline.Pipeline`.

        Returns
        -------
        self : AnomalyPipeline
        """
        if y is not None and self.normal_only:
            labels = labels_from_y(y, n_samples=len(X))
            keep = np.flatnonzero(labels == 0)
            if keep.size == 0:
                raise ValueError(
                    "y: every sample is labelled anomalous, so no normal sample is left to "
                    "fit on (normal_only=True); pass normal samples or set normal_only=False"
                )
            X = _safe_indexing(X, keep)
            y = None
        return super().fit(X, y, **params)

    def _transform_until_final(self, X):
        Xt = X
        for _, _, transformer in self._iter(with_final=False):
            Xt = transformer.transform(Xt)
        return Xt

    @available_if(_final_has("anomaly_map"))
    def anomaly_map(self, X, output_size=None):
        """Anomaly maps of the final detector, upsampled to the input images' size.

        Parameters
        ----------
        X : images
        output_size : int or (H, W), optional
            Output size; defaults to the input images' ``(H, W)`` (when ``X`` is not an
            image set, the final detector's raw maps).

        Returns
        -------
        maps : ndarray of float32, shape (n, H, W)
            Higher = more anomalous.
        """
        check_is_fitted(self)
        if output_size is None:
            output_size = _input_image_size(X)
        return self._final_estimator.anomaly_map(
            self._transform_until_final(X), output_size=output_size
        )

    @available_if(_final_has("score_and_map"))
    def score_and_map(self, X, output_size=None):
        """Anomaly scores (higher = more anomalous) and maps in one pass.

        Parameters
        ----------
        X : images
        output_size : int or (H, W), optional
            Defaults to the input images' size.

        Returns
        -------
        scores : ndarray of shape (n,)
        maps : ndarray of float32, shape (n, H, W)
        """
        check_is_fitted(self)
        if output_size is None:
            output_size = _input_image_size(X)
        return self._final_estimator.score_and_map(
            self._transform_until_final(X), output_size=output_size
        )

    @available_if(_final_has("score_samples"))
    def anomaly_score(self, X):
        """``-score_samples(X)``: higher = more anomalous.

        Parameters
        ----------
        X : images or features

        Returns
        -------
        scores : ndarray of shape (n,)
        """
        return -np.asarray(self.score_samples(X))


def make_pipeline(*steps, normal_only=True, memory=None, verbose=False):
    """Build an :class:`AnomalyPipeline` with step names derived from the classes.

    Parameters
    ----------
    *steps : estimators
        Transforms followed by a detector.
    normal_only : bool, default=True
        See :class:`AnomalyPipeline`.
    memory : str or joblib.Memory, default=None
    verbose : bool, default=False

    Returns
    -------
    pipeline : AnomalyPipeline

    Examples
    --------
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.neighbors import LocalOutlierFactor
    >>> from skad import make_pipeline
    >>> make_pipeline(StandardScaler(), LocalOutlierFactor(novelty=True)).steps[1][0]
    'localoutlierfactor'
    """
    return AnomalyPipeline(
        _name_estimators(steps), normal_only=normal_only, memory=memory, verbose=verbose
    )
