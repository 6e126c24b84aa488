"""Per-position Gaussians: batched fitting, Cholesky factors and Mahalanobis distances.

Everything is batched over P positions (PaDiM's per-location Gaussians, N-pad's
neighbourhood Gaussians) and chunked so peak memory is bounded. Inverses are never
formed with ``torch.linalg.inv``: a Cholesky factor and triangular solves are cheaper
and stable for these symmetric positive-definite matrices (and batched LU inversion
has aborted with few threads: ``doc/search.md``).
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from ..utils import resolve_device
from ._convert import as_tensor

__all__ = ["cholesky_factors", "fit_gaussians", "gaussians_from_moments",
           "inverse_cholesky_factors", "mahalanobis", "update_moments",
           "whitened_distances", "whitening_factors"]


def _lapack_threads(device):
    """Threads for batched LAPACK calls on small matrices (factorisations, inverses).

    torch loops over the batch and gives each small matrix (d ~ 150) to a threaded
    LAPACK routine: the threads only synchronise. On the CPU one thread is used (a
    batch of 784 Cholesky factorisations of 152 x 152 ran many times faster with 1
    thread than with 2 on the loaded 2-core machine: ``doc/npad.md``).
    """
    from ..utils._threads import thread_limits

    return thread_limits(1 if device.type == "cpu" else None)


def fit_gaussians(X, *, shrinkage=0.0, eps=0.01, chunk_size=None, working_memory=256,
                  device=None):
    """Mean and covariance at each of P positions from n samples.

    ``cov_p = (1 - shrinkage) * S_p + shrinkage * tr(S_p) / d * I + eps * I`` with
    ``S_p`` the unbiased sample covariance (``1 / (n - 1)``), as PaDiM (eps = 0.01).

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, P, d)
        n samples of d features at P positions.
    shrinkage : float in [0, 1], default=0.0
        Shrinkage towards the scaled identity (helps when n is small compared to d).
    eps : float >= 0, default=0.01
        Ridge added to the diagonal (PaDiM's regularisation).
    chunk_size : int, optional
        Positions per chunk; by default from ``working_memory``.
    working_memory : float, default=256
        MiB for one chunk: a chunk of ``c`` positions holds ``4 * n * c * d`` bytes of
        centred features plus its ``4 * c * d * d`` output.
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    means : ndarray of float32, shape (P, d)
    covariances : ndarray of float32, shape (P, d, d)
        Output memory ``4 * P * d^2`` bytes (784 positions x 152 channels: 72 MB;
        3136 x 550 as PaDiM-WRN50: 3.8 GB).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import fit_gaussians
    >>> X = np.random.default_rng(0).normal(size=(500, 3, 2))
    >>> mu, cov = fit_gaussians(X, eps=0.0)
    >>> mu.shape, cov.shape, bool(np.allclose(cov[0], np.cov(X[:, 0].T), atol=1e-5))
    ((3, 2), (3, 2, 2), True)
    """
    import torch

    _check_regularization(shrinkage, eps)
    dev = resolve_device(device, X)
    Xt = as_tensor(X, "X", ndim=3, device=dev)
    n, P, d = Xt.shape
    if n < 2:
        raise ValueError(f"X: expected at least 2 samples to estimate covariances; got {n} sample(s)")
    if chunk_size is None:
        per_pos = 4 * (n * d + d * d) * 2
        chunk_size = max(1, int(working_memory * 2**20 // per_pos))
    means = torch.empty((P, d), dtype=torch.float32, device=dev)
    covs = torch.empty((P, d, d), dtype=torch.float32, device=dev)
    eye = torch.eye(d, dtype=torch.float32, device=dev)
    with torch.inference_mode():
        for s in range(0, P, chunk_size):
            e = min(s + chunk_size, P)
            xc = Xt[:, s:e].to(torch.float32).permute(1, 0, 2)  # (c, n, d)
            mu = xc.mean(1)
            # contiguous: a (n, P, d) view of a channels-first map (d-stride P) makes
            # the product below take a strided path 50-80x slower
            xc = (xc - mu[:, None]).contiguous()
            S = torch.bmm(xc.transpose(1, 2), xc) / (n - 1)  # (c, d, d)
            means[s:e] = mu
            covs[s:e] = _regularize(S, shrinkage, eps, eye)
    return means.cpu().numpy(), covs.cpu().numpy()


def _check_regularization(shrinkage, eps):
    if not isinstance(shrinkage, Real) or not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage: expected a float in [0, 1]; got {shrinkage!r}")
    if not isinstance(eps, Real) or eps < 0:
        raise ValueError(f"eps: expected a float >= 0; got {eps!r}")


def _regularize(S, shrinkage, eps, eye):
    """``(1 - shrinkage) S + shrinkage tr(S) / d I + eps I`` for a stack of covariances."""
    if shrinkage > 0:
        tr = S.diagonal(dim1=1, dim2=2).mean(1)  # tr(S) / d
        S = (1.0 - shrinkage) * S + shrinkage * tr[:, None, None] * eye
    return S + eps * eye


def update_moments(moments, X, *, working_memory=256, device=None):
    """Running count, mean and co-moment at each of P positions, one chunk at a time.

    The pairwise update of Chan, Golub and LeVeque (1979): with chunk statistics
    ``n_b, mean_b, M2_b`` (``M2`` = sum of outer products of centred samples),
    ``delta = mean_b - mean_a``, ``mean = mean_a + delta n_b / n`` and
    ``M2 = M2_a + M2_b + delta delta^T n_a n_b / n``, in float64: the result equals
    the moments of all chunks at once up to rounding, whatever the chunking, and
    memory is ``8 P d (d + 1)`` bytes however many samples stream through.

    Parameters
    ----------
    moments : dict or None
        The state returned by the previous call (None to start).
    X : array-like or torch.Tensor of shape (n, P, d)
    working_memory : float, default=256
        MiB for one chunk of positions.
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    moments : dict with "n" (int), "mean" (P, d) and "m2" (P, d, d) float64 tensors

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import gaussians_from_moments, update_moments
    >>> X = np.random.default_rng(0).normal(size=(50, 3, 2))
    >>> m = update_moments(update_moments(None, X[:20]), X[20:])
    >>> mu, cov = gaussians_from_moments(m, eps=0.0)
    >>> bool(np.allclose(cov[1], np.cov(X[:, 1].T), atol=1e-6))
    True
    """
    import torch

    dev = resolve_device(device, X) if moments is None else moments["mean"].device
    Xt = as_tensor(X, "X", ndim=3, device=dev)
    n_b, P, d = Xt.shape
    if moments is None:
        moments = {"n": 0, "mean": torch.zeros((P, d), dtype=torch.float64, device=dev),
                   "m2": torch.zeros((P, d, d), dtype=torch.float64, device=dev)}
    elif tuple(moments["mean"].shape) != (P, d):
        raise ValueError(f"X: expected {tuple(moments['mean'].shape)} positions x features "
                         f"as in the earlier chunks; got {(P, d)}")
    n_a = moments["n"]
    n = n_a + n_b
    step = max(1, int(working_memory * 2**20 // (8 * (n_b * d + d * d) * 2)))
    with torch.inference_mode():
        for s in range(0, P, step):
            e = min(s + step, P)
            xc = Xt[:, s:e].to(torch.float64).permute(1, 0, 2)  # (c, n_b, d)
            mu_b = xc.mean(1)
            xc = xc - mu_b[:, None]
            delta = mu_b - moments["mean"][s:e]
            moments["m2"][s:e] += torch.bmm(xc.transpose(1, 2), xc) + (
                delta[:, :, None] * delta[:, None, :]) * (n_a * n_b / n)
            moments["mean"][s:e] += delta * (n_b / n)
    moments["n"] = n
    return moments


def gaussians_from_moments(moments, *, shrinkage=0.0, eps=0.01):
    """Means and regularised covariances (as :func:`fit_gaussians`) from
    :func:`update_moments`'s state; needs at least 2 samples.

    Returns
    -------
    means : ndarray of float32, shape (P, d)
    covariances : ndarray of float32, shape (P, d, d)
    """
    import torch

    _check_regularization(shrinkage, eps)
    n = moments["n"]
    if n < 2:
        raise ValueError(f"X: expected at least 2 samples to estimate covariances; got {n}")
    d = moments["mean"].shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=moments["mean"].device)
    cov = _regularize(moments["m2"] / (n - 1), shrinkage, eps, eye)
    return (moments["mean"].to(torch.float32).cpu().numpy(),
            cov.to(torch.float32).cpu().numpy())


def cholesky_factors(cov, *, dtype="float64", device=None):
    """Lower Cholesky factors ``L`` (``cov = L L^T``) of a batch of covariances.

    Parameters
    ----------
    cov : array-like or torch.Tensor of shape (P, d, d)
        Symmetric positive-definite matrices.
    dtype : {"float64", "float32"}, default="float64"
        Precision of the factorisation (float64 is safe for ill-conditioned
        covariances; the factors are returned as float32 either way).
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    chol : ndarray of float32, shape (P, d, d)

    Raises
    ------
    ValueError
        If a matrix is not positive definite (increase ``eps`` / shrinkage).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import cholesky_factors
    >>> cholesky_factors(np.array([[[4.0, 0.0], [0.0, 9.0]]])).tolist()
    [[[2.0, 0.0], [0.0, 3.0]]]
    """
    import torch

    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype: expected 'float64' or 'float32'; got {dtype!r}")
    dev = resolve_device(device, cov)
    C = as_tensor(cov, "cov", ndim=3, device=dev, dtype=getattr(torch, dtype))
    return _cholesky(C).to(torch.float32).cpu().numpy()


def _cholesky(C):
    """Lower Cholesky factors of a (P, d, d) tensor, in its dtype and on its device;
    ValueError naming the first matrix that is not positive definite."""
    import torch

    if C.shape[1] != C.shape[2]:
        raise ValueError(f"cov: expected square matrices (P, d, d); got {tuple(C.shape)}")
    with torch.inference_mode(), _lapack_threads(C.device):
        if C.device.type == "cpu" and C.dtype == torch.float64:
            L, info = _potrf_cpu(C)
        else:
            L, info = torch.linalg.cholesky_ex(C)
    bad = torch.nonzero(info).reshape(-1)
    if bad.numel():
        raise ValueError(
            f"cov: {bad.numel()} of {C.shape[0]} matrices are not positive definite "
            f"(first at position {int(bad[0])}); increase eps or shrinkage"
        )
    return L


def _potrf_cpu(C):
    """``torch.linalg.cholesky_ex`` of a float64 CPU batch, matrix by matrix through
    SciPy's LAPACK ``dpotrf``: on the 152 x 152 covariances of N-pad about 1.5x faster
    than torch's batched call on the 2-core machine (0.10 against 0.16 s for 784, one
    thread; the factors agree to 5e-16)."""
    import torch
    from scipy.linalg import lapack

    A = C.contiguous().numpy()
    L = np.empty_like(A)
    info = np.zeros(len(A), dtype=np.int32)
    for i in range(len(A)):
        L[i], info[i] = lapack.dpotrf(A[i], lower=1, clean=1)
    return torch.from_numpy(L), torch.from_numpy(info)


def _cholesky64(cov, device=None):
    """:func:`cholesky_factors` in float64, kept as a float64 tensor (not rounded)."""
    import torch

    dev = resolve_device(device, cov)
    return _cholesky(as_tensor(cov, "cov", ndim=3, device=dev, dtype=torch.float64))


def mahalanobis(X, means, chol, *, chunk_size=None, working_memory=256, device=None):
    """Mahalanobis distance of each sample at each position: ``||L_p^{-1}(x - mu_p)||``.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, P, d)
    means : array-like of shape (P, d)
    chol : array-like of shape (P, d, d)
        Lower Cholesky factors from :func:`cholesky_factors`.
    chunk_size : int, optional
        Samples per chunk; by default from ``working_memory``.
    working_memory : float, default=256
        MiB for one chunk: ``c`` samples need about ``3 * 8 * c * P * d`` bytes.
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    distances : ndarray of float32, shape (n, P)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import mahalanobis
    >>> chol = np.array([[[2.0, 0.0], [0.0, 1.0]]])
    >>> mahalanobis(np.array([[[2.0, 0.0]]]), np.zeros((1, 2)), chol).tolist()
    [[1.0]]
    """
    import torch

    dev = resolve_device(device, X)
    Xt = as_tensor(X, "X", ndim=3, device=dev)
    n, P, d = Xt.shape
    # float64 solves: rounding the result to float32 makes it independent of how the
    # samples are batched (float32 triangular solves differ by an ulp between batch
    # sizes), at twice the cost of a float32 solve.
    mu = torch.as_tensor(np.asarray(means, dtype=np.float64), device=dev)
    L = torch.as_tensor(np.asarray(chol, dtype=np.float64), device=dev)
    if mu.shape != (P, d) or L.shape != (P, d, d):
        raise ValueError(
            f"means/chol: expected shapes ({P}, {d}) and ({P}, {d}, {d}) for X of shape "
            f"{tuple(Xt.shape)}; got {tuple(mu.shape)} and {tuple(L.shape)}"
        )
    if chunk_size is None:
        chunk_size = max(1, int(working_memory * 2**20 // (24 * P * d)))
    out = torch.empty((n, P), dtype=torch.float32, device=dev)
    with torch.inference_mode():
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            diff = (Xt[s:e].to(torch.float64) - mu).permute(1, 2, 0).contiguous()  # (P, d, c)
            z = torch.linalg.solve_triangular(L, diff, upper=False)
            out[s:e] = z.square().sum(1).sqrt().T.to(torch.float32)
    return out.cpu().numpy()


def whitening_factors(chol, *, device=None):
    """Inverse Cholesky factors ``W = L^{-1}``: then ``||W_p (x - mu_p)||`` is the
    Mahalanobis distance to ``N(mu_p, L_p L_p^T)``.

    Scoring with ``W`` is one batched matrix product per block of samples
    (:func:`whitened_distances`) instead of a triangular solve, which is several
    times slower for the few right-hand sides of a batch of images. The inverse is
    computed in float64 and returned as float32 (lower triangular).

    Parameters
    ----------
    chol : array-like or torch.Tensor of shape (P, d, d)
        Lower Cholesky factors (:func:`cholesky_factors`).
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    whiten : ndarray of float32, shape (P, d, d)

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import whitening_factors
    >>> whitening_factors(np.array([[[2.0, 0.0], [1.0, 4.0]]])).tolist()
    [[[0.5, 0.0], [-0.125, 0.25]]]
    """
    import torch

    dev = resolve_device(device, chol)
    L = as_tensor(chol, "chol", ndim=3, device=dev, dtype=torch.float64)
    if L.shape[1] != L.shape[2]:
        raise ValueError(f"chol: expected square matrices (P, d, d); got {tuple(L.shape)}")
    eye = torch.eye(L.shape[1], dtype=torch.float64, device=dev).expand_as(L)
    with torch.inference_mode(), _lapack_threads(L.device):
        W = torch.linalg.solve_triangular(L, eye, upper=False)
    return W.to(torch.float32).cpu().numpy()


def inverse_cholesky_factors(cov, *, device=None):
    """Whitening factors ``W = L^{-1}`` of covariances ``cov = L L^T`` in one step.

    :func:`whitening_factors` of :func:`cholesky_factors`, without rounding ``L`` to
    float32 in between: the factorisation and the triangular inverse both run in
    float64 (more accurate for ill-conditioned covariances, and no conversions between
    the two); the result is float32.

    Parameters
    ----------
    cov : array-like or torch.Tensor of shape (P, d, d)
        Symmetric positive-definite matrices.
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    whiten : torch.Tensor of float32, shape (P, d, d), on the CPU
        Lower triangular.

    Raises
    ------
    ValueError
        If a matrix is not positive definite (increase ``eps`` / shrinkage).

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import inverse_cholesky_factors
    >>> inverse_cholesky_factors(np.array([[[4.0, 2.0], [2.0, 17.0]]])).tolist()
    [[[0.5, 0.0], [-0.125, 0.25]]]
    """
    import torch

    L = _cholesky64(cov, device)
    eye = torch.eye(L.shape[1], dtype=torch.float64, device=L.device).expand_as(L)
    with torch.inference_mode(), _lapack_threads(L.device):
        W = torch.linalg.solve_triangular(L, eye, upper=False)
    return W.to(torch.float32).cpu()


def whitened_distances(X, means, whiten, *, working_memory=256, device=None):
    """Mahalanobis distance of each sample at each position: ``||W_p (x - mu_p)||``.

    The same distances as :func:`mahalanobis` (to float32 rounding) from the inverse
    factors of :func:`whitening_factors`: one float32 batched product over the
    positions for a whole block of samples.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, P, d)
    means : array-like or torch.Tensor of shape (P, d)
    whiten : array-like or torch.Tensor of shape (P, d, d)
    working_memory : float, default=256
        MiB for one block: ``c`` samples need about ``8 * c * P * d`` bytes.
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    distances : torch.Tensor of float32, shape (n, P), on ``device``

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.gaussian import whitened_distances, whitening_factors
    >>> W = whitening_factors(np.array([[[2.0, 0.0], [0.0, 1.0]]]))
    >>> whitened_distances(np.array([[[2.0, 0.0]]]), np.zeros((1, 2)), W).tolist()
    [[1.0]]
    """
    import torch

    dev = resolve_device(device, X)
    Xt = as_tensor(X, "X", ndim=3, device=dev, dtype=torch.float32)
    n, P, d = Xt.shape
    mu = as_tensor(means, "means", ndim=2, device=dev, dtype=torch.float32)
    W = as_tensor(whiten, "whiten", ndim=3, device=dev, dtype=torch.float32)
    if mu.shape != (P, d) or W.shape != (P, d, d):
        raise ValueError(
            f"means/whiten: expected shapes ({P}, {d}) and ({P}, {d}, {d}) for X of shape "
            f"{tuple(Xt.shape)}; got {tuple(mu.shape)} and {tuple(W.shape)}"
        )
    step = max(1, int(working_memory * 2**20 // (8 * P * d)))
    out = torch.empty((n, P), dtype=torch.float32, device=dev)
    with torch.inference_mode():
        for s in range(0, n, step):
            e = min(s + step, n)
            # centred first (no cancellation); z = (x - mu) W^T, (P, c, d): each row's
            # norm is over contiguous memory
            diff = (Xt[s:e] - mu).transpose(0, 1)
            if diff.stride(2) != 1:  # a strided product is 50-80x slower (fit_gaussians)
                diff = diff.contiguous()
            z = torch.bmm(diff, W.transpose(1, 2))
            out[s:e] = z.square_().sum(2).sqrt_().T
    return out
