"""The private scikit-learn API skad uses, imported in one place.

scikit-learn may move or change what it does not document. skad imports such names only
from here, so a change in a new release (or a difference with the oldest supported one,
scikit-learn 1.6.1, which CI tests too: ``.ci/run``) is fixed in this module, once.
Public scikit-learn API is imported directly where it is used.

What is re-exported, and where scikit-learn keeps it (1.6 to 1.9):

- parameter validation, from ``sklearn.utils._param_validation``: ``HasMethods``,
  ``Hidden``, ``Interval``, ``StrOptions`` (constraints in ``_parameter_constraints``;
  ``Hidden`` for the ``"deprecated"`` default of a renamed parameter) and
  ``InvalidParameterError`` (the error ``_validate_params`` raises; a ``ValueError``
  and ``TypeError`` subclass);
- ``_fit_context`` (``sklearn.base``): the decorator that validates an estimator's
  parameters (``_validate_params``, against ``_parameter_constraints``) before the
  decorated method runs, unless ``sklearn.config_context(skip_parameter_validation=True)``
  is set; ``partial_fit`` validates only while the estimator is unfitted (its first
  call). skad's one pattern: every public method that validates parameters is decorated
  with it, never calls ``_validate_params`` itself: ``fit`` and ``partial_fit``, and
  ``sample`` of the synthesisers (they have no ``fit``: each call validates).
  ``prefer_skip_nested_validation=True`` skips the validation of the estimators and
  scikit-learn functions called inside; skad sets it to False where the method fits
  estimators the user gave (the detectors: ``extractor``, ``synthesizer``, LOF's
  ``estimator``), so those are validated in turn, and True elsewhere;
- ``_name_estimators`` (``sklearn.pipeline``): step names as ``make_pipeline`` gives;
- ``_safe_indexing`` (``sklearn.utils``): row selection of arrays, lists and frames;
- ``_num_samples`` (``sklearn.utils.validation``): length of array-likes.
"""

from sklearn.base import _fit_context
from sklearn.pipeline import _name_estimators
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import (
    HasMethods,
    Hidden,
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import _num_samples

__all__ = [
    "HasMethods",
    "Hidden",
    "Interval",
    "InvalidParameterError",
    "StrOptions",
    "_fit_context",
    "_name_estimators",
    "_num_samples",
    "_safe_indexing",
]
