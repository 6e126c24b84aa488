"""Fitted torch state on the machine that unpickles it.

A model fitted on a GPU must reload, and score, on a machine without one (DESIGN.md:
"Fitted estimators pickle with joblib and load on a machine without a GPU"). Fitted
arrays are numpy or moved to the CPU when pickled; what is left is the device recorded
at fit time, which :func:`loaded_device` maps to one this machine has.
"""

from __future__ import annotations

import warnings

__all__ = ["loaded_device"]


def loaded_device(device, owner=None):
    """The device to compute on after unpickling: ``device``, or the CPU without CUDA.

    Parameters
    ----------
    device : torch.device, str or None
        The device recorded in fit (``device_``). None and "auto" are returned as
        they are (they are resolved where they are used).
    owner : str, optional
        Name of the fitted object, for the warning; None: fall back silently (for an
        object owned by an estimator that warns itself).

    Returns
    -------
    device : torch.device, None or "auto"

    Examples
    --------
    >>> from skad.utils._loading import loaded_device
    >>> loaded_device("cpu")
    device(type='cpu')
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return device
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        if owner is not None:
            warnings.warn(
                f"{owner} was fitted on {dev} but CUDA is not available here; it runs "
                "on the CPU", UserWarning, stacklevel=3,
            )
        return torch.device("cpu")
    return dev
