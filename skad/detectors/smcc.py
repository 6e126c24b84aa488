"""SMCC: self-updated memory and center clustering (Liu, Gao et al., IEEE TII 2023)."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state
from ..utils._sklearn_compat import Interval, StrOptions

from .._kernels import patch_rows
from .._kernels.ann import build_index
from .._kernels.gmm import sensitivity_coreset, weighted_gmm
from .._training import record_training, train_loop, training_constraints
from ..features import PatchFeatureExtractor
from ._base import BaseDetector, ImageDetectorMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["SMCC"]

SMCC_LOSSES = ("center", "offset")
#: layers of SMCC's default extractor (EfficientNet-Lite0 blocks 2 + 4, the layers its
#: benchmark figures were measured with; pinned so the extractor's default cannot move them)
SMCC_DEFAULT_LAYERS = ("blocks.2", "blocks.4")

#: bank rows from which ``nn_method="auto"`` searches approximately on the CPU
SMCC_APPROX_THRESHOLD = 10_000


class SMCC(DeviceMixin, ImageDetectorMixin, BaseDetector):
    """SMCC (Liu et al. 2023): a backbone self-updated towards GMM centers, a one-batch memory.

    Three stages (the paper's Algorithm 1):

    1. Patch features of the training images from ``extractor`` (each position of the
       fused multi-layer map is a patch).
    2. Center set (Algorithm 2): a sensitivity-sampled coreset of the patches (k-means++
       bicriteria solution, sampling probability ``q(x)``, weights ``1 / (m q(x))``,
       ``m = sampling_rate x`` the number of patches), a weighted Gaussian mixture with
       ``n_components`` components fitted on it; the mixture means together with the
       sampled patches are the centers ``S``.
    3. Self-update: the extractor's network is fine-tuned so that every training patch
       moves towards its nearest center, ``L_c = mean_i min_n D(P_i, C_n)`` (eq. 4),
       and away from the second nearest, ``L_o = mean_i D(P_i, C_1) - D(P_i, C_2)``
       (eq. 5), ``L = L_c + L_o`` (eq. 6); the state of the epoch with the lowest
       training loss is kept. The memory bank then holds the patches of one batch of
       training images (``memory_size`` images) under the updated network, so its size
       does not grow with the data set.

    A test patch's score is the mean of its ``n_neighbors`` nearest memory distances
    (eq. 7-8); maps are upsampled bilinearly and smoothed; the image score is the
    maximum of the map.

    Parameters
    ----------
    extractor : PatchFeatureExtractor or None, default=None
        The feature extractor whose network is fine-tuned; ``None``:
        ``PatchFeatureExtractor(layers=("blocks.2", "blocks.4"), normalize="imagenet")``
        (EfficientNet-Lite0, 40 + 112 = 152 channels, 3 x 3 local pooling). Both are
        pinned because SMCC's benchmark figures were measured with them: the
        extractor's cross-set defaults (``"auto"`` normalisation, blocks 2 + 3) are not
        measured for SMCC yet. An extractor passed with ``layers=None`` uses the
        extractor's default layers. ``fit`` trains a clone; the object passed is never changed. Its
        parameters are nested (``smcc__extractor__backbone`` in a grid search) when
        an extractor is passed.
    n_components : int, default=10
        Components ``k`` of the Gaussian mixture (the paper: 10).
    sampling_rate : float in (0, 1], default=0.1
        Coreset size as a fraction of the training patches (the paper's ``r``).
    center_set : {"coreset", "means"}, default="coreset"
        ``"coreset"``: the mixture means and the sampled coreset patches are the
        centers (the paper's "center set", whose size the sampling rate sets);
        ``"means"``: the ``n_components`` mixture means only.
    self_update : bool, default=True
        Fine-tune the network with ``losses``; ``False`` keeps the pretrained network
        (the paper's "no loss" row of Table IV).
    losses : tuple of {"center", "offset"}, default=("center", "offset")
        ``"center"`` = ``L_c`` (eq. 4), ``"offset"`` = ``L_o`` (eq. 5), for Table IV's
        ablation.
    trainable_layers : tuple of str or None, default=None
        Prefixes of the network's parameter names that are fine-tuned (e.g.
        ``("body.blocks.4",)``); ``None``: every parameter (the paper updates the
        pretrained backbone). The rest stays frozen.
    epochs : int, default=3
        Passes over the training images in the self-update.
    max_iter : int or None, default=None
        Cap on optimisation steps (``n_iter_``), whichever of the two ends first.
    batch_size : int, default=16
        Images per step (the paper: 16).
    memory_size : int or None, default=None
        Images whose patches form the memory bank; ``None``: ``batch_size`` (the
        paper's "one batch").
    lr : float, default=1e-3
    weight_decay : float, default=5e-4
    solver : {"adam", "adamw", "sgd"}, default="adam"
        The paper: Adam, lr 1e-3, weight decay 5e-4.
    n_neighbors : int, default=3
        ``K`` of eq. 8 (the paper does not give it); clipped with a warning to the
        memory patches a training patch may match (``n_neighbors_``; the rule:
        :func:`~skad.detectors.clip_to_data`).
    nn_method : {"auto", "exact", "cells", "ivf", "nndescent"}, default="auto"
        Search of the memory and of the center set (see
        :func:`skad._kernels.ann.build_index`); ``"auto"``: ``"cells"`` from 10,000
        rows on the CPU, else exact.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How ``offset_`` follows from the calibration scores when ``false_alarm_rate``
        is None: "auto" puts it at the least normal calibration image (none flagged);
        a float flags that fraction of them.
    calibration : {"auto", "in_sample", "cv", "holdout"} or float in (0, 1), default="auto"
        The normal images whose scores set ``offset_`` (``calibration_scores_``):
        "in_sample" / "auto" the training images (a memory image is scored without its
        own patches; the others were not in the memory but the network was trained on
        them); a float holds that fraction of the training images out of fit (the
        split-conformal setting, see ``doc/operating.md``); "cv" refits 5 times,
        "holdout" once (a fifth scored).
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal images flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (a guarantee with a float ``calibration``).
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
        Where the network trains and runs (the fitted extractor clone is moved there).
    random_state : int, RandomState instance or None, default=None
        Seeds the coreset, the mixture, batch order and the memory images.
    verbose : bool, default=False
        Progress bars for feature extraction and training.

    Attributes
    ----------
    extractor_ : PatchFeatureExtractor
        The fitted (and, with ``self_update``, fine-tuned) clone of ``extractor``.
    gmm_weights_, gmm_means_ : ndarray
        The weighted mixture fitted on the coreset (the means are the first centers).
    coreset_indices_ : ndarray of int64, shape (m,)
        Training patches sampled into the coreset (rows of the image-major patch order
        of the pretrained features; with ``center_set="coreset"`` they are the other
        centers).
    coreset_weights_ : ndarray of float64, shape (m,)
        Their weights ``1 / (m q(x))``.
    n_centers_ : int
        Size of the center set ``S`` used by the self-update.
    memory_ : ndarray of float32, shape (memory_size * h * w, C)
        The memory bank (rows of the memory images' patch maps).
    memory_indices_ : ndarray of int64
        Training images whose patches are in ``memory_``.
    n_neighbors_ : int
        ``K`` used.
    loss_history_ : list of float
        Mean training loss of each epoch.
    n_iter_ : int
        Optimisation steps taken.
    best_epoch_ : int or None
        Epoch whose state was kept.
    nn_method_ : str
        The memory search used.
    device_ : torch.device
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    Choices where the paper is silent or ambiguous:

    - Fusion: the paper fuses "through operations such as convolution and concat" all
      ResNet stages; skad uses the extractor's fusion (each layer locally pooled,
      resized to the finest map, concatenated). Pass an extractor with other
      ``layers`` to change it.
    - Trainable part: all parameters of the extractor's network (``trainable_layers``
      narrows it); batch-norm layers keep their ImageNet statistics (eval mode) while
      their affine parameters train, since batch statistics of 16 similar images would
      move the features between training and inference.
    - Distances are Euclidean (``sqrt(||p - c||^2 + 1e-12)``). The nearest and second
      nearest centers are found without gradient, by the same search as the memory
      (``nn_method``; the "cells" index over the fixed centers on the CPU from 10,000
      centers: a miss gives a slightly farther center); the losses' gradients then flow
      through those two distances only, which is the gradient of the min.
    - Losses are means over patches (not sums), so ``lr`` does not depend on the map
      size; Adam is insensitive to the scale anyway.
    - "The best set": without labels, the epoch with the lowest mean training loss.
    - Memory: the patches of ``memory_size`` training images drawn with
      ``random_state``, extracted with the kept network after training.
    - Sensitivity (Algorithm 2): ``alpha = 16 (log2 k + 2)``, Lucic et al.'s bound for
      k-means++ seeding; ``k`` bicriteria centers.
    - Image score: maximum of the unsmoothed patch map.

    What trains and what is frozen: the extractor clone's network (``extractor_.module_``)
    trains in ``fit`` (the parameters ``trainable_layers`` selects); centers, mixture and
    memory are fixed once computed. ``extractor_.transform`` always runs in inference mode.

    References
    ----------
    Y. Liu, X. Gao, et al. "Unsupervised Image Anomaly Detection and Localization in
    Industry Based on Self-Updated Memory and Center Clustering", IEEE Transactions on
    Industrial Informatics, 2023.
    M. Lucic, M. Faulkner, A. Krause, D. Feldman. "Training Gaussian Mixture Models at
    Scale via Coresets", JMLR 18, 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import SMCC
    >>> from skad.features import PatchFeatureExtractor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(100, 140, (6, 64, 64, 3), dtype=np.uint8)
    >>> X_test = X[:2].copy(); X_test[1, 20:40, 20:40] = 255
    >>> det = SMCC(PatchFeatureExtractor(input_size=64), epochs=1, batch_size=3,
    ...            random_state=0).fit(X)
    >>> scores = det.anomaly_score(X_test)
    >>> bool(scores[1] > scores[0]), det.anomaly_map(X_test, output_size=64).shape
    (True, (2, 64, 64))
    """

    #: the registry gives it the run's extractor (any extractor's features work)
    _shares_run_extractor = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        **training_constraints(),
        "extractor": [PatchFeatureExtractor, None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "sampling_rate": [Interval(Real, 0, 1, closed="right")],
        "center_set": [StrOptions({"coreset", "means"})],
        "self_update": ["boolean"],
        "losses": [tuple, list],
        "trainable_layers": [tuple, list, None],
        "memory_size": [Interval(Integral, 1, None, closed="left"), None],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "nn_method": [StrOptions({"auto", "exact", "cells", "ivf", "nndescent"})],
    }

    def __init__(
        self,
        extractor=None,
        *,
        n_components=10,
        sampling_rate=0.1,
        center_set="coreset",
        self_update=True,
        losses=SMCC_LOSSES,
        trainable_layers=None,
        epochs=3,
        max_iter=None,
        batch_size=16,
        memory_size=None,
        lr=1e-3,
        weight_decay=5e-4,
        solver="adam",
        n_neighbors=3,
        nn_method="auto",
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        device="auto",
        random_state=None,
        verbose=False,
    ):
        self.extractor = extractor
        self.n_components = n_components
        self.sampling_rate = sampling_rate
        self.center_set = center_set
        self.self_update = self_update
        self.losses = losses
        self.trainable_layers = trainable_layers
        self.epochs = epochs
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.memory_size = memory_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.solver = solver
        self.n_neighbors = n_neighbors
        self.nn_method = nn_method
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_losses(self):
        losses = tuple(self.losses)
        unknown = [loss for loss in losses if loss not in SMCC_LOSSES]
        if unknown or len(set(losses)) != len(losses):
            raise ValueError(
                f"losses: expected distinct names among {SMCC_LOSSES}; got {self.losses!r}"
            )
        if self.self_update and not losses:
            raise ValueError(
                "losses: self_update=True needs at least one loss; use self_update=False "
                "for the pretrained network"
            )
        return losses

    def _trainable_parameters(self, module):
        named = list(module.named_parameters())
        if self.trainable_layers is None:
            chosen = [p for _, p in named]
        else:
            prefixes = tuple(self.trainable_layers)
            chosen = [p for name, p in named if name.startswith(prefixes)]
            if not chosen:
                some = sorted({n.rsplit(".", 2)[0] for n, _ in named})[:8]
                raise ValueError(
                    f"trainable_layers: no parameter name starts with {prefixes!r}; "
                    f"names start like {some}"
                )
        wanted = {id(p) for p in chosen}
        for _, p in named:
            p.requires_grad_(id(p) in wanted)
        return chosen

    def _make_extractor(self):
        """An unfitted clone of ``extractor`` (``None``: SMCC's pinned default)."""
        if self.extractor is None:
            return PatchFeatureExtractor(layers=SMCC_DEFAULT_LAYERS, normalize="imagenet")
        return clone(self.extractor)

    # --------------------------------------------------------------------- fit
    def _fit(self, X):
        losses = self._check_losses()
        rng = check_random_state(self.random_state)
        self._fit_device()
        ext = self._make_extractor().set_params(device=self.device_, verbose=self.verbose)
        ext.fit(X)
        feats = ext.transform(X)
        n, c, h, w = feats.shape
        rows = patch_rows(feats)
        del feats

        # center set S (Algorithm 2)
        m = max(self.n_components, math.ceil(self.sampling_rate * len(rows)))
        idx, weights = sensitivity_coreset(rows, m, self.n_components, random_state=rng,
                                           device=self.device_)
        # 20 EM steps: on bottle's coreset EM converges in 23 (tol 1e-3) and the means
        # after 20 are within 0.03 of the converged ones (norms about 64)
        self.gmm_weights_, means, _, _, _ = weighted_gmm(
            rows[idx], weights, self.n_components, max_iter=20, random_state=rng)
        self.gmm_means_ = means.astype(np.float32)
        self.coreset_indices_, self.coreset_weights_ = idx, weights
        parts = [self.gmm_means_] + ([rows[idx]] if self.center_set == "coreset" else [])
        centers = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        self.n_centers_ = len(centers)
        del rows

        if self.self_update:
            result = self._self_update(ext, X, centers, losses, rng)
            record_training(self, result)
        else:
            self.loss_history_, self.n_iter_, self.best_epoch_ = [], 0, None
        self.extractor_ = ext

        # memory bank: one batch of training images under the kept network
        size = min(self.batch_size if self.memory_size is None else self.memory_size, n)
        self.memory_indices_ = np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
        train_feats = ext.transform(X)
        self.feature_shape_ = train_feats.shape[2:]
        self.memory_ = patch_rows(train_feats[self.memory_indices_])
        # the training scores leave a memory image's own patches out (_offset_scores)
        hw = int(np.prod(self.feature_shape_))
        clip_to_data(self, "n_neighbors", self.n_neighbors,
                     len(self.memory_) - (hw if size >= 2 else 0),
                     "memory patches of the other memory images")
        self.index_ = build_index(self.memory_, method=self._search_method(len(self.memory_)),
                                  random_state=rng, device=self.device_)
        self.nn_method_ = self.index_.method_
        self._train_feats = train_feats  # for _offset_scores, dropped there
        return self

    def _search_method(self, n_rows):
        if self.nn_method != "auto":
            return self.nn_method
        approx = n_rows >= SMCC_APPROX_THRESHOLD and self.device_.type == "cpu"
        return "cells" if approx else "exact"

    def _self_update(self, ext, X, centers, losses, rng):
        import torch

        module = ext.module_
        params = self._trainable_parameters(module)
        # the centers are fixed: one index serves every step's nearest-center search
        center_index = build_index(centers, method=self._search_method(len(centers)),
                                   random_state=rng, device=self.device_)
        centers = torch.from_numpy(centers).to(self.device_)

        def set_mode():
            module.train()
            for sub in module.modules():  # keep ImageNet batch-norm statistics
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    sub.eval()

        def distance(p, c):
            return torch.sqrt(((p - c) ** 2).sum(dim=1) + 1e-12)

        def step(indices, batch, step_rng):
            set_mode()
            f = module(ext.to_tensor(batch))
            p = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            k = 2 if "offset" in losses else 1
            _, nearest = center_index.query(p.detach().cpu().numpy(), k)
            nearest = torch.from_numpy(nearest).to(self.device_)
            d1 = distance(p, centers[nearest[:, 0]])
            loss = p.new_zeros(())
            if "center" in losses:
                loss = loss + d1.mean()  # L_c, eq. 4
            if "offset" in losses:
                loss = loss + (d1 - distance(p, centers[nearest[:, 1]])).mean()  # L_o, eq. 5
            return loss

        try:
            result = train_loop(
                step, [module], X, batch_size=self.batch_size, rng=rng, solver=self.solver,
                lr=self.lr, weight_decay=self.weight_decay, epochs=self.epochs,
                max_iter=self.max_iter, parameters=params, verbose=self.verbose,
                desc="SMCC self-update",
            )
        finally:
            for p in module.parameters():
                p.requires_grad_(True)
            module.eval()
        return result

    def _set_offset(self, X):
        try:
            super()._set_offset(X)
        finally:  # the training features kept by _fit are never part of the model
            self.__dict__.pop("_train_feats", None)

    def __setstate__(self, state):
        if "memory_" in state and "n_neighbors_" not in state:  # before n_neighbors_
            state = dict(state, n_neighbors_=state["n_neighbors"])
        if "memory_image_indices_" in state:  # named memory_indices_ as in MemSeg since 0.1
            state = dict(state)
            state["memory_indices_"] = state.pop("memory_image_indices_")
        super().__setstate__(state)

    def _offset_scores(self, X):
        feats = self.__dict__.pop("_train_feats", None)
        if feats is None or len(feats) != len(X):
            feats = self.extractor_.transform(X)
        n, _, h, w = feats.shape
        rows = patch_rows(feats)
        if len(self.memory_indices_) < 2:
            dist, _ = self.index_.query(rows, self.n_neighbors_)
        else:
            # a memory image's patches are scored without its own patches
            dist, _ = self.index_.query(
                rows, self.n_neighbors_, query_groups=np.repeat(np.arange(n), h * w),
                bank_groups=np.repeat(self.memory_indices_, h * w))
        maps = dist.mean(axis=1).reshape(n, h, w)
        return maps.reshape(n, -1).max(axis=1)

    # ------------------------------------------------------------------- score
    def _score(self, X):
        feats = self.extractor_.transform(X)
        n, _, h, w = feats.shape
        dist, _ = self.index_.query(patch_rows(feats), self.n_neighbors_)
        maps = dist.mean(axis=1).reshape(n, h, w)  # S_c, eq. 8
        return maps.reshape(n, -1).max(axis=1), maps
