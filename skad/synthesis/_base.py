"""The ``sample`` loop shared by the synthesisers: validation, seeding, batching."""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

from ..utils._sklearn_compat import _fit_context
from ..utils.validation import check_images
from ._sources import resolve_source

# Images decoded per batch when X is a list of paths (bounds memory, not results).
_BATCH = 16


def _check_range(value, name, low, high, *, what):
    """A pair ``(a, b)`` with ``low <= a <= b <= high``; ValueError naming ``name``."""
    try:
        a, b = (float(v) for v in value)
        ok = low <= a <= b <= high and not isinstance(value, str)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: expected (low, high) with {low} <= low <= high <= {high} ({what}); "
            f"got {value!r}"
        )
    return a, b


def _check_choices(value, name, allowed):
    """A non-empty tuple of names from ``allowed`` (a single string is one choice)."""
    choices = (value,) if isinstance(value, str) else value
    try:
        choices = tuple(choices)
    except TypeError:
        choices = None
    if not choices or any(c not in allowed for c in choices):
        raise ValueError(
            f"{name}: expected a non-empty sequence of names from {allowed}; got {value!r}"
        )
    return choices


class BaseSynthesizer(BaseEstimator):
    """Base of the defect synthesisers: ``sample(X, *, rng=None) -> (images, masks)``.

    Subclasses implement ``_check_params() -> dict`` (validated settings) and
    ``_synthesize(image, rng, settings) -> (image, mask)`` for one float32
    ``(H, W, 3)`` image.
    """

    # a synthesiser has no fit: every call validates the parameters (_sklearn_compat)
    @_fit_context(prefer_skip_nested_validation=True)
    def sample(self, X, *, rng=None):
        """Synthesise one defective version of every image of ``X``.

        Parameters
        ----------
        X : array-like of shape (n, H, W, 3) or (n, H, W), or list of image paths
            Normal images: uint8 0-255 or float 0-1, or files (decoded
            batch by batch; all of one size). Never modified.
        rng : int, RandomState instance or None, default=None
            Random source for this call. None: ``random_state``, through
            :func:`sklearn.utils.check_random_state` on every call, so an int
            ``random_state`` gives the same images and masks each time; training loops
            pass their own ``RandomState`` to draw new defects at every step.

        Returns
        -------
        images : ndarray of float32, shape (n, H, W, 3)
            Values in [0, 1].
        masks : ndarray of float32, shape (n, H, W)
            1 where the defect was synthesised, 0 elsewhere; every pixel that differs
            from the input lies inside the mask.
        """
        settings = self._check_params()
        images = check_images(X)
        if rng is None:
            rng = check_random_state(self.random_state)
        else:
            try:
                rng = check_random_state(rng)
            except ValueError as exc:
                raise ValueError(
                    f"rng: expected None, an int seed or a numpy.random.RandomState; got "
                    f"{type(rng).__name__}"
                ) from exc
        n = len(images)
        h, w = images.image_size
        out = np.empty((n, h, w, 3), dtype=np.float32)
        masks = np.empty((n, h, w), dtype=np.float32)
        for sl, batch in images.iter_batches(_BATCH):
            if batch.shape[1:3] != (h, w):
                raise ValueError(
                    f"X: images of different sizes ({batch.shape[1]}x{batch.shape[2]} after "
                    f"{h}x{w}); resize them to one size first"
                )
            for i, img in zip(range(sl.start, sl.stop), batch):
                out[i], masks[i] = self._synthesize(img, rng, settings)
        return out, masks

    def _source(self, name):
        """The content source for parameter ``name``, cached while the parameter is
        unchanged (a folder is listed once, not on every training step)."""
        value = getattr(self, name)
        key = (name, os.fspath(value) if isinstance(value, (str, os.PathLike)) else id(value))
        cache = self.__dict__.setdefault("_source_cache", {})
        if cache.get(name, (None,))[0] != key:
            cache[name] = (key, resolve_source(value, name))
        return cache[name][1]

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the live cache stays
        state.pop("_source_cache", None)
        return state
