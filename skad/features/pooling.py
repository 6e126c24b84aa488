"""Pooling of patch features: local neighbourhood aggregation and global pooling."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..utils._sklearn_compat import StrOptions, _fit_context

__all__ = ["GlobalPool", "local_average_pool"]


def local_average_pool(features: torch.Tensor, size: int, include_pad: bool = False
                       ) -> torch.Tensor:
    """Average each patch feature over its ``size x size`` neighbourhood (stride 1).

    PatchCore's local aggregation (Roth et al., 2022, Sec. 3.1: ``f_agg`` over the
    neighbourhood ``N_p^(h,w)`` with ``p = size``) as an average; zero padding of
    ``size // 2`` keeps the map size.

    Parameters
    ----------
    features : Tensor of shape (b, C, h, w)
    size : int
        Odd neighbourhood size; 1 returns ``features`` unchanged.
    include_pad : bool, default=False
        Whether the zero padding counts in the border averages (``True``: always
        divide by ``size**2``, as PatchCore's reference code, which unfolds
        zero-padded neighbourhoods; ``False``: border positions average their in-map
        neighbours only).

    Returns
    -------
    pooled : Tensor of shape (b, C, h, w)

    Examples
    --------
    >>> import torch
    >>> from skad.features.pooling import local_average_pool
    >>> x = torch.arange(9.0).reshape(1, 1, 3, 3)
    >>> local_average_pool(x, 3)[0, 0, 1, 1].item()
    4.0
    >>> local_average_pool(x, 3)[0, 0, 0, 0].item()   # mean of 0, 1, 3, 4
    2.0
    >>> local_average_pool(x, 3, include_pad=True)[0, 0, 0, 0].item()   # (0+1+3+4) / 9
    0.8888888955116272
    """
    if size == 1:
        return features
    return F.avg_pool2d(features, size, stride=1, padding=size // 2,
                        count_include_pad=bool(include_pad))


class GlobalPool(TransformerMixin, BaseEstimator):
    """Pool patch tensors ``(n, C, h, w)`` to image-level features ``(n, C)``.

    Put it between a :class:`~skad.features.PatchFeatureExtractor` and any
    scikit-learn outlier detector (``LocalOutlierFactor``, ``IsolationForest``,
    ``OneClassSVM``) to detect anomalies at image level.

    Parameters
    ----------
    method : {"mean", "max", "meanmax"}, default="mean"
        ``"mean"``: spatial average; ``"max"``: spatial maximum; ``"meanmax"``: both,
        concatenated (``2 C`` features: the C means, then the C maxima).

    Attributes
    ----------
    n_features_in_ : int
        Number of channels ``C`` seen in ``fit``.
    patch_shape_ : (int, int)
        ``(h, w)`` of the patch maps seen in ``fit`` (other sizes are accepted later).

    Examples
    --------
    >>> import numpy as np
    >>> from skad.features import GlobalPool
    >>> X = np.random.default_rng(0).random((4, 8, 5, 5), dtype=np.float32)
    >>> GlobalPool().fit_transform(X).shape
    (4, 8)
    >>> GlobalPool(method="meanmax").fit_transform(X).shape
    (4, 16)
    """

    _parameter_constraints = {"method": [StrOptions({"mean", "max", "meanmax"})]}

    def __init__(self, method="mean"):
        self.method = method

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate ``X`` and remember its channel count.

        Parameters
        ----------
        X : array-like of shape (n, C, h, w) or (n, C)
        y : ignored

        Returns
        -------
        self : GlobalPool
        """
        self._validate_input(X, reset=True)
        return self

    _requires_same_patch_shape = False

    def _validate_input(self, X, reset):
        # the patch detectors' validation: (n, C, h, w), or (n, d) as 1x1 maps. Imported
        # here: skad.detectors imports this module (NPad uses local_average_pool).
        from ..detectors._base import PatchDetectorMixin

        return PatchDetectorMixin._validate_input(self, X, reset)

    def transform(self, X):
        """Pool each channel over the spatial positions.

        Parameters
        ----------
        X : array-like of shape (n, C, h, w) or (n, C)

        Returns
        -------
        features : ndarray of float32, shape (n, C) or (n, 2 C) for "meanmax"
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        flat = X.reshape(X.shape[0], X.shape[1], -1)
        if self.method == "mean":
            return flat.mean(axis=2, dtype=np.float64).astype(np.float32)
        if self.method == "max":
            return flat.max(axis=2)
        return np.concatenate(
            [flat.mean(axis=2, dtype=np.float64).astype(np.float32), flat.max(axis=2)], axis=1
        )

    def get_feature_names_out(self, input_features=None):
        """Output feature names (``mean_<i>`` / ``max_<i>`` per channel ``i``).

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        names : ndarray of str
        """
        check_is_fitted(self)
        kinds = ["mean", "max"] if self.method == "meanmax" else [self.method]
        return np.asarray(
            [f"{k}_{i}" for k in kinds for i in range(self.n_features_in_)], dtype=object
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
