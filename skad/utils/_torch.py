"""The one place where skad turns ``device`` and ``random_state`` parameters into torch objects.

Every estimator and kernel resolves its ``device`` parameter with :func:`resolve_device`
(so "auto", "cpu", "cuda", "cuda:1" and ``torch.device`` mean the same everywhere) and
derives torch randomness from ``random_state`` with :func:`torch_generator` /
:func:`seed_from` after one ``check_random_state`` in ``fit`` (STYLE.md, convention 3).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["cpu_state_dict", "resolve_device", "seed_from", "torch_generator"]


def resolve_device(device=None, *tensors):
    """Torch device for a ``device`` parameter.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:<index>"}, torch.device or None
        ``"auto"``: CUDA when available, else the CPU. ``None``: the device of the first
        torch tensor among ``tensors`` (the CPU for numpy input), for kernels that
        follow their inputs.
    *tensors : arrays or tensors
        Inputs whose device ``None`` follows.

    Returns
    -------
    device : torch.device

    Raises
    ------
    ValueError
        An unknown device string, or CUDA requested where it is not available.

    Examples
    --------
    >>> from skad.utils import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if device is None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                return t.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or a torch.device; "
            f"got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {device!r} was requested but CUDA is not available here; use "
            "device='auto' or 'cpu'"
        )
    return dev


def seed_from(random_state) -> int:
    """One integer seed drawn from ``random_state`` (int, RandomState or None).

    Used where a library takes an integer seed (torch, pynndescent, faiss); draw it
    from the RandomState that ``check_random_state`` returned once in ``fit``.

    Examples
    --------
    >>> from skad.utils import seed_from
    >>> seed_from(0) == seed_from(0)
    True
    """
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def torch_generator(random_state, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded from ``random_state``.

    Examples
    --------
    >>> import torch
    >>> from skad.utils import torch_generator
    >>> a = torch.rand(2, generator=torch_generator(0))
    >>> bool((a == torch.rand(2, generator=torch_generator(0))).all())
    True
    """
    import torch

    gen = torch.Generator(device=resolve_device(device))
    gen.manual_seed(seed_from(random_state))
    return gen


def cpu_state_dict(module):
    """A copy of ``module``'s state dict on the CPU (what pickles store, so a model fitted
    on a GPU reloads on a CPU-only machine).

    Examples
    --------
    >>> import torch
    >>> from skad.utils._torch import cpu_state_dict
    >>> sorted(cpu_state_dict(torch.nn.Linear(2, 1)))
    ['bias', 'weight']
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
