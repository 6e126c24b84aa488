"""Array -> torch tensor conversion shared by the kernels (one place for the checks)."""

from __future__ import annotations

import numpy as np

__all__ = ["as_tensor"]


def as_tensor(a, name="array", *, ndim=None, device=None, dtype=None):
    """``a`` (array-like or torch.Tensor) as a floating-point torch tensor.

    Arrays are shared with numpy where possible (``torch.from_numpy``): copied only
    when they are read-only, not C-contiguous or of another dtype than asked for.

    Parameters
    ----------
    a : array-like or torch.Tensor
    name : str, default="array"
        Parameter name used in error messages.
    ndim : int, optional
        Required number of dimensions.
    device : torch.device or str, optional
        Where the tensor should live (None: a tensor's own device, the CPU for arrays).
    dtype : torch.dtype, optional
        Convert to this dtype; None keeps floating-point dtypes and makes others float32.

    Returns
    -------
    tensor : torch.Tensor

    Raises
    ------
    TypeError
        If ``a`` is not numeric.
    ValueError
        If ``a`` does not have ``ndim`` dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels._convert import as_tensor
    >>> as_tensor(np.arange(3), "x").dtype
    torch.float32
    >>> as_tensor(np.zeros(3), "x", ndim=3)
    Traceback (most recent call last):
    ...
    ValueError: x: expected a 3-D array; got shape (3,)
    """
    import torch

    if isinstance(a, torch.Tensor):
        t = a.detach()
        if device is not None:
            t = t.to(device)
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name}: expected a numeric array; got dtype {arr.dtype}")
        if dtype is torch.float32:  # convert in numpy: one copy at most
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:  # torch.from_numpy needs writeable memory
            arr = arr.copy()
        t = torch.from_numpy(arr)
        if device is not None:
            t = t.to(device)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.float()
    if ndim is not None and t.ndim != ndim:
        shape = " (n, d)" if ndim == 2 else ""
        raise ValueError(f"{name}: expected a {ndim}-D array{shape}; got shape {tuple(t.shape)}")
    return t
