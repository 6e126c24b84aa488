"""Scorers ``scorer(estimator, X, y)`` for GridSearchCV / cross_validate.

They fix the sign: scikit-learn outlier detectors return ``score_samples`` with higher =
more normal, while the field's metrics take higher = more anomalous, and defect labels
are 1. ``scoring="roc_auc"`` on 0/1 defect labels would silently give 1 - AUROC.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning

from ..utils.validation import labels_from_y, masks_from_y
from ._pro import pro_score
from ._ranking import image_ap, image_auroc, image_f1_max, pixel_ap, pixel_auroc, pixel_f1_max

__all__ = [
    "AnomalyScorer",
    "get_scorer",
    "get_scorer_names",
    "image_ap_scorer",
    "image_auroc_scorer",
    "image_f1_scorer",
    "make_anomaly_scorer",
    "pixel_ap_scorer",
    "pixel_auroc_scorer",
    "pixel_f1_scorer",
    "pro_scorer",
]


class AnomalyScorer:
    """Callable ``scorer(estimator, X, y) -> float`` for an anomaly metric.

    Build one with :func:`make_anomaly_scorer`; use the ready-made ones
    (``image_auroc_scorer``, ``pixel_auroc_scorer``, ``pro_scorer``, ...).

    - ``level="image"``: calls ``estimator.score_samples(X)`` and negates it (higher
      = more anomalous); ``y`` may be labels ``(n,)`` (1 = anomalous) or masks
      ``(n, H, W)``, from which labels are derived.
    - ``level="pixel"``: calls ``estimator.anomaly_map(X, output_size=masks.shape[1:])``;
      ``y`` must be masks ``(n, H, W)``.

    When ``y`` holds a single class (a CV test fold without anomalies or without normal
    samples; for PRO, no anomalous region), the metric is undefined: the scorer returns
    ``nan`` and emits an :class:`~sklearn.exceptions.UndefinedMetricWarning`, so a grid
    search goes on and ranks that candidate with its other folds. Use
    :class:`~skad.model_selection.OneClassSplit` so every test fold holds both classes.

    Parameters
    ----------
    score_func : callable
        ``score_func(y_true, anomaly_scores, **kwargs)`` (image level) or
        ``score_func(masks, maps, **kwargs)`` (pixel level); higher = better.
    level : {"image", "pixel"}
    name : str
        Used in ``repr`` and messages.
    kwargs : dict
        Extra keyword arguments of ``score_func``.
    """

    def __init__(self, score_func, level, name, kwargs=None):
        if level not in ("image", "pixel"):
            raise ValueError(f"level: expected 'image' or 'pixel'; got {level!r}")
        self.score_func = score_func
        self.level = level
        self.name = name
        self.kwargs = dict(kwargs or {})

    def __repr__(self):
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"make_anomaly_scorer({self.name}, level={self.level!r}{kw})"

    def _undefined(self, reason):
        warnings.warn(
            f"{self.name} is undefined on this split ({reason}); the scorer returns nan. "
            "Use skad.model_selection.OneClassSplit so every test fold holds normal and "
            "anomalous samples.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return float("nan")

    def __call__(self, estimator, X, y, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{self.name}: sample_weight is not supported")
        if y is None:
            raise ValueError(
                f"{self.name}: y is required (image labels (n,) with 1 = anomalous"
                f"{'' if self.level == 'image' else ' are not enough; masks (n, H, W)'})"
            )
        if self.level == "image":
            return self._score_image(estimator, X, y)
        return self._score_pixel(estimator, X, y)

    def _score_image(self, estimator, X, y):
        if not hasattr(estimator, "score_samples"):
            raise TypeError(
                f"{self.name}: the estimator {type(estimator).__name__} has no score_samples "
                "method; image scorers need an outlier detector (higher score_samples = "
                "more normal), e.g. a skad detector or LocalOutlierFactor(novelty=True)"
            )
        labels = labels_from_y(y, n_samples=_num_samples(X))
        n_pos = int(labels.sum())
        if n_pos in (0, labels.size):
            return self._undefined(f"y holds only {'anomalous' if n_pos else 'normal'} samples")
        anomaly = -np.asarray(estimator.score_samples(X), dtype=np.float64)
        return float(self.score_func(labels, anomaly, **self.kwargs))

    def _score_pixel(self, estimator, X, y):
        y_arr = np.asarray(y)
        if y_arr.ndim == 1:
            raise ValueError(
                f"{self.name}: pixel-level scorers need ground-truth masks (n, H, W) as y; "
                f"got image labels of shape {y_arr.shape}. Pass masks (e.g. "
                "data.test_masks from skad.datasets) or use an image-level scorer"
            )
        if not hasattr(estimator, "anomaly_map"):
            raise TypeError(
                f"{self.name}: the estimator {type(estimator).__name__} has no anomaly_map "
                "method, so it cannot localise anomalies; pixel scorers need a skad detector "
                "(or a pipeline ending in one). Use an image-level scorer for "
                "image-level detectors such as LocalOutlierFactor"
            )
        masks = masks_from_y(y_arr)
        n = _num_samples(X)
        if masks.shape[0] != n:
            raise ValueError(f"{self.name}: got {masks.shape[0]} masks for {n} samples")
        n_pos = int(masks.sum())
        if n_pos in (0, masks.size):
            return self._undefined(
                f"the masks hold only {'anomalous' if n_pos else 'normal'} pixels"
            )
        maps = np.asarray(estimator.anomaly_map(X, output_size=masks.shape[1:]))
        return float(self.score_func(masks, maps, **self.kwargs))


def _num_samples(X):
    return X.shape[0] if hasattr(X, "shape") else len(X)


def make_anomaly_scorer(score_func, *, level="image", **kwargs):
    """Make a scorer ``scorer(estimator, X, y)`` from an anomaly metric.

    Parameters
    ----------
    score_func : callable
        Image level: ``score_func(labels, anomaly_scores, **kwargs)``; pixel level:
        ``score_func(masks, maps, **kwargs)``. Higher must be better.
    level : {"image", "pixel"}, default="image"
    **kwargs
        Passed to ``score_func`` (e.g. ``max_fpr=0.05`` for :func:`pro_score`).

    Returns
    -------
    scorer : AnomalyScorer

    Examples
    --------
    >>> from skad.metrics import make_anomaly_scorer, pro_score
    >>> make_anomaly_scorer(pro_score, level="pixel", max_fpr=0.05)
    make_anomaly_scorer(pro_score, level='pixel', max_fpr=0.05)
    """
    name = getattr(score_func, "__name__", repr(score_func))
    return AnomalyScorer(score_func, level, name, kwargs)


image_auroc_scorer = make_anomaly_scorer(image_auroc, level="image")
image_ap_scorer = make_anomaly_scorer(image_ap, level="image")
image_f1_scorer = make_anomaly_scorer(image_f1_max, level="image")
pixel_auroc_scorer = make_anomaly_scorer(pixel_auroc, level="pixel")
pixel_ap_scorer = make_anomaly_scorer(pixel_ap, level="pixel")
pixel_f1_scorer = make_anomaly_scorer(pixel_f1_max, level="pixel")
pro_scorer = make_anomaly_scorer(pro_score, level="pixel")

_SCORERS = {
    "image_auroc": image_auroc_scorer,
    "image_ap": image_ap_scorer,
    "image_f1_max": image_f1_scorer,
    "pixel_auroc": pixel_auroc_scorer,
    "pixel_ap": pixel_ap_scorer,
    "pixel_f1_max": pixel_f1_scorer,
    "pro": pro_scorer,
}


def get_scorer_names():
    """Names accepted by :func:`get_scorer`.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skad.metrics import get_scorer_names
    >>> "pro" in get_scorer_names()
    True
    """
    return sorted(_SCORERS)


def get_scorer(name):
    """The skad scorer called ``name`` (e.g. ``"image_auroc"``, ``"pro"``).

    Parameters
    ----------
    name : str or AnomalyScorer
        A name from :func:`get_scorer_names`; a scorer is returned unchanged.

    Returns
    -------
    scorer : AnomalyScorer

    Examples
    --------
    >>> from skad.metrics import get_scorer
    >>> get_scorer("pixel_auroc").level
    'pixel'
    """
    if isinstance(name, AnomalyScorer):
        return name
    try:
        return _SCORERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"scoring: unknown skad scorer {name!r}; expected one of {get_scorer_names()}"
        ) from None
