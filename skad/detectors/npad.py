"""N-pad: neighbouring-pixel anomaly detection (Jang, Hwang and Park, 2023).

Per-position Gaussians re-estimated from the neighbourhood with Bhattacharyya
similarity weights (module A), Gaussians of locally aggregated features and a k-means
memory bank (module B), scoring against the neighbours' distributions (module C) and
test-time shifting (module D).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import check_random_state

from .._kernels.gaussian import fit_gaussians, inverse_cholesky_factors, whitened_distances
from .._kernels.kmeans import partitioned_kmeans, restricted_kmeans
from .._kernels.knn import knn_search
from .._kernels.nearest import nearest_rows
from .._kernels.spatial import (
    bhattacharyya_weights,
    neighbour_index,
    shift_maps,
    weighted_gaussians,
    window_offsets,
)
from .._kernels.taps import pooled_shift_taps, whitened_tap_norms, window_shift_taps
from ..features.pooling import local_average_pool
from ..utils._sklearn_compat import Interval, StrOptions
from ._base import BaseDetector, PatchDetectorMixin, _take, clip_to_data
from ._device import DeviceMixin

__all__ = ["NPad"]

_MODULES = ("A", "B", "C")


# --------------------------------------------------------------------------- channels
def select_active_channels(X, n_channels: int, order: str = "fewest_nonzero") -> np.ndarray:
    """Channels ranked by how often they are active (> 0) over nominal patch features.

    N-pad's dimension reduction (Sec. 3.1): count the non-zero values of each channel
    over all nominal features and keep ``n_channels`` channels by that count. A value
    counts when it is strictly positive: for features after a ReLU(6) (>= 0) this is
    the non-zero count; on signed features it stays defined (the fraction of positive
    responses). Ties keep the lower channel index (stable sort).

    Parameters
    ----------
    X : ndarray of shape (n, C, h, w)
    n_channels : int
        Number of channels to keep, ``1 <= n_channels <= C``.
    order : {"fewest_nonzero", "most_nonzero"}
        Keep the channels with the fewest (the paper's text) or the most non-zero
        values.

    Returns
    -------
    channels : ndarray of int64, shape (n_channels,)
        Kept channel indices, ascending.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors.npad import select_active_channels
    >>> X = np.zeros((2, 3, 2, 2), np.float32)
    >>> X[:, 0] = 1.0; X[:, 1, 0, 0] = 1.0
    >>> select_active_channels(X, 2, "fewest_nonzero").tolist()
    [1, 2]
    >>> select_active_channels(X, 1, "most_nonzero").tolist()
    [0]
    """
    X = np.asarray(X)
    n_total = X.shape[1]
    if not 1 <= int(n_channels) <= n_total:
        raise ValueError(
            f"n_channels: expected an int in [1, {n_total}] (the channels of X); "
            f"got {n_channels!r}"
        )
    if order not in ("fewest_nonzero", "most_nonzero"):
        raise ValueError(
            f"channel_order: expected 'fewest_nonzero' or 'most_nonzero'; got {order!r}"
        )
    counts = np.zeros(n_total, dtype=np.int64)
    for start in range(0, X.shape[0], 64):  # bounded temporaries
        counts += (X[start:start + 64] > 0).sum(axis=(0, 2, 3))
    key = counts if order == "fewest_nonzero" else -counts
    return np.sort(np.argsort(key, kind="stable")[: int(n_channels)])


# --------------------------------------------------------------------------- estimator
class NPad(DeviceMixin, PatchDetectorMixin, BaseDetector):
    """N-pad: neighbouring-pixel anomaly detection on patch tensors.

    A position-wise Gaussian model (like PaDiM) that lets each position borrow from its
    neighbours, so slight misalignment between images costs less:

    - **A** (weighted similarity distribution, eqs. 2-6): a Gaussian per position,
      re-estimated from the features of its ``neighborhood_size`` x
      ``neighborhood_size`` window, neighbour ``q`` weighted by ``exp(-D_B(p, q) /
      beta)`` (Bhattacharyya distance without its log-determinant term).
    - **B** (aggregated features, eqs. 7 and 10): 3x3-averaged features, a Gaussian
      per position, and MiniBatchKMeans centroids of the averaged nominal features
      (``centroid_ratio`` of them) as a memory bank for the image score.
    - **C** (eqs. 8-9): a position's A-score is the minimum Mahalanobis distance to
      the A-distributions of the positions in its ``score_neighborhood`` window;
      without C, to its own distribution only.
    - **D** (eq. 15): test-time shifting of the feature maps by ``k * shift_step``
      positions, ``k = 1..max_shift`` (``shift_directions``); the shifted maps are
      shifted back and aggregated with the unshifted one (``max_shift=0`` turns D
      off).

    Pixel map: ``sqrt(A * B)`` (eq. 11; A or B alone when only one is used). Image
    score: ``mean_i sqrt(M_(i) * E_(i))`` over the ``top_k`` largest map values ``M``
    and the Euclidean distances ``E`` of the same positions' aggregated features to
    their nearest centroid, both sorted ascending (eqs. 12-14).

    Parameters
    ----------
    n_channels : int or None, default=None
        Channels kept by :func:`select_active_channels` (``d``); None keeps all; a
        value above the channel count is clipped to it with a warning
        (``n_channels_``; the rule: :func:`~skad.detectors.clip_to_data`).
    channel_order : {"fewest_nonzero", "most_nonzero"}, default="fewest_nonzero"
        Which end of the non-zero-count ranking is kept.
    neighborhood_size : int, default=3
        Window side ``s`` of module A's re-estimation.
    beta : float, default=0.25
        Balancing parameter of the similarity (eq. 4).
    beta_role : {"temperature", "scale"}, default="temperature"
        ``exp(-D_B / beta)`` or ``exp(-beta * D_B)``; see Notes.
    score_neighborhood : int, default=2
        Window side of module C's minimum (see :func:`window_offsets`; 2 -> offsets
        0..1, a radius-2 reading is ``score_neighborhood=5``).
    centroid_ratio : float in (0, 1], default=0.1
        Number of k-means centroids as a fraction of the nominal aggregated features
        ``n * h * w``.
    top_k : int, default=10
        Number of map positions in the image score (clipped to ``h * w`` with a
        warning: ``top_k_``).
    max_shift : int, default=4
        Largest test-time shift, in ``shift_step`` units; 0 disables module D.
    shift_step : float, default=0.125
        Shift unit in feature-map positions (0.125 = one image pixel at stride 8).
    shift_aggregation : {"mean", "min"}, default="mean"
        How the shifted maps (and image scores) are combined.
    shift_directions : {"diagonal", "axes"}, default="diagonal"
        One shifted copy per size ``k`` (down-right by ``k * shift_step`` on both
        axes; ``max_shift + 1`` passes) or four (up, down, left, right;
        ``4 * max_shift + 1`` passes).
    modules : str or tuple of {"A", "B", "C"}, default=("A", "B", "C")
        Components to use (Table 3); "C" requires "A".
    eps : float > 0, default=0.01
        Ridge ``eps * I`` added to every covariance (keeps it invertible, even for
        one training image).
    kmeans_batch_size : int, default=4096
        Batch size of :class:`~sklearn.cluster.MiniBatchKMeans`.
    kmeans_max_iter : int, default=1
        Passes (epochs) of MiniBatchKMeans over the aggregated features (each costs
        ``n * h * w * n_centres * d`` multiply-adds without cells: timing in
        ``doc/npad.md``).
    kmeans_cell_size : int or None, default=4096
        k-means runs cell by cell (:func:`~skad._kernels.kmeans.partitioned_kmeans`):
        a coarse k-means splits the aggregated features into cells of about this many,
        each cell gets its share of the centres. Fit then grows linearly with the
        number of images; None runs one k-means over all features (quadratic).
    chunk_size : int, default=256
        Positions per chunk in fit (bounds the covariance temporaries).
    batch_size : int, default=32
        Images per chunk when scoring.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the Gaussian kernels (covariances, Cholesky factors, Mahalanobis
        distances) and the nearest-centroid search run ("auto": CUDA when available);
        the window bookkeeping, shifting and k-means stay on the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds k-means.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration sample (none flagged;
        with unbiased calibration scores, new normal samples are flagged with
        probability at most ``1 / (n_cal + 1)``); a float flags that fraction of the
        calibration samples.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples (biased: the
        Gaussians were fitted on them); "cv" each training sample scored by a model
        fitted from scratch without its fold (5 folds; the model kept is fitted on all
        samples); "holdout" (= "auto") the first of those folds, a fifth of the samples,
        scored by a fold model that shares the full fit's neighbourhood weights and
        k-means cells (see Notes); a float holds that fraction of the training samples
        out of fit (the exact split-conformal setting: the model kept is fitted on the
        rest). See ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    sigma : float, default=4.0
        Gaussian smoothing of upsampled maps, in pixels.

    Attributes
    ----------
    n_features_in_ : int
        Channels ``C`` of the training patch tensors.
    patch_shape_ : (int, int)
        ``(h, w)`` of the training maps; predict needs the same.
    n_channels_ : int
        ``d``, channels kept.
    top_k_ : int
        Map positions in the image score.
    channels_ : ndarray of shape (d,)
        Kept channels.
    weights_ : ndarray of float32, shape (h, w, s * s) or None
        Module A's neighbourhood weights (eq. 5).
    means_a_, whiten_a_ : ndarray of float32, shapes (h * w, d) and (h * w, d, d) or None
        Module A's re-estimated means and inverse lower Cholesky factors ``W = L^-1``
        of ``Sigma'_p + eps I = L L^T`` (Mahalanobis distance ``||W (x - mu)||``).
    means_b_, whiten_b_ : ndarray of float32 or None
        Module B's per-position Gaussians of the aggregated features (same form).
    centroids_ : ndarray of float32, shape (n_centroids, d) or None
        Module B's memory bank.
    device_ : torch.device
        The device fit resolved ``device`` to; scoring runs there (the CPU after
        unpickling on a machine without CUDA).
    offset_ : float
        Threshold on ``score_samples``.

    See Also
    --------
    skad.detectors.PaDiM : one Gaussian per position, no neighbourhood.
    skad.detectors.PatchCore : position-free memory bank.

    Notes
    -----
    Choices where the text is silent or its equations were lost:

    - **Channel selection.** The text says "the top-d channels with the least nonzero
      values" while its motivation (channels distorted by ReLU are less Gaussian)
      points the other way; ``channel_order`` offers both. Values are counted on the
      detector's input, i.e. after the extractor's layer fusion and local pooling:
      a channel that is zero over a whole pooling window stays zero, so pooling lowers
      the counts' contrast but keeps the ranking meaningful. EfficientNet-Lite's block
      outputs are linear bottlenecks (no ReLU6 after the projection), so their values
      are signed; counting ``> 0`` (identical to ``!= 0`` for ReLU features) keeps the
      ranking defined there. The paper keeps d = 550 of WideResNet-50's 1792 channels
      (it reports 150 already beat PatchCore); the default features have 120 in all
      (EfficientNet-Lite0 blocks 2 + 3), so the default keeps them all.
    - **Bhattacharyya term.** The pair's average covariance ``(Sigma_p + Sigma_q) /
      2 + eps I`` (eq. 4's notation), not a pooled one; ``D_B`` is symmetric.
    - **beta.** The text: beta = 1 is the original distance and larger beta uses more
      of the neighbourhood, which fits ``exp(-D_B / beta)`` (``"temperature"``); a
      literal ``exp(-beta D_B)`` is ``"scale"``.
    - **Module C / score_neighborhood** is a window side like ``neighborhood_size``
      (1 = own distribution); the paper's 2 is read as a 2x2 window (offsets 0..1).
      C applies to module A only (eq. 9); B scores against its own position (eq. 10).
    - **Image score** (eqs. 12-14): ``M`` = the ``top_k`` largest values of the final
      pixel map, ``E`` = nearest-centroid Euclidean distances of the aggregated
      features at those positions, both sorted ascending and combined by the mean of
      their element-wise geometric means (the same geometric mean as eq. 11). Without
      B: the mean of ``M``.
    - **Shifting** (eq. 15) acts on the feature maps (the detector only sees patch
      tensors): bilinear translation with replicated borders by ``k * shift_step``
      positions (eq. 15 lists one shifted image per size: ``"diagonal"``; ``"axes"``
      shifts in four directions at four times the cost), then shifted back before
      aggregation.
      With ``shift_step=0.125`` at stride 8 this matches the paper's 1..4 image-pixel
      shifts in displacement, but a feature-map translation only interpolates
      features; shifting the images and re-extracting is not the same.
    - **k-means**: ``MiniBatchKMeans(init="random", n_init=1)``, as k-means++ seeding of
      ``0.1 * n * h * w`` (16k for bottle) centres is too slow on a CPU; by default
      within cells of about ``kmeans_cell_size`` features from a coarse k-means
      (one k-means over all features costs ``n^2``: 16k centres x 164k features).
    - **Memory.** Every covariance is float32 and factorised once in fit (Cholesky,
      then its lower-triangular inverse ``W``). Fit holds the final factors of A and B
      (``2 h w d^2`` floats), the features and one chunk of raw covariances.
      For the default features (d = 120, 28x28) that is 2 x 45 MB; for d = 550 it is
      2 x 0.95 GB at 28x28 and 2 x 3.8 GB at 56x56 (plus the features, 209 bottle
      images x 56 x 56 x 550 floats = 1.4 GB, and their 3x3 average).
    - **What predict computes and costs** (per image, ``P = h w`` positions, ``m``
      shifted passes, ``|O|`` offsets of C's window). A bilinear shift with replicated
      borders makes each shifted feature a combination of at most four unshifted ones
      with weights summing to 1, so ``W_q (x^s_p - mu_q) = sum_t a_t W_q (x_{r_t} -
      mu_q)``. On the CPU module A (with C) whitens the distinct unshifted features
      ``r`` around each ``q`` once (9 for the defaults: ``m = 5`` passes below one
      position, a 2x2 window) and combines them for all ``m |O|`` (20) pairs of
      shift and offset; module B whitens the 3x3 average of each shifted copy (built
      from at most 16 unshifted features), ``m`` per position. The products use the
      triangle of ``W`` (``d^2 / 2`` multiply-adds), one compiled loop over positions
      (:mod:`skad._kernels.taps`): ``(9 + 5) P d^2 / 2`` multiply-adds instead of
      ``(20 + 5) P d^2`` for the shifted copies. The image score's nearest-centroid
      search costs ``m * top_k * n_centroids * d`` (blocked products,
      :mod:`skad._kernels.nearest`), as much as module A. Both are exact: only the
      order of float32 additions changes (scores equal to float rounding). On CUDA the
      shifted copies are scored directly, every copy of a batch in one batched
      product. Measured split and speed: ``doc/npad.md``.

    - **Calibration** (``calibration="auto"`` = ``"holdout"``). Scores of the training
      images are biased low (the Gaussians were fitted on them), so ``offset_`` comes
      from images a model did not fit. Scoring all of them ("cv": 5 fold models, 209
      images scored on bottle) costs several fits; "holdout" scores one fold, a fifth
      of the images, with one fold model built from the rest: every Gaussian (modules
      A and B) re-estimated on the other four fifths, the k-means redone on their
      aggregated features (:func:`~skad._kernels.kmeans.restricted_kmeans`: the
      seeds among their rows, one Lloyd step, in the full fit's cells), the channel
      ranking and neighbourhood weights shared with the full fit (the held-out images'
      small say in them is a leak; measured on bottle over 10 splits:
      ``doc/operating.md``). The cost: about one fit without the Bhattacharyya
      weights and the k-means, plus scoring a fifth of the images; the price:
      ``contamination="auto"`` targets ``1 / (n_cal + 1)`` with ``n_cal`` a fifth of
      the images (1/43 on bottle, against 1/210 with "cv"), and a
      ``false_alarm_rate`` below ``1 / (n_cal + 1)`` cannot be met (nothing is
      flagged, with a warning): pass "cv" for those.
    - **Fit kernels.** Every factorisation is float64 (Cholesky of the pairs' and the
      final covariances, the triangular inverse), from float32 covariances; the
      per-position moments are batched products over position-major features.

    Measured effects of these choices and of each module on bottle (ablations of
    ``beta``, ``channel_order``, ``modules``, shifting, ``score_neighborhood`` and
    ``top_k``): ``doc/npad.md`` and ``benchmarks/results/npad.md``.

    References
    ----------
    .. [1] Jang, J., Hwang, E. and Park, S.-H., "N-pad: Neighboring Pixel-based
       Industrial Anomaly Detection", CVPR Workshops (VAND), 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import NPad
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(20, 4, 6, 6)).astype(np.float32)
    >>> det = NPad(max_shift=1, random_state=0).fit(X)
    >>> X_test = X[:2].copy(); X_test[1, :, 2, 3] += 8.0
    >>> maps = det.anomaly_map(X_test)
    >>> maps.shape
    (2, 6, 6)
    >>> int(np.argmax(maps[1])) == 2 * 6 + 3
    True
    """

    _requires_same_patch_shape = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "n_channels": [Interval(Integral, 1, None, closed="left"), None],
        "channel_order": [StrOptions({"fewest_nonzero", "most_nonzero"})],
        "neighborhood_size": [Interval(Integral, 1, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="neither")],
        "beta_role": [StrOptions({"temperature", "scale"})],
        "score_neighborhood": [Interval(Integral, 1, None, closed="left")],
        "centroid_ratio": [Interval(Real, 0, 1, closed="right")],
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "max_shift": [Interval(Integral, 0, None, closed="left")],
        "shift_step": [Interval(Real, 0, None, closed="neither")],
        "shift_aggregation": [StrOptions({"mean", "min"})],
        "shift_directions": [StrOptions({"diagonal", "axes"})],
        "modules": [str, tuple, list],
        "eps": [Interval(Real, 0, None, closed="neither")],
        "kmeans_batch_size": [Interval(Integral, 1, None, closed="left")],
        "kmeans_max_iter": [Interval(Integral, 1, None, closed="left")],
        "kmeans_cell_size": [Interval(Integral, 1, None, closed="left"), None],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        **DeviceMixin._device_constraint,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_channels=None,
        channel_order="fewest_nonzero",
        neighborhood_size=3,
        beta=0.25,
        beta_role="temperature",
        score_neighborhood=2,
        centroid_ratio=0.1,
        top_k=10,
        max_shift=4,
        shift_step=0.125,
        shift_aggregation="mean",
        shift_directions="diagonal",
        modules=("A", "B", "C"),
        eps=0.01,
        kmeans_batch_size=4096,
        kmeans_max_iter=1,
        kmeans_cell_size=4096,
        chunk_size=256,
        batch_size=32,
        device="auto",
        random_state=None,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
    ):
        self.n_channels = n_channels
        self.channel_order = channel_order
        self.neighborhood_size = neighborhood_size
        self.beta = beta
        self.beta_role = beta_role
        self.score_neighborhood = score_neighborhood
        self.centroid_ratio = centroid_ratio
        self.top_k = top_k
        self.max_shift = max_shift
        self.shift_step = shift_step
        self.shift_aggregation = shift_aggregation
        self.shift_directions = shift_directions
        self.modules = modules
        self.eps = eps
        self.kmeans_batch_size = kmeans_batch_size
        self.kmeans_max_iter = kmeans_max_iter
        self.kmeans_cell_size = kmeans_cell_size
        self.chunk_size = chunk_size
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma

    # -- parameters ----------------------------------------------------------
    def _check_modules(self):
        modules = tuple(self.modules)
        bad = [m for m in modules if m not in _MODULES]
        if not modules or bad or len(set(modules)) != len(modules):
            raise ValueError(
                f"modules: expected distinct letters among {_MODULES} (e.g. ('A', 'B', "
                f"'C') or 'AB'); got {self.modules!r}"
            )
        if "A" not in modules and "B" not in modules:
            raise ValueError(f"modules: needs 'A' or 'B' to score; got {self.modules!r}")
        if "C" in modules and "A" not in modules:
            raise ValueError(
                f"modules: 'C' (scoring against the neighbours' A-distributions) "
                f"requires 'A'; got {self.modules!r}"
            )
        return frozenset(modules)

    # -- fit -----------------------------------------------------------------
    def _fit(self, X):
        rng = check_random_state(self.random_state)
        modules = self._check_modules()
        self._fit_device()
        n, c, h, w = X.shape
        d = clip_to_data(self, "n_channels", self.n_channels, c, "channels of X")
        clip_to_data(self, "top_k", self.top_k, h * w, "patch positions")
        self.channels_ = select_active_channels(X, d, self.channel_order)
        Xs = torch.from_numpy(np.ascontiguousarray(X[:, self.channels_]))
        self.modules_ = modules
        self.weights_ = self.means_a_ = self.whiten_a_ = None
        self.means_b_ = self.whiten_b_ = self.centroids_ = None
        if "A" in modules:
            self.weights_, self.means_a_, self.whiten_a_ = self._fit_module_a(Xs)
        if "B" in modules:
            self.means_b_, self.whiten_b_, bank = self._fit_module_b(Xs)
            n_clusters = max(1, min(len(bank), int(round(self.centroid_ratio * len(bank)))))
            # "holdout" restricts this k-means to the fold model's images (_fold_scores)
            keep_fit = (getattr(self, "calibration_", None) == "holdout"
                        and self.kmeans_cell_size is not None
                        and int(self.kmeans_max_iter) == 1)
            out = partitioned_kmeans(
                bank, n_clusters, cell_size=self.kmeans_cell_size,
                batch_size=int(self.kmeans_batch_size), max_iter=int(self.kmeans_max_iter),
                random_state=rng, return_fit=keep_fit)
            self.centroids_, self._kmeans_fit = out if keep_fit else (out, None)
            if keep_fit:
                self._kmeans_fit["bank"] = bank  # until calibration is done
        return self

    def _fit_module_a(self, Xs, weights=None):
        """Module A's weights, means and whitening factors; the neighbourhood
        ``weights`` are computed here unless given (:meth:`_fold_scores`)."""
        n, d, h, w = Xs.shape
        s = int(self.neighborhood_size)
        halo = s // 2  # farthest offset of the window (see window_offsets)
        rows = max(1, int(self.chunk_size) // w)
        given = weights is not None
        weights = torch.as_tensor(weights) if given else torch.empty(h, w, s * s)
        means = torch.empty(h * w, d)
        whiten = torch.empty(h * w, d, d)
        # position-major (h, w, n, d): each position's n samples are contiguous, so the
        # per-position means and products below read contiguous memory
        Xp = Xs.permute(2, 3, 0, 1).contiguous()
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            block = Xp[a0:a1].reshape(-1, n, d).transpose(0, 1)  # (n, positions, d)
            mu, cov = _gaussians(block, 0.0, self.device_)  # eqs. 2-3 without the ridge
            hb = a1 - a0
            if given:
                wts = weights[a0:a1]
            else:
                wts, _ = bhattacharyya_weights(mu.reshape(hb, w, d),
                                               cov.reshape(hb, w, d, d), size=s,
                                               beta=self.beta, beta_role=self.beta_role,
                                               eps=self.eps, device=self.device_)
            mu_a, cov_a = weighted_gaussians(mu.reshape(hb, w, d),
                                             cov.reshape(hb, w, d, d), wts,
                                             n_samples=n, size=s)
            inner = slice(r0 - a0, r1 - a0)
            if not given:
                weights[r0:r1] = wts[inner]
            means[r0 * w:r1 * w] = mu_a[inner].reshape(-1, d)
            cov_in = cov_a[inner].reshape(-1, d, d)
            cov_in += self.eps * torch.eye(d)  # eps * I of eq. 3
            whiten[r0 * w:r1 * w] = inverse_cholesky_factors(cov_in, device=self.device_)
            del mu, cov, mu_a, cov_a, cov_in
        return weights.numpy(), means.numpy(), whiten.numpy()

    def _fit_module_b(self, Xs):
        """Module B's means and whitening factors, and the aggregated features (the
        k-means bank, rows image by image)."""
        n, d, h, w = Xs.shape
        # eq. 7: 3x3 average of the neighbourhood. Channels-last: the pooling runs
        # several times faster (the same values) and its (n, h, w, d) memory is the
        # bank's row order
        agg = local_average_pool(Xs.contiguous(memory_format=torch.channels_last), 3)
        flat = agg.permute(0, 2, 3, 1).reshape(n, h * w, d)
        pos_major = agg.permute(2, 3, 0, 1).reshape(h * w, n, d).contiguous()
        del agg
        means = torch.empty(h * w, d)
        whiten = torch.empty(h * w, d, d)
        step = max(1, int(self.chunk_size))
        for p0 in range(0, h * w, step):
            p1 = min(h * w, p0 + step)
            mu, cov = _gaussians(pos_major[p0:p1].transpose(0, 1), self.eps, self.device_)
            means[p0:p1] = mu
            whiten[p0:p1] = inverse_cholesky_factors(cov, device=self.device_)
        return means.numpy(), whiten.numpy(), flat.reshape(-1, d).numpy()

    # -- calibration -----------------------------------------------------------
    def _default_calibration(self, X):
        # one fold (a fifth) scored by a fold model sharing the full fit's weights and
        # k-means cells: scoring every training image ("cv") costs more than the fit
        return "holdout"

    def _calibration_scores(self, X):
        try:
            return super()._calibration_scores(X)
        finally:
            self.__dict__.pop("_kmeans_fit", None)

    def _fold_scores(self, X, train, test):
        """Scores of the held-out ``X[test]`` by a model fitted on ``X[train]``.

        ``"cv"``: a model fitted from scratch (BaseDetector). ``"holdout"``: a fold
        model that re-estimates every Gaussian of modules A and B on ``X[train]``
        alone and redoes the k-means on their aggregated features within the full
        fit's cells (:func:`~skad._kernels.kmeans.restricted_kmeans`: the seeds drawn
        from these images, one Lloyd step), but shares the full fit's channels and
        neighbourhood weights (module A). The held-out images thus enter the fold
        model only through the weights, the channel ranking (none with the default
        ``n_channels=None``) and the k-means cells (measured: ``doc/operating.md``).
        Without cells or with ``kmeans_max_iter > 1``: a model fitted from scratch.
        """
        kmeans_fit = getattr(self, "_kmeans_fit", None)
        if self.calibration_ != "holdout" or ("B" in self.modules_ and kmeans_fit is None):
            return super()._fold_scores(X, train, test)
        fold = clone(self)
        fold.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k.endswith("_") and not k.startswith("_")})
        X_train = _take(X, train)
        if not np.array_equal(self.channels_, np.arange(X_train.shape[1])):
            X_train = X_train[:, self.channels_]
        Xs = torch.from_numpy(np.ascontiguousarray(X_train))
        if "A" in self.modules_:
            _, fold.means_a_, fold.whiten_a_ = fold._fit_module_a(Xs, self.weights_)
        if "B" in self.modules_:
            fold.means_b_, fold.whiten_b_, _ = fold._fit_module_b(Xs)
            positions = int(np.prod(self.patch_shape_))
            rows = (np.asarray(train)[:, None] * positions + np.arange(positions)).ravel()
            fold.centroids_ = restricted_kmeans(kmeans_fit["bank"], kmeans_fit, rows)
        return fold._score_images(_take(X, test))

    # -- scoring -------------------------------------------------------------
    def _shifts(self, h, w):
        # an axis of length 1 cannot move: its component is dropped
        my, mx = float(h > 1), float(w > 1)
        shifts = [(0.0, 0.0)]
        for k in range(1, int(self.max_shift) + 1):
            t = k * float(self.shift_step)
            if self.shift_directions == "diagonal":  # eq. 15: one copy per shift size
                cand = [(t * my, t * mx)]
            else:
                cand = [(t * my, 0.0), (-t * my, 0.0), (0.0, t * mx), (0.0, -t * mx)]
            shifts += [c for c in cand if c != (0.0, 0.0) and c not in shifts]
        return shifts

    def _score(self, X):
        X = np.asarray(X, dtype=np.float32)
        scores, maps = [], []
        for start in range(0, X.shape[0], int(self.batch_size)):
            xb = torch.from_numpy(np.ascontiguousarray(X[start:start + int(self.batch_size),
                                                         self.channels_]))
            s, m = self._score_batch(xb)
            scores.append(s)
            maps.append(m)
        return np.concatenate(scores), np.concatenate(maps)

    def _score_batch(self, xb):
        n = xb.shape[0]
        shifts = self._shifts(*xb.shape[2:])
        if self.device_.type == "cpu":
            scores, pixel = self._score_taps(xb, shifts)
        else:
            scores, pixel = self._score_shifted(xb, shifts)
        maps = torch.stack([shift_maps(pixel[i * n:(i + 1) * n, None], (-s[0], -s[1]))[:, 0]
                            for i, s in enumerate(shifts)])
        scores = scores.reshape(len(shifts), n)
        if self.shift_aggregation == "min":  # eq. 15
            scores, maps = scores.min(0).values, maps.min(0).values
        else:
            scores, maps = scores.mean(0), maps.mean(0)
        return scores.numpy().astype(np.float64), maps.numpy().astype(np.float32)

    def _offsets(self):
        # module C: the Gaussians of the window around p; without C, p's own only
        return window_offsets(int(self.score_neighborhood) if "C" in self.modules_ else 1)

    def _score_taps(self, xb, shifts):
        """All shifted passes through taps of the unshifted features (CPU; see Notes).

        Returns the image scores and pixel maps of every pass, pass-major
        (``len(shifts) * n`` rows), as :meth:`_score_shifted`.
        """
        n, d, h, w = xb.shape
        m, P = len(shifts), h * w
        x = xb.permute(0, 2, 3, 1).reshape(n, P, d).contiguous().numpy()
        threads = torch.get_num_threads()
        map_a = map_b = pooled = None
        if "A" in self.modules_:
            offsets = self._offsets()
            dist_q = whitened_tap_norms(
                x, self.means_a_, self.whiten_a_, *window_shift_taps(h, w, shifts, offsets),
                n_threads=threads).reshape(m, len(offsets), n, P)
            # x^s_p scored by the Gaussian at q = p + offset (eqs. 8-9), min over offsets
            idx, valid = neighbour_index(h, w, offsets)
            idx, valid = idx.numpy(), valid.numpy()
            map_a = np.full((m, n, P), np.inf, np.float32)
            for k in range(len(offsets)):
                np.minimum(map_a, np.where(valid[k], dist_q[:, k][:, :, idx[k]], np.inf),
                           out=map_a)
            map_a = torch.from_numpy(map_a.reshape(m * n, h, w))
        if "B" in self.modules_:
            pooled = pooled_shift_taps(h, w, shifts)  # eq. 7 on each shifted copy
            map_b = torch.from_numpy(whitened_tap_norms(
                x, self.means_b_, self.whiten_b_, *pooled, n_threads=threads)
                .reshape(m * n, h, w))

        def aggregated(pos):  # the 3x3 averages of x^s at the top positions, (m n k, d)
            pre_idx, pre_w = pooled[0], pooled[1]
            k = pos.shape[1]
            pos = pos.numpy().reshape(m, n, k)
            shift = np.arange(m)[:, None, None]
            image = np.arange(n)[None, :, None]
            src = pre_idx[pos, shift]  # (m, n, k, taps)
            wts = pre_w[pos, shift]
            feats = x[np.broadcast_to(image[..., None], src.shape), src]
            return torch.from_numpy(np.einsum("snkt,snktd->snkd", wts, feats)
                                    .reshape(m * n * k, d))

        return self._image_scores(map_a, map_b, aggregated if pooled is not None else None)

    def _score_shifted(self, xb, shifts):
        """All shifted passes from shifted copies of the features (the CUDA path)."""
        # every shifted copy scored in one pass: each Gaussian's factor is read once
        # per batch, not once per shift
        xs = torch.cat([shift_maps(xb, s) for s in shifts])
        n, d, h, w = xs.shape
        map_a = self._map_a(xs) if "A" in self.modules_ else None
        agg = map_b = None
        if "B" in self.modules_:
            agg = local_average_pool(xs, 3).permute(0, 2, 3, 1).reshape(n, h * w, d)
            map_b = _maha(agg, self.means_b_, self.whiten_b_, self.device_).reshape(n, h, w)

        def aggregated(pos):
            k = pos.shape[1]
            return torch.gather(agg, 1, pos[:, :, None].expand(n, k, d)).reshape(n * k, d)

        return self._image_scores(map_a, map_b, aggregated if agg is not None else None)

    def _map_a(self, xb):
        n, d, h, w = xb.shape
        feats = xb.permute(0, 2, 3, 1).reshape(n, h * w, d)
        offsets = self._offsets()
        idx, valid = neighbour_index(h, w, offsets)
        # distribution at q = p + offset scores the feature at p (eqs. 8-9): gather
        # x_{q - offset} to position q, score against q, map back to p. All offsets go
        # through one Mahalanobis call (one pass over the factors).
        src = neighbour_index(h, w, [(-dy, -dx) for dy, dx in offsets])[0]
        gathered = torch.cat([feats[:, src[k]] for k in range(len(offsets))])
        dist_q = _maha(gathered, self.means_a_, self.whiten_a_, self.device_)
        dist_q = dist_q.reshape(len(offsets), n, -1)
        best = torch.full((n, h * w), float("inf"))
        for k in range(len(offsets)):
            dist_p = dist_q[k][:, idx[k]]
            dist_p[:, ~valid[k]] = float("inf")
            best = torch.minimum(best, dist_p)
        return best.reshape(n, h, w)

    def _image_scores(self, map_a, map_b, aggregated):
        """Pixel maps (eq. 11) and image scores (eqs. 12-14) of (N, h, w) module maps."""
        if map_a is not None and map_b is not None:
            pixel = torch.sqrt(map_a * map_b)  # eq. 11
        else:
            pixel = map_a if map_a is not None else map_b
        n, k = pixel.shape[0], self.top_k_
        top, pos = torch.topk(pixel.reshape(n, -1), k, dim=1)  # M of eq. 12
        if aggregated is None:
            return top.mean(1), pixel
        query = aggregated(pos)
        if self.device_.type == "cpu":
            dist = nearest_rows(query.numpy(), self.centroids_,
                                n_threads=torch.get_num_threads())[0]
        else:
            dist = knn_search(query, self.centroids_, 1, device=self.device_)[0]
        euclid = torch.as_tensor(np.asarray(dist, dtype=np.float32)).reshape(n, k)  # E (eq. 13)
        m_sorted = torch.sort(top, dim=1).values
        e_sorted = torch.sort(euclid, dim=1).values
        return torch.sqrt(m_sorted * e_sorted).mean(1), pixel  # eq. 14

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _gaussians(block, eps, device=None):
    """Per-position means and sample covariances (ddof 1) + ``eps I`` of (n, P, d).

    A single sample has a zero sample covariance (the paper's one-shot setting: module
    A still gets a spread from the neighbourhood).
    """
    if block.shape[0] < 2:
        d = block.shape[2]
        cov = torch.zeros(block.shape[1], d, d) + eps * torch.eye(d)
        return block[0].clone(), cov
    mu, cov = fit_gaussians(block, shrinkage=0.0, eps=eps, device=device)
    return torch.from_numpy(mu), torch.from_numpy(cov)


def _maha(feats, means, whiten, device=None):
    """Mahalanobis distances (n, P) of features (n, P, d) to per-position Gaussians."""
    return whitened_distances(feats, means, whiten, device=device).cpu()
