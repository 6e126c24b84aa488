"""Mahalanobis distances of shifted and windowed features through taps (N-pad scoring).

N-pad scores every position ``p`` of a bilinearly shifted copy ``x^s`` of the feature
map against the Gaussians of the positions ``q = p + o`` of a small window (module C),
for several shifts ``s`` (module D), and the 3x3 average of ``x^s`` against the own
position's Gaussian (module B). Done literally, that is one whitening product
``W_q (y - mu_q)`` (``d x d``) per shift, offset and position.

Why the tap form here is exact. A bilinear shift with replicated borders makes every
shifted feature a fixed combination of at most four unshifted ones,
``x^s_p = sum_t a_t x_{r_t}`` with ``sum_t a_t = 1`` (at the border the taps fall on
clamped, in-map positions), and a 3x3 average of ``x^s`` is a combination of at most
16. Because the weights sum to 1,
``W_q (x^s_p - mu_q) = sum_t a_t W_q (x_{r_t} - mu_q)``: with module C the whitened
vectors ``W_q (x_r - mu_q)`` of the few distinct source positions ``r`` around ``q``
(9 for the default 2x2 window and diagonal shifts below one position) are computed
once, and every (shift, offset) pair is a 4-term combination of them -- 9 products
instead of ``n_shifts x n_offsets`` (20 by default). What changes is only the order
of float32 additions.

The work runs in one compiled loop over positions (:func:`whitened_tap_norms`): for
one ``q`` the rows of all images are gathered into a block that stays in cache, the
lower-triangular ``W_q`` multiplies them in place through BLAS ``strmm`` (half the
multiply-adds of a full product; scipy's BLAS, called from numba without the GIL) and
the combinations and norms are taken while the block is still in cache.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

__all__ = ["pooled_shift_taps", "shift_taps", "whitened_tap_norms", "window_shift_taps"]

#: rows per strmm call (a block of about 150 rows x d ran fastest per row)
_ROWS_PER_CALL = 160


# --------------------------------------------------------------------------- taps
def _axis_taps(size, shift):
    """Source rows and weights of one axis of :func:`~skad._kernels.spatial.shift_maps`.

    ``grid_sample(align_corners=True, padding_mode="border")`` in float32: the grid
    coordinate ``2 (y - s) / (size - 1) - 1``, back to positions, clipped to
    ``[0, size - 1]``; taps ``floor(u)`` and the next row (clamped; weight 0 there).
    """
    ys = np.arange(size, dtype=np.float32) - np.float32(shift)
    if size > 1:
        g = np.float32(2.0) * ys / np.float32(size - 1) - np.float32(1.0)
        half = np.float32((size - 1) / 2.0)
        u = np.clip(g * half + half, np.float32(0.0), np.float32(size - 1))
    else:
        u = np.zeros(size, np.float32)
    lo = np.floor(u)
    frac = (u - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    return lo, np.minimum(lo + 1, size - 1), (np.float32(1.0) - frac), frac


@lru_cache(maxsize=64)
def _shift_taps_cached(h, w, sy, sx):
    if sy == 0.0 and sx == 0.0:
        idx = np.zeros((h * w, 4), np.int64)
        idx[:, 0] = np.arange(h * w)
        wts = np.zeros((h * w, 4), np.float32)
        wts[:, 0] = 1.0
        return idx, wts
    y0, y1, n_, s_ = _axis_taps(h, sy)
    x0, x1, e_, w_ = _axis_taps(w, sx)
    idx = np.stack([
        (y0[:, None] * w + x0[None]).ravel(), (y0[:, None] * w + x1[None]).ravel(),
        (y1[:, None] * w + x0[None]).ravel(), (y1[:, None] * w + x1[None]).ravel()], 1)
    wts = np.stack([
        (n_[:, None] * e_[None]).ravel(), (n_[:, None] * w_[None]).ravel(),
        (s_[:, None] * e_[None]).ravel(), (s_[:, None] * w_[None]).ravel()], 1)
    return idx, wts.astype(np.float32)


def shift_taps(h, w, shift):
    """Taps of a bilinear shift: ``x^s_p = sum_t wts[p, t] * x[idx[p, t]]``.

    The same translation as :func:`~skad._kernels.spatial.shift_maps` (replicated
    borders), as four (flat source position, weight) pairs per output position.

    Parameters
    ----------
    h, w : int
        Map size.
    shift : (float, float)
        ``(sy, sx)`` in positions.

    Returns
    -------
    idx : ndarray of int64, shape (h * w, 4)
        Flat source positions (in the map; weight 0 where bilinear reads past it).
    wts : ndarray of float32, shape (h * w, 4)
        Weights, summing to 1 for each position.

    Examples
    --------
    >>> from skad._kernels.taps import shift_taps
    >>> idx, wts = shift_taps(1, 4, (0.0, 0.5))
    >>> idx[1].tolist(), [round(float(v), 4) for v in wts[1]]
    ([0, 1, 0, 1], [0.5, 0.5, 0.0, 0.0])
    """
    idx, wts = _shift_taps_cached(int(h), int(w), float(shift[0]), float(shift[1]))
    return idx.copy(), wts.copy()


def _merge_rows(idx, wts):
    """Per row, the distinct source indices and their summed weights (padded)."""
    order = np.argsort(idx, axis=1, kind="stable")
    si = np.take_along_axis(idx, order, 1)
    sw = np.take_along_axis(wts, order, 1)
    new = np.ones(si.shape, bool)
    new[:, 1:] = si[:, 1:] != si[:, :-1]
    col = np.cumsum(new, axis=1) - 1
    width = int(col.max()) + 1 if col.size else 1
    rows = np.broadcast_to(np.arange(len(si))[:, None], si.shape)
    out_i = np.zeros((len(si), width), np.int64)
    out_w = np.zeros((len(si), width), np.float32)
    out_i[rows[new], col[new]] = si[new]
    np.add.at(out_w, (rows, col), sw)
    return out_i, out_w


@lru_cache(maxsize=32)
def _pooled_cached(h, w, shifts):
    from .spatial import neighbour_index, window_offsets

    nb, ok = neighbour_index(h, w, window_offsets(3))
    nb, ok = nb.numpy(), ok.numpy()  # (9, P): the 3x3 window, in-map flags
    count = ok.sum(0).astype(np.float32)  # avg_pool2d without the zero padding
    pre_i, pre_w = [], []
    for s in shifts:
        idx, wts = _shift_taps_cached(h, w, *s)
        cand_i = idx[nb.T].reshape(h * w, -1)  # (P, 9 * 4)
        cand_w = (wts[nb.T] * (ok.T / count[:, None])[:, :, None]).reshape(h * w, -1)
        mi, mw = _merge_rows(cand_i, cand_w.astype(np.float32))
        pre_i.append(mi)
        pre_w.append(mw)
    width = max(a.shape[1] for a in pre_i)
    P, m = h * w, len(shifts)
    out_i = np.zeros((P, m, width), np.int64)
    out_w = np.zeros((P, m, width), np.float32)
    for k, (a, b) in enumerate(zip(pre_i, pre_w)):
        out_i[:, k, :a.shape[1]] = a
        out_w[:, k, :b.shape[1]] = b
    n_rows = np.full(P, m, np.int64)
    post_k = np.broadcast_to(np.arange(m)[None, :, None], (P, m, 1)).copy()
    post_w = np.ones((P, m, 1), np.float32)
    valid = np.ones((P, m), bool)
    return out_i, out_w, n_rows, post_k, post_w, valid


def pooled_shift_taps(h, w, shifts):
    """Taps of N-pad's module B rows: the 3x3 average of each shifted map at each position.

    Row ``k`` of position ``q`` is ``avg_pool3(x^{s_k})_q = sum_t pre_w[q, k, t] *
    x[pre_idx[q, k, t]]`` (border positions average their in-map neighbours, as
    :func:`~skad.features.pooling.local_average_pool`); each row is then its own
    combination (``post_k[q, c] = [c]``).

    Parameters
    ----------
    h, w : int
    shifts : sequence of (float, float)

    Returns
    -------
    pre_idx, pre_w, n_rows, post_k, post_w, valid
        The arguments of :func:`whitened_tap_norms` after ``x, means, whiten``.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.taps import pooled_shift_taps
    >>> pre_idx, pre_w = pooled_shift_taps(3, 3, [(0.0, 0.0)])[:2]
    >>> sorted(pre_idx[4, 0].tolist()), bool(np.allclose(pre_w[4, 0], 1 / 9))
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], True)
    """
    key = tuple((float(a), float(b)) for a, b in shifts)
    return tuple(a.copy() for a in _pooled_cached(int(h), int(w), key))


@lru_cache(maxsize=32)
def _window_cached(h, w, shifts, offsets):
    P, m, n_off = h * w, len(shifts), len(offsets)
    ys = np.repeat(np.arange(h), w)
    xs = np.tile(np.arange(w), h)
    # combination c = (shift k, offset o): the feature x^{s_k} at p = q - o scored
    # against q's Gaussian; invalid when p leaves the map
    src_i = np.zeros((P, m, n_off, 4), np.int64)
    src_w = np.zeros((P, m, n_off, 4), np.float32)
    valid = np.zeros((P, m, n_off), bool)
    for j, (dy, dx) in enumerate(offsets):
        py, px = ys - dy, xs - dx
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        p = np.clip(py, 0, h - 1) * w + np.clip(px, 0, w - 1)
        for k, s in enumerate(shifts):
            idx, wts = _shift_taps_cached(h, w, *s)
            src_i[:, k, j] = idx[p]
            src_w[:, k, j] = wts[p] * ok[:, None]
            valid[:, k, j] = ok
    src_i = src_i.reshape(P, m * n_off * 4)
    src_w = src_w.reshape(P, m * n_off * 4)
    # the distinct sources of each q (taps of weight 0 need no row: pointed at row 0)
    used = src_w != 0
    key = np.where(used, src_i, P)  # P sorts after every real source
    srt = np.sort(key, axis=1)
    new = np.ones(srt.shape, bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    new &= srt < P
    n_rows = new.sum(1).astype(np.int64)
    width = max(1, int(n_rows.max()))
    pre_idx = np.zeros((P, width, 1), np.int64)
    rows = np.broadcast_to(np.arange(P)[:, None], srt.shape)
    col = np.cumsum(new, axis=1) - 1
    pre_idx[rows[new], col[new], 0] = srt[new]
    pre_w = np.zeros((P, width, 1), np.float32)
    pre_w[np.arange(width)[None, :] < n_rows[:, None], 0] = 1.0
    # each tap's row: its source's rank among the distinct sources of q
    rank = np.empty_like(src_i)
    for q in range(P):
        rank[q] = np.searchsorted(pre_idx[q, :n_rows[q], 0], src_i[q])
    post_k = np.where(used, rank, 0).reshape(P, m * n_off, 4)
    post_w = src_w.reshape(P, m * n_off, 4)
    return pre_idx, pre_w, n_rows, post_k, post_w, valid.reshape(P, m * n_off)


def window_shift_taps(h, w, shifts, offsets):
    """Taps of N-pad's module A with C and D: every (shift, offset) pair at every ``q``.

    Combination ``c = k * len(offsets) + j`` of position ``q`` is the shifted feature
    ``x^{s_k}_{q - o_j}`` (``valid[q, c]`` is False where ``q - o_j`` leaves the map),
    written over the distinct unshifted source positions ``r`` around ``q`` (the rows,
    ``pre_idx[q, :n_rows[q], 0]``) as ``sum_t post_w[q, c, t] * x[r_{post_k[q, c, t]}]``.

    Parameters
    ----------
    h, w : int
    shifts : sequence of (float, float)
    offsets : sequence of (int, int)

    Returns
    -------
    pre_idx, pre_w, n_rows, post_k, post_w, valid
        The arguments of :func:`whitened_tap_norms` after ``x, means, whiten``.

    Examples
    --------
    >>> from skad._kernels.taps import window_shift_taps
    >>> n_rows = window_shift_taps(5, 5, [(0.0, 0.0), (0.5, 0.5)], [(0, 0), (0, 1)])[2]
    >>> int(n_rows.max())   # sources q - (0..1, 0..2) in the interior
    6
    """
    key = tuple((float(a), float(b)) for a, b in shifts)
    off = tuple((int(a), int(b)) for a, b in offsets)
    return tuple(a.copy() for a in _window_cached(int(h), int(w), key, off))


# --------------------------------------------------------------------------- kernel
_KERNEL = None


def _strmm_pointer():
    """scipy's BLAS ``strmm`` as a ctypes function numba can call without the GIL."""
    import scipy.linalg.cython_blas as cython_blas

    capsule = cython_blas.__pyx_capi__["strmm"]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 11))(address)


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from numba import njit, prange

    @njit(parallel=True, fastmath={"reassoc", "contract", "arcp", "nsz"}, cache=True)
    def norms(trmm, x, mu, whiten, pre_idx, pre_w, n_rows, post_k, post_w, valid, out,
              flags, alpha, rows_per_call):
        n, _, d = x.shape
        n_comb, n_pre, n_post = post_k.shape[1], pre_idx.shape[2], post_k.shape[2]
        for q in prange(mu.shape[0]):
            k_rows = n_rows[q]
            m = n * k_rows
            y = np.empty((m, d), np.float32)
            for i in range(n):
                for k in range(k_rows):
                    row = y[i * k_rows + k]
                    row[:] = 0.0
                    for t in range(n_pre):
                        a = pre_w[q, k, t]
                        if a != 0.0:
                            src = x[i, pre_idx[q, k, t]]
                            for j in range(d):
                                row[j] += a * src[j]
                    for j in range(d):
                        row[j] -= mu[q, j]
            # y <- y W_q^T in place: y is (m, d) C-order = y^T (d, m) to Fortran BLAS,
            # and W_q (C-order) = W_q^T upper-triangular to it: B := A^T B
            dims = np.empty(3, np.int32)
            dims[0] = d
            for r0 in range(0, m, rows_per_call):
                dims[1] = min(rows_per_call, m - r0)
                trmm(flags[0:].ctypes.data, flags[1:].ctypes.data, flags[2:].ctypes.data,
                     flags[3:].ctypes.data, dims[0:].ctypes.data, dims[1:].ctypes.data,
                     alpha.ctypes.data, whiten[q].ctypes.data, dims[0:].ctypes.data,
                     y[r0:].ctypes.data, dims[0:].ctypes.data)
            v = np.empty(d, np.float32)
            for c in range(n_comb):
                if not valid[q, c]:
                    for i in range(n):
                        out[c, i, q] = np.inf
                    continue
                for i in range(n):
                    v[:] = 0.0
                    for t in range(n_post):
                        a = post_w[q, c, t]
                        if a != 0.0:
                            z = y[i * k_rows + post_k[q, c, t]]
                            for j in range(d):
                                v[j] += a * z[j]
                    acc = np.float32(0.0)
                    for j in range(d):
                        acc += v[j] * v[j]
                    out[c, i, q] = np.sqrt(acc)

    _KERNEL = (norms, _strmm_pointer())
    return _KERNEL


