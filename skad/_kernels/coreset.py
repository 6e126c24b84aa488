"""Greedy k-center coreset (PatchCore's memory-bank subsampling), exact and fast.

The selection is the exact greedy k-center of Roth et al. (2021), Algorithm 1, on a
random projection of the features (Johnson-Lindenstrauss, to ``projection_dim``
dimensions as PatchCore does). Each step picks the point farthest from the selected
set. A naive loop reads all n points every step (n_select * n * p values: about
1.4 TB of memory traffic for bottle's 164k x 128 at 10 %). Two exact shortcuts make
it fast (timings against the naive loop: ``doc/detectors.md``):

* **Lazy batches.** Distances-to-set only decrease. At the start of a batch, take the
  ``n_candidates`` points with the largest distance-to-set and the next largest
  value ``T``. Picks are then made among the candidates alone (their distances are
  updated after each pick; a small matrix-vector product) for as long as the best
  candidate is still ``>= T``: no other point can exceed ``T``, so each such pick is
  the one the naive loop makes. Then all points are updated with the batch's
  centers at once, as matrix products (compute-bound instead of memory-bound).
* **Pruning.** Points are arranged in small, spatially compact blocks (a
  median-split tree). A point ``x`` of block ``b`` (centroid ``z_b``, radius ``r_b``)
  can only get closer to a center ``c`` than it is to the set if
  ``||c - z_b|| - r_b < max_{x in b} mind(x)``; the batch update only multiplies the
  (chunk of blocks, center) pairs this bound does not rule out.

The result equals the naive greedy up to float rounding of near-ties.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils import check_random_state

from ..utils import resolve_device
from ._convert import as_tensor

__all__ = ["greedy_coreset", "random_projection"]


def random_projection(X, projection_dim, *, random_state=None, device=None):
    """Gaussian random projection ``X @ R`` with ``R ~ N(0, 1 / projection_dim)``.

    Johnson-Lindenstrauss: pairwise distances are preserved up to a small relative
    error. Returns ``X`` (as a float32 tensor) unchanged when ``projection_dim`` is
    None or not smaller than ``X.shape[1]``.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, d)
    projection_dim : int or None
    random_state : int, RandomState instance or None
    device : {"auto", "cpu", "cuda"}, torch.device or None

    Returns
    -------
    Z : torch.Tensor of float32, shape (n, min(d, projection_dim))

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.coreset import random_projection
    >>> tuple(random_projection(np.ones((5, 300)), 128, random_state=0).shape)
    (5, 128)
    """
    import torch

    dev = resolve_device(device, X)
    X = as_tensor(X, "X", ndim=2, device=dev, dtype=torch.float32).contiguous()
    d = X.shape[1]
    if projection_dim is None or projection_dim >= d:
        return X
    rng = check_random_state(random_state)
    R = rng.standard_normal((d, int(projection_dim))) / math.sqrt(projection_dim)
    return X @ torch.from_numpy(R.astype(np.float32)).to(dev)


def _balanced_blocks(Z, leaf_size, rng, sample=256):
    """Permutation of the rows of ``Z`` into ``2**L`` blocks of ``S <= leaf_size`` (pad: -1).

    Recursive split along each group's principal direction (3 batched power
    iterations on at most ``sample`` members per group and level): a balanced tree
    whose leaves are spatially compact. ``S = ceil(n / 2**L)`` keeps padding small.
    """
    import torch

    n, p = Z.shape
    levels = max(0, math.ceil(math.log2(max(1.0, n / leaf_size))))
    n_blocks = 2**levels
    size = n_blocks * math.ceil(n / n_blocks)
    order = torch.full((size,), -1, dtype=torch.int64, device=Z.device)
    order[:n] = torch.arange(n, device=Z.device)
    order = order[None]  # (groups, members)
    Zp = torch.cat([Z, torch.zeros((1, p), dtype=Z.dtype, device=Z.device)])  # row n: pad
    for _ in range(levels):
        g, m = order.shape
        valid = order >= 0
        Xg = Zp[torch.where(valid, order, n)]  # (g, m, p); pads are zero rows
        mean = Xg.sum(1) / valid.sum(1, keepdim=True).clamp_min(1).to(Z.dtype)
        step = max(1, m // sample)
        vs = valid[:, ::step, None]
        Xs = (Xg[:, ::step] - mean[:, None]) * vs
        v = torch.from_numpy(rng.standard_normal((g, p, 1)).astype(np.float32)).to(Z.device)
        for _ in range(3):
            v = torch.bmm(Xs.transpose(1, 2), torch.bmm(Xs, v))
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        proj = torch.bmm(Xg, v)[..., 0].masked_fill(~valid, float("inf"))
        perm = torch.argsort(proj, dim=1)
        order = torch.gather(order, 1, perm).reshape(2 * g, m // 2)
    return order


def greedy_coreset(
    X,
    n_select,
    *,
    projection_dim=128,
    random_state=None,
    device=None,
    leaf_size=64,
    n_candidates=1024,
    chunk_size=1024,
    verbose=False,
):
    """Indices of a greedy k-center coreset of the rows of ``X`` (PatchCore, Alg. 1).

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n, d)
        Patch features (e.g. every training patch, ``n = n_images * h * w``).
    n_select : int
        Coreset size, ``1 <= n_select <= n``.
    projection_dim : int or None, default=128
        Dimension of the Gaussian random projection the distances are computed in
        (PatchCore projects to 128); None keeps the original features.
    random_state : int, RandomState instance or None
        Seeds the projection, the start point and the block tree.
    device : {"auto", "cpu", "cuda"}, torch.device or None
    leaf_size : int, default=64
        Points per block of the pruning tree.
    n_candidates : int, default=1024
        Candidates per lazy batch.
    chunk_size : int, default=1024
        Rows per product of the batch update (rounded to whole blocks).
    verbose : bool or str, default=False
        A tqdm bar over the centers selected (a str: the bar's label). The selection is
        the long silent step of a PatchCore fit on a large set (tens of seconds for
        bottle's 164k patches on 2 loaded cores).

    ``leaf_size``, ``n_candidates`` and ``chunk_size`` are speed knobs: the
    selection does not depend on them (up to float rounding of near-ties).

    Returns
    -------
    indices : ndarray of int64, shape (n_select,)
        Selected rows in selection order.

    Notes
    -----
    Memory: the projected features (``4 n projection_dim`` bytes) twice (natural and
    block order) plus O(n) vectors and a (batch centers x blocks) mask.
    The first center is a random row (the paper's Algorithm 1 starts from an empty
    set, so its first choice is arbitrary). Measured on bottle (164k patches x 152
    channels, 2 cores): see ``benchmarks/results/bottle_baselines.md``.

    Examples
    --------
    >>> import numpy as np
    >>> from skad._kernels.coreset import greedy_coreset
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2)) * 10, [[100.0, 100.0]]]
    >>> sorted(X[greedy_coreset(X, 3, random_state=0)].tolist())
    [[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]]
    """
    import torch

    dev = resolve_device(device, X)
    Xt = as_tensor(X, "X", ndim=2, device=dev, dtype=torch.float32).contiguous()
    n = Xt.shape[0]
    if not isinstance(n_select, (int, np.integer)) or isinstance(n_select, bool) or not (
        1 <= n_select <= n
    ):
        raise ValueError(f"n_select: expected an int in [1, {n}]; got {n_select!r}")
    if projection_dim is not None and (
        not isinstance(projection_dim, (int, np.integer)) or projection_dim < 1
    ):
        raise ValueError(f"projection_dim: expected a positive int or None; got {projection_dim!r}")
    for name, value in (("leaf_size", leaf_size), ("n_candidates", n_candidates),
                        ("chunk_size", chunk_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int; got {value!r}")
    rng = check_random_state(random_state)
    with torch.inference_mode():
        Z = random_projection(Xt, projection_dim, random_state=rng, device=dev).contiguous()
        start = int(rng.randint(n))
        # the tree only steers pruning: built on 32 of the projected dimensions
        order = _balanced_blocks(Z[:, :32].contiguous(), int(leaf_size), rng)  # (B, S)
        n_blocks, S = order.shape
        valid = order >= 0
        Zp = torch.cat([Z, torch.zeros((1, Z.shape[1]), dtype=Z.dtype, device=dev)])
        Xb = Zp[torch.where(valid, order, n)]  # (B, S, p), block order
        sq = (Xb * Xb).sum(-1)  # ||x||^2, (B, S)
        cnt = valid.sum(1, keepdim=True).clamp_min(1).to(Z.dtype)  # pad-only blocks: 1
        cent = (Xb * valid[..., None]).sum(1) / cnt  # z_b
        rad = ((Xb - cent[:, None]).norm(dim=-1) * valid).amax(1)  # r_b
        # slack for the float rounding of expanded squared distances in the bound
        scale = float(sq.amax().sqrt())
        rad = rad * (1 + 1e-4) + 1e-4 * (1.0 + scale)
        flat_order = order.reshape(-1)
        flat_pos = torch.empty(n, dtype=torch.int64, device=dev)
        flat_pos[flat_order[valid.reshape(-1)]] = torch.nonzero(valid.reshape(-1)).reshape(-1)
        X_flat, sq_flat = Xb.reshape(-1, Xb.shape[-1]), sq.reshape(-1)
        # squared distance to the selected set; pads are never selected
        mind = torch.full((n_blocks, S), float("inf"), dtype=Z.dtype, device=dev)
        mind.masked_fill_(~valid, -float("inf"))
        mind_flat = mind.view(-1)
        # blocks per chunk: a power of two (n_blocks is one), at most chunk_size rows
        per_chunk = min(n_blocks, 2 ** max(0, int(math.log2(max(1, int(chunk_size) // S)))))
        n_chunks = n_blocks // per_chunk
        rows_per_chunk = per_chunk * S

        selected = [int(flat_pos[start])]  # flat (block-order) positions
        pending = selected[:]
        bar = _progress(verbose, n_select)
        while True:
            bar.update(len(selected) - bar.n)
            # update every point with the pending centers, pruned by the block bound
            P = torch.tensor(pending, dtype=torch.int64, device=dev)
            C, cc = X_flat[P], sq_flat[P]
            bound = torch.cdist(C, cent) - rad  # (b, B) lower bound of ||c - x||, x in b
            reach = mind.amax(1).clamp_min(0.0).sqrt()
            hit = (bound < reach).view(len(P), n_chunks, per_chunk).any(-1)  # (b, chunks)
            for ch in torch.nonzero(hit.any(0)).reshape(-1).tolist():
                ci = torch.nonzero(hit[:, ch]).reshape(-1)
                rows = slice(ch * rows_per_chunk, (ch + 1) * rows_per_chunk)
                d2 = torch.addmm(cc[ci][None], X_flat[rows], C[ci].T, alpha=-2.0)
                d2 = d2.add_(sq_flat[rows, None]).amin(1)
                torch.minimum(mind_flat[rows], d2, out=mind_flat[rows])
            mind_flat[P] = -float("inf")  # never selected twice (duplicate rows)
            if len(selected) >= n_select:
                break
            # lazy batch: picks among the top candidates while provably the argmax
            m = min(int(n_candidates), n - len(selected))
            vals, cand = torch.topk(mind_flat, min(m + 1, mind_flat.numel()))
            threshold = float(vals[m]) if len(vals) > m else -float("inf")
            cand, cv = cand[:m], vals[:m].clone()
            Zc, sqc = X_flat[cand], sq_flat[cand]
            pending = []
            while len(selected) < n_select:
                j = int(torch.argmax(cv))
                if pending and float(cv[j]) < threshold:
                    break
                pending.append(int(cand[j]))
                selected.append(pending[-1])
                c = Zc[j]
                d2 = torch.addmv(sqc, Zc, c, alpha=-2.0).add_(torch.dot(c, c))
                torch.minimum(cv, d2, out=cv)
                cv[j] = -float("inf")
        bar.close()
        idx = flat_order[torch.tensor(selected, dtype=torch.int64, device=dev)]
    return idx.cpu().numpy()


def _progress(verbose, total):
    """A tqdm bar (disabled unless ``verbose``) counting selected centers."""
    from tqdm.auto import tqdm

    desc = verbose if isinstance(verbose, str) else "coreset"
    return tqdm(total=total, desc=desc, unit="center", disable=not verbose, leave=False)
