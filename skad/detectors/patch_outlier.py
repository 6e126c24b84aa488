"""Any scikit-learn outlier detector applied to patch vectors."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.neighbors import LocalOutlierFactor
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from .._kernels import patch_rows
from ._base import BaseDetector, PatchDetectorMixin

__all__ = ["PatchOutlierDetector"]


class PatchOutlierDetector(PatchDetectorMixin, BaseDetector):
    """Fit a scikit-learn outlier detector on patch vectors; map its per-patch scores.

    Every patch (one C-vector per position of each training image; subsampled to
    ``max_patches``) is a training sample of a clone of ``estimator``. A test
    patch's anomaly score is ``-estimator.score_samples(patch)``; the image score
    is the max (or mean) of its map.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``score_samples``, default=None
        The outlier detector, e.g. ``LocalOutlierFactor(novelty=True)``,
        ``IsolationForest()``, ``OneClassSVM()``. None means
        ``LocalOutlierFactor(n_neighbors=20, novelty=True)``. Its parameters are
        tunable as ``estimator__<param>``.
    max_patches : int or None, default=50_000
        Random subset of training patches the estimator is fitted on (None: all).
        LOF's fit is quadratic-ish in this number.
    image_score : {"max", "mean"}, default="max"
        Reduction of each patch map to the image score.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets this detector's ``offset_`` (the estimator's own ``contamination`` only
        affects its ``predict``, which is not used).
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    random_state : int, RandomState instance or None, default=None
        Seeds the patch subsample (set the estimator's own ``random_state`` for
        its randomness).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone.
    n_patches_fit_ : int
    n_features_in_ : int
    patch_shape_ : tuple of int
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    The training scores (for ``offset_``) are the estimator's scores of the training
    patches; for ``LocalOutlierFactor(novelty=True)`` a training patch is among its
    own neighbours there, so ``contamination="auto"`` can put the threshold close
    to the training patches.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
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
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "estimator": [HasMethods(["fit", "score_samples"]), None],
        "max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "image_score": [StrOptions({"max", "mean"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        max_patches=50_000,
        image_score="max",
        contamination="auto",
        sigma=4.0,
        random_state=None,
    ):
        self.estimator = estimator
        self.max_patches = max_patches
        self.image_score = image_score
        self.contamination = contamination
        self.sigma = sigma
        self.random_state = random_state

    def _fit(self, X):
        rows = patch_rows(X)
        if self.max_patches is not None and len(rows) > self.max_patches:
            rng = check_random_state(self.random_state)
            rows = rows[np.sort(rng.choice(len(rows), self.max_patches, replace=False))]
        if self.estimator is None:
            est = LocalOutlierFactor(n_neighbors=20, novelty=True)
        else:
            est = clone(self.estimator)
        self.estimator_ = est.fit(rows)
        self.n_patches_fit_ = len(rows)
        return self

    def _score(self, X):
        n, _, h, w = X.shape
        maps = -np.asarray(self.estimator_.score_samples(patch_rows(X)), dtype=np.float32)
        maps = maps.reshape(n, h, w)
        flat = maps.reshape(n, -1)
        image = flat.max(axis=1) if self.image_score == "max" else flat.mean(axis=1)
        return image, maps