def whitened_tap_norms(x, means, whiten, pre_idx, pre_w, n_rows, post_k, post_w, valid,
                       *, n_threads=1):
    """Norms ``||sum_t post_w W_q (y_{post_k} - mu_q)||`` of tap-built rows, per position.

    For each position ``q`` and image ``i``: rows
    ``y_k = sum_t pre_w[q, k, t] * x[i, pre_idx[q, k, t]]`` (``k < n_rows[q]``),
    whitened ``z_k = W_q (y_k - mu_q)`` with the lower-triangular ``W_q``, and for each
    combination ``c`` the norm of ``sum_t post_w[q, c, t] * z_{post_k[q, c, t]}``. When
    ``post_w`` sums to 1 this is ``||W_q (sum_t post_w y - mu_q)||``, the Mahalanobis
    distance of the combined row (see the module docstring). CPU only (numba + BLAS).

    Parameters
    ----------
    x : ndarray of float32, shape (n, P, d)
        Unshifted features, channels last.
    means : ndarray of float32, shape (P, d)
    whiten : ndarray of float32, shape (P, d, d)
        Lower-triangular ``W_q`` (the upper triangle is ignored).
    pre_idx, pre_w, n_rows, post_k, post_w, valid
        From :func:`window_shift_taps` or :func:`pooled_shift_taps`.
    n_threads : int, default=1
        Threads over positions.

    Returns
    -------
    norms : ndarray of float32, shape (n_combinations, n, P)
        ``inf`` where ``valid`` is False.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.taps import pooled_shift_taps, whitened_tap_norms
    >>> x = np.ones((1, 4, 2), np.float32)
    >>> taps = pooled_shift_taps(2, 2, [(0.0, 0.0)])
    >>> W = np.broadcast_to(np.eye(2, dtype=np.float32), (4, 2, 2))
    >>> out = whitened_tap_norms(x, np.zeros((4, 2), np.float32), W, *taps)
    >>> [round(float(v), 4) for v in out[0, 0]]
    [1.4142, 1.4142, 1.4142, 1.4142]
    """
    import numba

    from ..utils._threads import _pools

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, P, d = x.shape
    means = np.ascontiguousarray(means, dtype=np.float32)
    whiten = np.ascontiguousarray(whiten, dtype=np.float32)
    if means.shape != (P, d) or whiten.shape != (P, d, d):
        raise ValueError(
            f"means/whiten: expected shapes ({P}, {d}) and ({P}, {d}, {d}) for x of shape "
            f"{x.shape}; got {means.shape} and {whiten.shape}")
    if pre_idx.shape[0] != P or post_k.shape[0] != P:
        raise ValueError(
            f"taps: expected {P} positions (the second axis of x); got {pre_idx.shape[0]}")
    out = np.empty((post_k.shape[1], n, P), np.float32)
    if n == 0:
        return out
    kernel, trmm = _kernel()
    flags = np.frombuffer(b"LUTN", dtype=np.uint8).copy()  # side, uplo, trans, diag
    alpha = np.ones(1, np.float32)
    numba.set_num_threads(max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS)))
    # one BLAS thread per call: the threads are the loop's, over positions
    with _pools().limit(limits=1, user_api="blas"):
        kernel(trmm, x, means, whiten, np.ascontiguousarray(pre_idx, np.int64),
               np.ascontiguousarray(pre_w, np.float32), np.ascontiguousarray(n_rows, np.int64),
               np.ascontiguousarray(post_k, np.int64), np.ascontiguousarray(post_w, np.float32),
               np.ascontiguousarray(valid, np.bool_), out, flags, alpha, _ROWS_PER_CALL)
    return out
