"""BLAS thread count following torch's setting, for numpy matrix products.

Why numpy products in the "cells" search: on the 2-core AMD EPYC machines this
project is measured on, numpy's OpenBLAS ran float32 products of its shapes (a few
hundred rows x 153 x a few hundred candidates) at 90-120 GFLOPS, torch's MKL at
45-65 GFLOPS (measured with ``timeit``, 2 threads). For skinny products against a
whole bank (a few rows x 16k) MKL was faster, so the exact search stays in torch.

Torch's thread setting is the project's single knob (dask workers and tests pin it),
so :func:`blas_threads` caps the BLAS pools to ``torch.get_num_threads()``.
"""

from __future__ import annotations

__all__ = ["blas_threads"]

_CONTROLLER = None


def blas_threads():
    """Context manager: BLAS libraries use at most ``torch.get_num_threads()`` threads.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.blas import blas_threads
    >>> with blas_threads():
    ...     float((np.ones((2, 3)) @ np.ones((3, 2)))[0, 0])
    3.0
    """
    global _CONTROLLER
    import torch

    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        # inspecting the loaded libraries costs ~1 ms: do it once
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=max(1, torch.get_num_threads()), user_api="blas")

