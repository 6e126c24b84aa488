"""PatchCluster: blind anomaly detection by local patch-feature clustering.

A patch is scored by its mean distance to its K nearest neighbours in a memory bank
built from the very set being scored, never counting the patch itself (eq. 2 of the
paper); the image score is the maximum patch score reweighted as in PatchCore (eq. 3).
"""

from __future__ import annotations

import hashlib
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state

from .._kernels.coreset import greedy_coreset
from .._kernels import patch_rows
from .._kernels.ann import build_index
from .._kernels.knn import same_group_counts
from .._kernels.reweight import reweight_factor
from ..utils import seed_from
from ..utils._sklearn_compat import Interval, StrOptions
from ._base import BaseDetector, BlindModeMixin, PatchDetectorMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["PatchCluster", "default_n_neighbors"]


#: bank patches from which PatchCluster's ``nn_method="auto"`` searches approximately
PATCHCLUSTER_APPROX_THRESHOLD = 250_000

def default_n_neighbors(coreset_ratio=None):
    """K used by :class:`PatchCluster` when ``n_neighbors=None``.

    The paper uses K = 100 for the full bank and K = 5, 10, 25 for coresets of 1 %,
    10 % and 25 %. The rule ``K = max(5, round(100 * ratio))`` reproduces all four
    values and interpolates linearly in between (K about 1 % of the bank size times
    100, never below 5).

    Parameters
    ----------
    coreset_ratio : float in (0, 1] or None
        None means the full bank (ratio 1).

    Returns
    -------
    n_neighbors : int

    Examples
    --------
    >>> from skad.detectors.patchcluster import default_n_neighbors
    >>> [default_n_neighbors(r) for r in (None, 0.01, 0.1, 0.25, 0.5)]
    [100, 5, 10, 25, 50]
    """
    ratio = 1.0 if coreset_ratio is None else float(coreset_ratio)
    return max(5, int(round(100.0 * ratio)))


def _sample_digests(X):
    """One digest per sample of a float32 (n, C, h, w) array (shape included)."""
    shape = repr(X.shape[1:]).encode()
    out = []
    for i in range(X.shape[0]):
        h = hashlib.blake2b(shape, digest_size=16)
        h.update(np.ascontiguousarray(X[i]).data)
        out.append(h.digest())
    return out


