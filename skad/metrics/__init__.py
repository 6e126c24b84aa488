"""Anomaly detection metrics and scorers (scores: higher = more anomalous).

Image level: :func:`image_auroc`, :func:`image_ap`, :func:`image_f1_max`.
Pixel level: :func:`pixel_auroc`, :func:`pixel_ap`, :func:`pixel_f1_max`,
:func:`pro_score` (area under the PRO curve up to FPR 0.3, normalised).
Curves for plots: :func:`roc_curve`, :func:`pro_curve`.
Scorers ``scorer(estimator, X, y)`` for ``GridSearchCV(scoring=...)``:
``image_auroc_scorer``, ``pixel_auroc_scorer``, ``pro_scorer``, ``pixel_ap_scorer``, ...
"""

from ._pro import pro_curve, pro_score
from ._ranking import (
    f1_max,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    roc_curve,
)
from ._scorer import (
    AnomalyScorer,
    get_scorer,
    get_scorer_names,
    image_ap_scorer,
    image_auroc_scorer,
    image_f1_scorer,
    make_anomaly_scorer,
    pixel_ap_scorer,
    pixel_auroc_scorer,
    pixel_f1_scorer,
    pro_scorer,
)

__all__ = [
    "AnomalyScorer",
    "f1_max",
    "get_scorer",
    "get_scorer_names",
    "image_ap",
    "image_ap_scorer",
    "image_auroc",
    "image_auroc_scorer",
    "image_f1_max",
    "image_f1_scorer",
    "make_anomaly_scorer",
    "pixel_ap",
    "pixel_ap_scorer",
    "pixel_auroc",
    "pixel_auroc_scorer",
    "pixel_f1_max",
    "pixel_f1_scorer",
    "pro_curve",
    "pro_score",
    "pro_scorer",
    "roc_curve",
]
