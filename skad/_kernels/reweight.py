"""PatchCore's image-score reweighting (Roth et al. 2021, eq. 7), shared by PatchCore
and PatchCluster (whose eq. 3 is the same weight)."""

from __future__ import annotations

import numpy as np

from .knn import knn_search

__all__ = ["reweight_factor", "reweighted_image_scores"]


def reweight_factor(u, support_distances):
    """``1 - exp(u) / sum_{m in N_b(m*)} exp(||m_test* - m||)`` per image (eq. 7).

    Computed as ``1 - exp(u - logsumexp(support_distances))`` (stable for large
    distances). With ``u = ||m_test* - m*||`` and ``m*`` in the support set (PatchCore),
    the factor is in [0, 1).

    Parameters
    ----------
    u : ndarray of shape (n,)
        The numerator's exponent: the distance of the image's top patch ``m_test*`` to
        its nearest bank row ``m*`` (PatchCore), or another reading (PatchCluster's
        ``reweight="mean"``: the top patch's score).
    support_distances : ndarray of shape (n, b)
        Distances of ``m_test*`` to the bank rows of ``N_b(m*)``.

    Returns
    -------
    factor : ndarray of float64, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.reweight import reweight_factor
    >>> np.round(reweight_factor(np.array([2.0]), np.array([[2.0, 3.0]])), 4).tolist()
    [0.7311]
    """
    d = np.asarray(support_distances, dtype=np.float64)
    d_max = d.max(axis=1)
    log_denominator = d_max + np.log(np.exp(d - d_max[:, None]).sum(axis=1))
    return 1.0 - np.exp(np.asarray(u, dtype=np.float64) - log_denominator)


def reweighted_image_scores(patch_scores, patch_features, nn_indices, bank, n_neighbors,
                            *, device=None, neighbors=None):
    """PatchCore's image score (Roth et al. 2021, eq. 7) from per-patch results.

    ``s = (1 - exp||m_test* - m*|| / sum_{m in N_b(m*)} exp||m_test* - m||) * s*``
    where ``m_test*`` is the image's patch with the largest score ``s*``, ``m*`` its
    nearest bank patch and ``N_b(m*)`` the ``b`` nearest bank patches of ``m*``
    (``m*`` itself included, as in the reference implementation).

    Parameters
    ----------
    patch_scores : ndarray of shape (n, P)
        Nearest-bank distance of each patch.
    patch_features : ndarray of shape (n, P, C)
    nn_indices : ndarray of int, shape (n, P)
        Bank row of each patch's nearest neighbour.
    bank : ndarray of shape (M, C)
    n_neighbors : int
        ``b``; clipped to the bank size.
    device : {"auto", "cpu", "cuda"}, torch.device or None
    neighbors : callable, optional
        ``neighbors(idx, b)`` -> the ``b`` nearest bank rows of bank rows ``idx``
        (``N_b(m*)``); default: :func:`~skad._kernels.knn.knn_search`.

    Returns
    -------
    scores : ndarray of float32, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.reweight import reweighted_image_scores
    >>> bank = np.array([[0.0], [1.0], [10.0]], np.float32)
    >>> feats = np.array([[[0.0], [3.0]]], np.float32)
    >>> s = reweighted_image_scores(np.array([[0.0, 2.0]]), feats, np.array([[0, 1]]), bank, 2)
    >>> np.round(s.astype(float), 4).tolist()      # 2 * (1 - e^2 / (e^2 + e^3))
    [1.4621]
    """
    n = patch_scores.shape[0]
    arg = np.argmax(patch_scores, axis=1)
    rows = np.arange(n)
    s_star = patch_scores[rows, arg]  # s* (eq. 6)
    m_test = patch_features[rows, arg]  # m_test*
    star = nn_indices[rows, arg]
    m_star = bank[star]  # m*
    b = int(min(n_neighbors, len(bank)))
    if neighbors is None:
        _, support = knn_search(m_star, bank, b, device=device)  # N_b(m*)
    else:
        support = neighbors(star, b)
    dist = np.linalg.norm(bank[support] - m_test[:, None, :], axis=2).astype(np.float64)
    d_star = np.linalg.norm(m_star - m_test, axis=1).astype(np.float64)
    return (reweight_factor(d_star, dist) * s_star).astype(np.float32)