class PatchCluster(BlindModeMixin, DeviceMixin, PatchDetectorMixin, BaseDetector):
    """Blind anomaly detection by the mean distance to K nearest patch features.

    Implements PatchCluster [1]_: the memory bank holds the patch features of the set
    being scored (optionally a greedy coreset of them, as PatchCore), a patch scores
    the mean Euclidean distance to its ``n_neighbors`` nearest bank entries, never
    counting itself, and an image scores its maximum patch score with PatchCore's
    reweighting (eq. 3). No labels are needed: ``fit_predict(X)``,
    ``fit(X).score_samples(X)`` or ``fit(X).anomaly_map(X)`` score the set ``X``
    itself (blind setting); ``fit(X_normal).score_samples(X_new)`` is the usual
    one-class use.

    Parameters
    ----------
    n_neighbors : int or None, default=None
        K in eq. 2. None uses the paper's values: 100 for the full bank, 5 / 10 / 25
        for coresets of 1 / 10 / 25 %, and ``max(5, round(100 * coreset_ratio))`` for
        other ratios (see :func:`default_n_neighbors`). K (given or default) is
        clipped with a warning to the number of bank entries a training patch may match
        (small data sets; ``n_neighbors_``, the rule:
        :func:`~skad.detectors.clip_to_data`).
    coreset_ratio : float in (0, 1] or None, default=None
        Fraction of the patches kept in the memory bank by greedy coreset selection
        (PatchCore's k-center greedy). None or 1.0 keeps the full bank.
    exclude : {"self", "image"} or None, default="self"
        The blind-mode switch (:class:`~skad.detectors.BlindModeMixin`): which bank
        entries a training patch may not match when the training set is scored:
        ``"self"`` the patch itself (the paper's "start from the 2nd neighbour"),
        ``"image"`` every patch of its own image (as the paper's SPADE baseline
        excludes the image itself), None nothing (the patch matches itself at
        distance 0: PatchCore's failure in the blind setting, for ablations only; not
        blind, so ``contamination="auto"`` is then the one-class rule).
    reweight : {"nearest", "mean"} or None, default="nearest"
        Image score (eq. 3). With ``a*`` the maximum patch score of the image, ``f_i*``
        that patch, ``f*`` its nearest bank entry and ``N(f*)`` the
        ``n_reweight_neighbors`` bank entries nearest to ``f*``, the score is
        ``(1 - exp(u) / sum_{f in N(f*)} exp(dist(f_i*, f))) * a*`` where ``u = a*``
        for ``"mean"`` (eq. 3 as printed) and ``u = dist(f_i*, f*)`` for
        ``"nearest"`` (PatchCore's original weight, always in [0, 1)). None: the
        image score is ``a*``. The default is ``"nearest"``: the printed reading
        inverted the image ranking on MVTec bottle (Notes).
    n_reweight_neighbors : int, default=9
        Size of ``N(f*)`` in eq. 3 (PatchCore's b; 9 as in PatchCore's reference
        implementation), capped at the number of eligible bank entries.
    projection_dim : int or None, default=128
        Random projection used to speed up the greedy coreset (None: no projection).
    nn_method : {"auto", "exact", "cells", "ivf", "nndescent"}, default="auto"
        Nearest-neighbour search over the bank: "exact" (chunked brute force),
        "cells" (candidate lists per k-means cell, own-image rows skipped inside
        them), "ivf" (a faiss inverted-file index) or "nndescent" (a pynndescent
        graph), the last two with exclusion by over-querying and filtering, or
        "auto" ("ivf" from ``approx_threshold`` bank patches). ``nn_method_`` records the
        search used (as :class:`~skad.detectors.PatchCore`).
    approx_threshold : int, default=250_000
        Bank size from which "auto" searches approximately: the exact self-excluded
        search costs ``n^2`` (597k patches did not finish in 15 minutes on 2 cores);
        bottle's blind set (292 images x 784 patches = 229k) stays exact. Recall of the
        approximate self-excluded search: ``benchmarks/results/scale_recall.md``.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the neighbour search and coreset run ("auto": CUDA when available).
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset selection (the only stochastic step).
    verbose : bool, default=False
        A progress bar over the coreset selection in ``fit`` (the long step on large
        training sets; ``skad fit`` turns it on).
    contamination : "auto" or float in (0, 0.5], default="auto"
        Sets ``offset_`` from the training scores (computed with the exclusion above).
        "auto": a sample is anomalous when its image anomaly score exceeds the training
        median by more than 3 scaled MADs (``1.4826 * median |a - median(a)|``), a
        robust rule that needs no clean training set; a float flags that fraction of
        the training set.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal samples whose scores set ``offset_`` (``calibration_``,
        ``calibration_scores_``): "in_sample" the training samples scored blind, as
        ``fit_predict`` scores them; "cv" each training sample scored by a model fitted
        without its fold (5 folds; the model kept is fitted on all samples); "holdout"
        the first fold only (a fifth of the samples scored); a float holds that fraction
        of the training samples out of fit (the exact split-conformal setting: the model
        kept is fitted on the rest); "auto": "in_sample". See ``doc/operating.md``.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal samples flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (the ``ceil((n_cal + 1)(1 - rate))``-th
        smallest anomaly score), so a new normal sample is flagged with probability at
        most ``false_alarm_rate`` when the calibration scores are unbiased. Leave
        ``contamination="auto"`` with it.
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled anomaly maps.

    Attributes
    ----------
    memory_bank_ : ndarray of float32, shape (n_bank, n_features_in_)
        Patch features of the bank (coreset or all training patches).
    coreset_indices_ : ndarray of int64, shape (n_bank,)
        Row of each bank entry among the training patches (patch ``p`` of training
        image ``i`` is row ``i * h * w + p``), ascending.
    index_ : :class:`~skad._kernels.ann.NeighborIndex`
        The search over ``memory_bank_``.
    n_neighbors_ : int
        K actually used.
    n_reweight_neighbors_ : int
        ``|N(f*)|`` actually used (clipped like K).
    bank_image_ids_ : ndarray of int64, shape (n_bank,)
        Training image of each bank entry.
    exclude_ : {"self", "image"} or None
        The exclusion used.
    blind_ : bool
        ``exclude_ is not None``.
    train_anomaly_ : ndarray of float64, shape (n_samples,)
        Image anomaly scores (eq. 3) of the training set, with the exclusion.
    nn_method_ : {"exact", "cells", "ivf", "nndescent"}
        Nearest-neighbour search used.
    device_ : torch.device
        The device fit resolved ``device`` to; scoring runs there (the CPU after
        unpickling on a machine without CUDA).
    train_maps_ : ndarray of float32, shape (n_samples, h, w)
        Patch anomaly scores (eq. 2) of the training set, with the exclusion.
    train_scores_ : ndarray of shape (n_samples,)
        Normality scores (``-`` image anomaly) of the training set, with the exclusion.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Channels of the patch features.
    patch_shape_ : tuple of int
        (h, w) of the training patch maps.

    See Also
    --------
    skad.detectors.PatchCore : nearest-neighbour scoring (K = 1) for the one-class
        setting.
    sklearn.neighbors.LocalOutlierFactor : density-ratio outlier score, the paper's
        LOF baseline when applied to the patch bank.

    Notes
    -----
    **Recognising the training set.** Scoring the fitted set must exclude each patch's
    own match. ``fit`` therefore scores the training set once, with exact exclusion
    by patch (or image) index, and keeps the result (``train_maps_``,
    ``train_scores_``, as ``LocalOutlierFactor.negative_outlier_factor_``). It also
    keeps a 128-bit BLAKE2 digest of each training sample's patch tensor; at scoring
    time a sample whose tensor is byte-identical to a training sample gets that
    sample's stored result, any other sample is scored against the whole bank with no
    exclusion (one-class use: its patches are not in the bank). Recognition is per
    sample, so a subset, a permutation or a batch of the training set is recognised
    too, and it costs one hash per sample (a pass over the features). Only a
    byte-identical tensor is recognised: features recomputed non-deterministically
    (e.g. on a GPU) are new samples and match their training twin at distance about
    0; score the training set with the very array passed to ``fit`` (or use
    ``fit_predict`` / ``train_scores_`` / ``train_maps_``). Identical training samples
    share the result of their first copy (with the full bank this is exact: copy A
    excluding itself and matching copy B sees the same distances as B excluding
    itself and matching A).

    **Exclusion vs the paper.** The paper skips the nearest neighbour ("set k to 2");
    here the patch itself is removed from the candidates exactly (by index), so with a
    coreset that does not contain the patch, its true nearest neighbour still counts.
    A duplicate of an anomalous image is another sample: its patches stay in the bank
    (each copy matches its twin at distance 0), which is why K must exceed the number
    of copies -- the mean over K neighbours, not the nearest one, is what exposes
    repeated anomalies.

    **Eq. 3.** As printed, the numerator is ``exp(a*)`` with ``a*`` the mean
    K-distance, while PatchCore's weight has ``exp(dist(f_i*, f*))``; both reduce to
    PatchCore's for K = 1. The printed form can make the weight negative when
    ``a*`` exceeds the log-sum-exp of the distances to ``N(f*)`` (large K, features
    with large norms), so both readings are available (``reweight``). Measured on
    bottle (``doc/patchcluster.md``, ``benchmarks/results/patchcluster.md``), the
    printed reading inverts the image ranking (the most anomalous patches get the most
    negative weights) and PatchCore's weight does not, hence the default
    ``"nearest"``. ``N(f*)``
    contains ``f*`` itself (as in PatchCore) and never the scored patch ``f_i*``
    (nor, with ``exclude="image"``, its image's patches). Sums of exponentials are
    computed as log-sum-exp (no overflow).

    **Threshold.** In one-class use ``contamination="auto"`` means "no false alarm on
    the training set", which assumes a clean training set and would flag nothing in
    ``fit_predict``. The training set of a blind detector holds the anomalies to find,
    so in blind mode (every skad detector with ``exclude`` set) "auto" is a robust
    z-score rule instead (:func:`~skad.detectors.blind_offset`: median + 3 scaled MADs
    of the training image scores); ``set_threshold(X_normal, false_alarm_rate)`` still
    sets it from held-out normals.

    **Other choices.** Distances are Euclidean on the features as given (the paper's
    WideResNet-50 layers 2+3 with 3x3 pooling live in the feature extractor). The
    coreset is selected once on all training patches; K is checked against the bank
    size minus the largest number of excluded entries for any training patch.

    References
    ----------
    .. [1] PatchCluster: blind anomaly detection by local patch clustering
       (see ``../shared/papers/patchcluster-blind-ad.txt``), eq. 1-3, Sec. 5.1.2.
    .. [2] K. Roth et al., "Towards Total Recall in Industrial Anomaly Detection",
       CVPR 2022 (PatchCore, eq. 7 reweighting).

    Examples
    --------
    Blind use: score a set that contains an anomaly, without labels.

    >>> import numpy as np
    >>> from skad.detectors import PatchCluster
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 8, 4, 4)).astype(np.float32)   # 30 patch maps
    >>> X[3, :, 1, 2] += 6.0                                     # one anomalous patch
    >>> det = PatchCluster(n_neighbors=10).fit(X)
    >>> int(np.argmax(det.anomaly_score(X)))
    3
    >>> det.anomaly_map(X, output_size=(32, 32)).shape
    (30, 32, 32)
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), None],
        "coreset_ratio": [Interval(Real, 0, 1, closed="right"), None],
        **BlindModeMixin._exclude_constraints(options=("self", "image")),
        "reweight": [StrOptions({"mean", "nearest"}), None],
        "n_reweight_neighbors": [Interval(Integral, 1, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left"), None],
        "nn_method": [StrOptions({"auto", "exact", "cells", "ivf", "nndescent"})],
        "approx_threshold": [Interval(Integral, 1, None, closed="left")],
        **DeviceMixin._device_constraint,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_neighbors=None,
        *,
        coreset_ratio=None,
        exclude="self",
        reweight="nearest",
        n_reweight_neighbors=9,
        projection_dim=128,
        nn_method="auto",
        approx_threshold=PATCHCLUSTER_APPROX_THRESHOLD,
        device="auto",
        random_state=None,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        verbose=False,
    ):
        self.n_neighbors = n_neighbors
        self.coreset_ratio = coreset_ratio
        self.exclude = exclude
        self.reweight = reweight
        self.n_reweight_neighbors = n_reweight_neighbors
        self.projection_dim = projection_dim
        self.nn_method = nn_method
        self.approx_threshold = approx_threshold
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma

    # -- fit -----------------------------------------------------------------
    def _fit(self, X):
        rng = check_random_state(self.random_state)
        device = self._fit_device()
        exclude = self._fit_exclude()
        n, _, h, w = X.shape
        hw = h * w
        patches = patch_rows(X)
        n_patches = patches.shape[0]
        ratio = 1.0 if self.coreset_ratio is None else float(self.coreset_ratio)

        # an integer seed per randomised step (coreset, index), drawn from rng in order
        if ratio < 1.0:
            n_select = max(1, int(round(ratio * n_patches)))
            selected = greedy_coreset(
                patches,
                n_select,
                projection_dim=self.projection_dim,
                random_state=seed_from(rng),
                device=device,
                verbose="PatchCluster coreset" if self.verbose else False,
            )
            selected = np.sort(np.asarray(selected, dtype=np.int64))
        else:
            selected = np.arange(n_patches, dtype=np.int64)
        self.coreset_indices_ = selected
        self.bank_image_ids_ = selected // hw
        self.memory_bank_ = patches[selected]
        self.index_ = build_index(
            self.memory_bank_,
            method=self.nn_method,
            approx_threshold=self.approx_threshold,
            random_state=seed_from(rng),
            device=device,
        )
        self.nn_method_ = self.index_.method_

        # Exclusion groups (the search never returns a bank entry of the query's group).
        query_groups = None
        if exclude == "self":
            query_groups = np.arange(n_patches, dtype=np.int64)
        elif exclude == "image":
            query_groups = np.arange(n_patches, dtype=np.int64) // hw
        max_excluded = 0 if query_groups is None else int(
            same_group_counts(query_groups, self._bank_groups()).max())
        n_bank = selected.shape[0]
        n_eligible = n_bank - max_excluded
        if n_eligible < 1:
            raise ValueError(
                f"{type(self).__name__} needs at least one bank entry a training patch "
                f"may match; got {n_bank} bank patch(es) from {n} sample(s) with "
                f"exclude={exclude!r}: fit on more than 1 sample"
            )
        what = (f"bank entries a training patch may match (bank of {n_bank}, up to "
                f"{max_excluded} excluded by exclude={exclude!r})")
        k = (default_n_neighbors(self.coreset_ratio) if self.n_neighbors is None
             else self.n_neighbors)
        clip_to_data(self, "n_neighbors", k, n_eligible, what)
        clip_to_data(self, "n_reweight_neighbors", self.n_reweight_neighbors, n_eligible,
                     what)

        anomaly, maps = self._score_patches(patches, n, (h, w), query_groups)
        digests = _sample_digests(X)
        first = {}
        for i, d in enumerate(digests):
            first.setdefault(d, i)
        # Identical training samples share their first copy's result (Notes).
        src = np.array([first[d] for d in digests], dtype=np.int64)
        self.train_anomaly_ = anomaly[src]
        self.train_maps_ = maps[src]
        self._train_digests = first
        return self

    def _bank_groups(self):
        """Exclusion group of each bank entry (the query's group is never matched)."""
        if self.exclude_ == "self":
            return self.coreset_indices_
        if self.exclude_ == "image":
            return self.bank_image_ids_
        return None

    def __setstate__(self, state):
        # models pickled before the attributes were renamed (skad 0.1)
        state = dict(state)
        if "_n_reweight" in state:
            state["n_reweight_neighbors_"] = state.pop("_n_reweight")
        if "_train_anomaly" in state:
            state["train_anomaly_"] = state.pop("_train_anomaly")
        if "_bank_groups" in state:
            state.pop("_bank_groups")
            state["exclude_"] = state["exclude"]
            state["blind_"] = state["exclude"] is not None
            hw = int(np.prod(state["patch_shape_"]))
            state["bank_image_ids_"] = state["coreset_indices_"] // hw
        super().__setstate__(state)

    def _default_calibration(self, X):
        return "in_sample"  # blind: the training set is the set scored

    def _offset_scores(self, X):
        return self.train_anomaly_

    # -- scoring -------------------------------------------------------------
    def _score_patches(self, patches, n_images, shape, query_groups):
        """Image anomaly (n,) and patch maps (n, h, w) of flattened query patches."""
        hw = shape[0] * shape[1]
        bank_groups = self._bank_groups() if query_groups is not None else None
        k = self.n_neighbors_
        maps = np.empty(n_images * hw, dtype=np.float32)
        nearest = np.empty(n_images * hw, dtype=np.int64)
        nearest_d = np.empty(n_images * hw, dtype=np.float32)
        # Bound the (m, K) outputs: a few thousand query patches per search call.
        step = max(1, 16384 // hw) * hw
        for start in range(0, n_images * hw, step):
            stop = min(start + step, n_images * hw)
            dist, idx = self.index_.query(
                patches[start:stop],
                k,
                query_groups=None if query_groups is None else query_groups[start:stop],
                bank_groups=bank_groups,
            )
            maps[start:stop] = dist.mean(axis=1)  # a_{w,h}, eq. 2
            nearest[start:stop] = idx[:, 0]
            nearest_d[start:stop] = dist[:, 0]
        maps = maps.reshape(n_images, hw)
        # a_i^*: maximum patch score of each image
        star = np.argmax(maps, axis=1)
        rows = np.arange(n_images) * hw + star
        a_star = maps[np.arange(n_images), star].astype(np.float64)
        if self.reweight is None:
            anomaly = a_star
        else:
            anomaly = a_star * self._reweight_factor(
                patches[rows],
                nearest[rows],
                nearest_d[rows].astype(np.float64),
                a_star,
                None if query_groups is None else query_groups[rows],
            )
        return anomaly, maps.reshape(n_images, *shape)

    def _reweight_factor(self, f_i_star, f_star_idx, d_nearest, a_star, groups):
        """``1 - exp(u) / sum_{f in N(f*)} exp(dist(f_i*, f))`` of eq. 3, per image
        (PatchCore's eq. 7 weight, :func:`~skad._kernels.reweight.reweight_factor`)."""
        bank = self.memory_bank_
        _, nb_idx = self.index_.query(
            bank[f_star_idx],
            self.n_reweight_neighbors_,
            query_groups=groups,  # N(f*) never holds the scored patch itself
            bank_groups=None if groups is None else self._bank_groups(),
        )
        diff = bank[nb_idx].astype(np.float64) - f_i_star[:, None, :].astype(np.float64)
        d = np.sqrt(np.einsum("nbc,nbc->nb", diff, diff))  # dist(f_i*, f), f in N(f*)
        return reweight_factor(a_star if self.reweight == "mean" else d_nearest, d)

    def _score(self, X):
        n, _, h, w = X.shape
        digests = _sample_digests(X)
        known = np.array([self._train_digests.get(d, -1) for d in digests], dtype=np.int64)
        anomaly = np.empty(n, dtype=np.float64)
        maps = np.empty((n, h, w), dtype=np.float32)
        is_known = known >= 0
        if is_known.any():
            # Training samples: their blind scores, computed in fit with the exclusion.
            anomaly[is_known] = self.train_anomaly_[known[is_known]]
            maps[is_known] = self.train_maps_[known[is_known]]
        new = np.flatnonzero(~is_known)
        if new.size:
            a_new, m_new = self._score_patches(
                patch_rows(X[new]), new.size, (h, w), None
            )
            anomaly[new] = a_new
            maps[new] = m_new
        return anomaly, maps
