"""Weighted Gaussian mixtures and their sensitivity-sampled coresets (SMCC's center set).

- :func:`weighted_gmm`: expectation-maximisation for a Gaussian mixture whose samples
  carry weights (scikit-learn's ``GaussianMixture`` takes none). A weight acts as a
  repetition count: integer weights give the fit of the data set with each sample
  repeated that many times, and unit weights give ``GaussianMixture``'s fit (same
  k-means initialisation, same EM updates, same stopping rule).
- :func:`sensitivity_coreset`: the importance sampling of Lucic, Faulkner, Krause and
  Feldman (2017) that SMCC's Algorithm 2 follows: a k-means++ bicriteria solution
  ``B``, a sensitivity ``s(x)`` per point, ``m`` points drawn with probability
  ``q(x) = s(x) / sum s`` and weighted ``1 / (m q(x))``, so weighted sums over the
  coreset are unbiased estimates of sums over the data set.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp
from sklearn.utils import check_random_state

__all__ = ["sensitivity_coreset", "weighted_gmm"]

_EPS = 10 * np.finfo(np.float64).eps


def _estep(X, means, prec_chol, log_weights, chunk_rows=4096):
    """Log-probabilities ``log w_k + log N(x | mu_k, Sigma_k)`` of each sample, (n, k).

    ``prec_chol`` holds upper-triangular factors ``U`` with ``Sigma^-1 = U U^T``
    (scikit-learn's form); all components' ``(x - mu) U`` come from one product per
    chunk of rows.
    """
    n, d = X.shape
    k = means.shape[0]
    u_all = np.concatenate(list(prec_chol), axis=1)               # (d, k d)
    shift = np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)  # mu_k U_k
    log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    out = np.empty((n, k))
    for start in range(0, n, chunk_rows):
        y = (X[start:start + chunk_rows] @ u_all - shift).reshape(-1, k, d)
        out[start:start + chunk_rows] = -0.5 * np.einsum("ikd,ikd->ik", y, y)
    return out - 0.5 * d * np.log(2 * np.pi) + log_det + log_weights


def _mstep(X, w, resp, reg_covar):
    """Weighted M-step: mixture weights, means, precision Cholesky factors."""
    wr = resp * w[:, None]
    nk = wr.sum(axis=0) + _EPS
    means = (wr.T @ X) / nk[:, None]
    d = X.shape[1]
    prec_chol = np.empty((len(nk), d, d))
    for j in range(len(nk)):
        diff = X - means[j]
        cov = (wr[:, j, None] * diff).T @ diff / nk[j]
        cov.flat[:: d + 1] += reg_covar
        try:
            chol = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as exc:
            raise ValueError(
                "weighted_gmm: a component's covariance is not positive definite; "
                "increase reg_covar or use fewer components"
            ) from exc
        # U = (L^-1)^T: Sigma^-1 = L^-T L^-1 = U U^T
        prec_chol[j] = np.linalg.solve(chol, np.eye(d)).T
    return nk / nk.sum(), means, prec_chol


def weighted_gmm(X, sample_weight=None, n_components=10, *, means_init=None, reg_covar=1e-6,
                 max_iter=100, tol=1e-3, random_state=None):
    """Fit a full-covariance Gaussian mixture to weighted samples by EM.

    Parameters
    ----------
    X : array-like of shape (n, d)
    sample_weight : array-like of shape (n,), optional
        Non-negative weights (repetition counts); default all ones.
    n_components : int, default=10
    means_init : array-like of shape (n_components, d), optional
        Initial means (the first E-step starts from them with identity covariances and
        equal weights). Default: hard assignments of a weighted ``KMeans`` (one run,
        seeded from ``random_state``), as ``GaussianMixture(init_params="kmeans")``.
    reg_covar : float, default=1e-6
        Added to each covariance's diagonal.
    max_iter : int, default=100
    tol : float, default=1e-3
        EM stops when the weighted mean log-likelihood changes by less than ``tol``.
    random_state : int, RandomState instance or None

    Returns
    -------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, d)
    covariances : ndarray of shape (n_components, d, d)
    converged : bool
    n_iter : int

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gmm import weighted_gmm
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal(0, 1, (50, 2)), rng.normal(8, 1, (50, 2))]
    >>> w, mu, cov, ok, _ = weighted_gmm(X, np.ones(100), 2, random_state=0)
    >>> sorted(np.round(mu[:, 0]).tolist()), ok
    ([0.0, 8.0], True)
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X: expected a non-empty 2-D array (n, d); got shape {X.shape}")
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"sample_weight: expected {n} finite non-negative weights with a positive sum"
        )
    if not 1 <= n_components <= n:
        raise ValueError(f"n_components: expected an int in [1, {n}]; got {n_components}")
    rng = check_random_state(random_state)
    if means_init is None:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=n_components, n_init=1, random_state=rng).fit(
            X, sample_weight=w).labels_
        resp = np.zeros((n, n_components))
        resp[np.arange(n), labels] = 1.0
        log_w, means, prec_chol = _mstep(X, w, resp, reg_covar)
        log_w = np.log(log_w)
    else:
        means = np.asarray(means_init, dtype=np.float64)
        if means.shape != (n_components, d):
            raise ValueError(
                f"means_init: expected shape ({n_components}, {d}); got {means.shape}"
            )
        prec_chol = np.broadcast_to(np.eye(d), (n_components, d, d)).copy()
        log_w = np.full(n_components, -np.log(n_components))
    lower = -np.inf
    converged = False
    n_iter = 0
    wsum = w.sum()
    for n_iter in range(1, max_iter + 1):
        log_prob = _estep(X, means, prec_chol, log_w)
        log_norm = logsumexp(log_prob, axis=1)
        resp = np.exp(log_prob - log_norm[:, None])
        previous, lower = lower, float(w @ log_norm / wsum)
        weights, means, prec_chol = _mstep(X, w, resp, reg_covar)
        log_w = np.log(weights)
        if abs(lower - previous) < tol:
            converged = True
            break
    covariances = np.empty_like(prec_chol)
    for j in range(n_components):
        inv_u = np.linalg.inv(prec_chol[j])  # Sigma = (U U^T)^-1 = U^-T U^-1
        covariances[j] = inv_u.T @ inv_u
    return np.exp(log_w), means, covariances, converged, n_iter


