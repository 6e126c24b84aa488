"""Warnings that point at the user's line, however deep in skad they are raised."""

from __future__ import annotations

import os
import sys
import warnings

_SKIPPED = None


def _skipped_dirs():
    global _SKIPPED
    if _SKIPPED is None:
        import sklearn

        import skad

        _SKIPPED = tuple(os.path.dirname(m.__file__) + os.sep for m in (skad, sklearn))
    return _SKIPPED


def user_stacklevel():
    """``stacklevel`` for :func:`warnings.warn` naming the first frame outside skad.

    Frames of skad and of scikit-learn (``fit`` runs inside scikit-learn's
    ``_fit_context`` wrapper, and maybe a ``Pipeline``) are skipped, so a warning raised
    during ``det.fit(X)`` names the line that called ``fit``, at whatever depth of
    skad's helpers it was raised (the pattern of pandas' ``find_stack_level``).

    Examples
    --------
    >>> from skad.utils._warnings import user_stacklevel
    >>> user_stacklevel()  # called from outside skad: its caller is the user
    1
    """
    skipped = _skipped_dirs()
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message, category=UserWarning):
    """:func:`warnings.warn` at the first caller outside skad and scikit-learn."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
