"""The ``device`` contract of detectors that compute with torch, written once."""

from __future__ import annotations

import torch

from ..utils import resolve_device
from ..utils._loading import loaded_device

__all__ = ["DeviceMixin"]


class DeviceMixin:
    """``device`` parameter -> fitted ``device_``, kept usable across pickling.

    A detector with this mixin takes ``device`` ({"auto", "cpu", "cuda",
    "cuda:<index>"} or a ``torch.device``, as
    :class:`~skad.features.PatchFeatureExtractor`), declares ``_device_constraint``
    for it, calls :meth:`_fit_device` in ``_fit`` (the resolver's clear error for
    an unknown device or CUDA requested without CUDA) and computes on ``device_`` at
    score time, never resolving ``device`` again. Fitted arrays are numpy, so a model
    pickled on a GPU reloads on a CPU-only machine; ``device_`` then becomes the CPU
    (with a warning).
    """

    #: ``_parameter_constraints`` entry of ``device``
    _device_constraint = {"device": [str, torch.device]}

    def _fit_device(self):
        """Resolve ``device`` once, record it as ``device_`` and return it."""
        self.device_ = resolve_device(self.device)
        return self.device_

    def __setstate__(self, state):
        state = dict(state)
        if "device_" in state:
            state["device_"] = loaded_device(state["device_"], type(self).__name__)
        super().__setstate__(state)
