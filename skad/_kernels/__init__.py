"""Shared numeric kernels (plain functions, no estimator state).

- :mod:`.knn`: chunked exact k-nearest-neighbour search with group exclusion;
- :mod:`.ann`: an index choosing exact search, a faiss IVF index or a pynndescent graph;
- :mod:`.coreset`: greedy k-center coreset with random projection (PatchCore);
- :mod:`.gaussian`: batched Gaussian fitting, Cholesky factors, Mahalanobis distances;
- :mod:`.maps`: anomaly-map upsampling and smoothing.
"""

import numpy as np


def patch_rows(X):
    """Patch tensor ``(n, C, h, w)`` -> one row per patch ``(n * h * w, C)`` (C-contiguous).

    Rows are ordered image by image, then row-major over positions, so
    ``rows.reshape(n, h, w, C)`` recovers the layout and ``np.arange(n * h * w) // (h * w)``
    is each row's image index.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels import patch_rows
    >>> patch_rows(np.zeros((2, 5, 3, 4), np.float32)).shape
    (24, 5)
    """
    X = np.asarray(X)
    n, c = X.shape[:2]
    src = X.reshape(n, c, -1)
    if (X.dtype in (np.float32, np.float64) and X.flags.writeable and src.size
            and min(src.strides) >= 0):  # what torch.from_numpy accepts
        import torch

        # torch's transposing copy (threaded, blocked) is ~2x numpy's on the bottle
        # test set (65k rows x 152); torch.from_numpy shares memory, nothing is copied
        out = np.empty((n * src.shape[2], c), X.dtype)
        torch.from_numpy(out).view(n, -1, c).copy_(torch.from_numpy(src).transpose(1, 2))
        return out
    return np.ascontiguousarray(src.transpose(0, 2, 1).reshape(-1, c))