def sensitivity_coreset(X, m, n_clusters=10, *, alpha=None, random_state=None,
                        device=None):
    """Importance-sampled weighted coreset of ``X`` for mixture fitting (Lucic et al. 2017).

    Parameters
    ----------
    X : array-like of shape (n, d)
    m : int
        Coreset size (points are drawn with replacement, so a point may repeat).
    n_clusters : int, default=10
        Size of the k-means++ bicriteria solution ``B``.
    alpha : float, optional
        Approximation factor of ``B``; default ``16 (log2 k + 2)``, the bound Lucic et
        al. give for k-means++ seeding.
    random_state : int, RandomState instance or None
    device : str or torch.device, optional
        Where the point-to-``B`` distances are computed.

    Returns
    -------
    indices : ndarray of int64, shape (m,)
        Rows of ``X`` drawn.
    weights : ndarray of float64, shape (m,)
        ``1 / (m q(x))``: ``weights @ f(X[indices])`` estimates ``sum_x f(x)``.

    Notes
    -----
    Sensitivity of ``x`` in the cluster ``X_j`` of its nearest point of ``B`` (SMCC's
    Algorithm 2; Lucic et al.'s Algorithm 1)::

        s(x) = alpha d(x, B)^2 + 2 alpha / |X_j| sum_{x' in X_j} d(x', B)^2
               + 2 / |X_j| sum_{x' in X} d(x', B)^2

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gmm import sensitivity_coreset
    >>> X = np.random.RandomState(0).normal(size=(1000, 4))
    >>> idx, w = sensitivity_coreset(X, 100, 5, random_state=0)
    >>> idx.shape, round(float(w.sum()) / 1000, 1)   # weights sum to about n
    ((100,), 1.0)
    """
    from sklearn.cluster import kmeans_plusplus

    from .knn import knn_search

    X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X: expected a non-empty 2-D array (n, d); got shape {X.shape}")
    n = len(X)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters: expected an int in [1, {n}]; got {n_clusters}")
    if m < 1:
        raise ValueError(f"m: expected a coreset size >= 1; got {m}")
    rng = check_random_state(random_state)
    if alpha is None:
        alpha = 16.0 * (math.log2(n_clusters) + 2.0) if n_clusters > 1 else 32.0
    Xf = np.ascontiguousarray(X, dtype=np.float32)
    centers, _ = kmeans_plusplus(Xf, n_clusters, random_state=rng)  # bicriteria B
    dist, nearest = knn_search(Xf, centers, 1, device=device)
    d2 = dist[:, 0].astype(np.float64) ** 2
    nearest = nearest[:, 0]
    size = np.bincount(nearest, minlength=n_clusters).astype(np.float64)
    cluster_d2 = np.bincount(nearest, weights=d2, minlength=n_clusters)
    s = (alpha * d2 + 2.0 * alpha * cluster_d2[nearest] / size[nearest]
         + 2.0 * d2.sum() / size[nearest])
    if s.sum() <= 0:  # every point on B: uniform sampling
        s = np.ones(n)
    q = s / s.sum()
    indices = rng.choice(n, size=int(m), replace=True, p=q)
    return indices.astype(np.int64), 1.0 / (m * q[indices])
