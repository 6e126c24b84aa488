"""Shared numeric kernels (plain functions, no estimator state).

The search engine:

- :mod:`.knn`: chunked exact k-nearest-neighbour search with group exclusion, and the
  one ranking every search uses (:func:`.knn.ranking_operand`, ``||b||^2 - 2 q.b``);
- :mod:`.ann`: an index choosing exact search, candidate-list cells, a faiss IVF index
  or a pynndescent graph;
- :mod:`.refine`: exact k-NN of a few rows against a fixed bank (one product, or
  pruning by lower bounds), to make approximate answers exact where needed, and exact
  k-NN restricted to allowed groups of bank rows by triangle-inequality pruning
  (SPADE's pixel level);
- :mod:`.reweight`: PatchCore's eq. 7 image-score reweighting.

Other kernels:

- :mod:`.coreset`: greedy k-center coreset with random projection (PatchCore);
- :mod:`.gaussian`: batched Gaussian fitting, Cholesky factors and their inverses,
  Mahalanobis distances;
- :mod:`.gmm`: weighted GMM EM and sensitivity coresets;
- :mod:`.kmeans`: Lloyd k-means and k-means with many centres cell by cell (N-pad's
  memory bank, linear in the rows);
- :mod:`.spatial`: windows and neighbour indices on a position grid, neighbourhood
  Gaussians (N-pad) and sub-position shifts of feature maps;
- :mod:`.maps`: anomaly-map upsampling and smoothing.

Array-to-tensor conversion for all of them: :func:`._convert.as_tensor`.
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

        # torch's transposing copy (threaded, blocked) is faster than numpy's
        # (doc/search.md); torch.from_numpy shares memory, nothing is copied
        out = np.empty((n * src.shape[2], c), X.dtype)
        torch.from_numpy(out).view(n, -1, c).copy_(torch.from_numpy(src).transpose(1, 2))
        return out
    return np.ascontiguousarray(src.transpose(0, 2, 1).reshape(-1, c))
