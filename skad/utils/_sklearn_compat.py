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
- ``_name_estimators`` (``sklearn.pipeline``): step names as ``make_pipeline`` gives;
- ``_safe_indexing`` (``sklearn.utils``): row selection of arrays, lists and frames;
- ``_num_samples`` (``sklearn.utils.validation``): length of array-likes.
"""

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
    "_name_estimators",
    "_num_samples",
    "_safe_indexing",
]
