"""LocalOCC: Lv et al.'s anomaly localisation module (local one-class classification + DGM)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state
from ..utils._sklearn_compat import Interval, StrOptions

from .._training import record_training, seeded, train_loop, training_constraints
from ..utils._torch import cpu_state_dict
from ..features import PatchFeatureExtractor
from ..synthesis import DefectGenerator
from ._base import BaseDetector, ImageDetectorMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["LocalOCC", "local_occ_loss"]

#: the extractor layers standing for ResNet-18's stages 1-3 (strides 4, 8, 16)
STAGE_LAYERS = {
    "resnet18": ("layer1", "layer2", "layer3"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    "efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
    "efficientnet_lite1": ("blocks.1", "blocks.2", "blocks.4"),
    "efficientnet_lite2": ("blocks.1", "blocks.2", "blocks.4"),
}


def cosine_distance(a, b, eps=1e-8):
    """``dist(a, b) = 1 - a.b / (|a| |b|)`` over channels of ``(n, D, h, w)`` maps (eq. 4)."""
    import torch.nn.functional as F

    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=eps)


def local_occ_loss(f_m, f_c, mask=None, delta=0.1):
    """``L_map`` of eq. 5 (eq. 3 where ``mask`` is None or all zero).

    Parameters
    ----------
    f_m : Tensor of shape (n, D, h, w)
        Mapped features ``F_M``.
    f_c : Tensor of shape (1, D, h, w) or (1, D, 1, 1)
        Target ``F_C`` (a map, or one global vector).
    mask : Tensor of shape (n, h, w) in {0, 1}, optional
        ``M_s``: 1 at positions of generated defects.
    delta : float
        Margin of the hinge on defect positions.

    Returns
    -------
    loss : scalar Tensor
        Mean over positions (the ``1 / wh`` of eq. 5) and images.
    """
    import torch

    half = 0.5 * cosine_distance(f_m, f_c)
    if mask is None:
        return half.mean()  # eq. 3
    return ((1 - mask) * half + mask * torch.relu(delta - half)).mean()  # eq. 5


def _mapping_network(in_channels, hidden, out_channels):
    """``N_M``: two 3x3 convolutions with ReLU and a 1x1 output layer."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    )


class _Mapping:
    """``F_M = N_M(F_Mixed)`` (+ ``P F_Mixed`` with ``residual``); plain torch, no state of its own."""

    @staticmethod
    def forward(net, projection, x, residual):
        import torch.nn.functional as F

        out = net(x)
        if residual:
            out = out + F.conv2d(x, projection[:, :, None, None])
        return out


class LocalOCC(DeviceMixin, ImageDetectorMixin, BaseDetector):
    """Local one-class classification with generated defects (Lv et al. 2022, ALM + DGM).

    1. ``F_Mixed``: the extractor's backbone stages 1-3 (ResNet-18 ``layer1-3`` in the
       paper; EfficientNet-Lite blocks 1, 2 and 4 by default, the same strides 4, 8 and
       16), each resized to the finest map and concatenated, then average-pooled by
       ``downsample``.
    2. Target ``F_C``: the per-position mean over the training images of the
       dimension-reduced ``F_Mixed`` (a fixed random projection ``P`` to
       ``n_components`` channels): one center per position ("local OCC"), or one
       global vector with ``target="global"`` (Table 1's "Vector").
    3. A mapping network ``N_M`` is trained so that ``F_M = N_M(F_Mixed)`` is near
       ``F_C`` at every position, ``L = 0.5 dist(F_M, F_C)`` (cosine distance, eq. 3-4),
       and, with ``use_dgm``, far from it on generated defects: ``max(0, delta - 0.5
       dist)`` at defect positions (eq. 5), the defects drawn by ``dgm``
       (:class:`~skad.synthesis.DefectGenerator`, Lv et al.'s DGM).

    The anomaly map is the per-position cosine distance between ``F_M`` and ``F_C``,
    upsampled bilinearly and smoothed (``sigma``); the image score is its maximum.

    Parameters
    ----------
    extractor : PatchFeatureExtractor or None, default=None
        The (frozen) backbone. ``None``: ``PatchFeatureExtractor(layers=("blocks.1",
        "blocks.2", "blocks.4"), normalize="imagenet")`` (EfficientNet-Lite0, 224 px,
        3 x 3 local pooling; ImageNet statistics: those LocalOCC's benchmark figures were
        measured with; the extractor's cross-set default ``"auto"`` is not measured for
        LocalOCC yet).
        An extractor whose ``layers`` is None gets the stage-1-3 layers of its
        backbone (:data:`STAGE_LAYERS`, LocalOCC's own; the extractor's default layers,
        Lite blocks 2 + 3, never apply). ``fit`` uses a clone.
    downsample : int, default=2
        Average pooling of ``F_Mixed`` (stride 4 at the finest layer) before ``N_M``;
        2 gives stride 8 (28 x 28 positions at 224 px). 1 keeps stride 4.
    n_components : int or None, default=128
        Channels of the reduced features (the target space); ``None``: no reduction;
        clipped with a warning to the mixed features' channels (``n_components_``;
        the rule: :func:`~skad.detectors.clip_to_data`).
    hidden : int, default=128
        Channels of ``N_M``'s hidden layers.
    residual : bool, default=True
        ``F_M = P F_Mixed + N_M(F_Mixed)`` with ``N_M``'s last layer starting at zero,
        so the untrained model is the cosine distance of the reduced features to
        their per-position mean, and training refines it. ``False``: ``F_M =
        N_M(F_Mixed)`` (default initialisation).
    target : {"map", "global"}, default="map"
        Per-position centers (the paper's method) or one global center (Table 1).
    use_dgm : bool, default=True
        Train with generated defects (eq. 5); ``False``: normal images only (eq. 3).
    dgm : DefectGenerator or None, default=None
        The defect generator (cloned); ``None``: ``DefectGenerator()`` (darken,
        lighten, paste procedural textures in one rectangle of 10-40 % of each side).
        Pass ``DefectGenerator(content_source=folder)`` to paste natural images as
        the paper does.
    dgm_ratio : float in (0, 1], default=0.5
        Fraction of each batch replaced by its defective version (the rest stays
        normal).
    margin : float, default=0.1
        ``delta`` of eq. 5.
    augment : bool, default=False
        Random rotations and shifts of the training images (Table 2's AUG).
    aug_rotation : float, default=15.0
        Largest rotation (degrees) of ``augment``.
    aug_shift : float, default=0.0625
        Largest shift of ``augment``, as a fraction of the side (0.0625 = 14 px at
        224, the shift of ``make_rto``'s 0.875 crop).
    epochs : int, default=6
        Passes over the training images (the paper: 300, by parameter).
    max_iter : int or None, default=None
    batch_size : int, default=32
        The paper: 32.
    lr : float, default=1e-3
        The paper: 1e-3.
    weight_decay : float, default=0.0
    solver : {"adam", "adamw", "sgd"}, default="adam"
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"``: ``offset_`` at the least normal calibration image (none
        flagged); a float flags that fraction of them.
    calibration : {"auto", "in_sample", "cv"} or float in (0, 1), default="auto"
        The normal images whose scores set ``offset_`` (``calibration_scores_``):
        "in_sample" / "auto" the training images, which the network was trained on
        (biased low: new good images can be flagged more often than
        ``false_alarm_rate`` says); a float holds that fraction of the training images
        out of fit (the split-conformal setting: the network trains on the rest; see
        ``doc/operating.md``); "cv" trains 5 more times.
    false_alarm_rate : float in (0, 1) or None, default=None
        Target rate of normal images flagged: ``offset_`` at the split-conformal
        quantile of the calibration scores (a guarantee with a float ``calibration``).
    sigma : float, default=4.0
        Gaussian smoothing (pixels) of upsampled maps.
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the projection, ``N_M``'s weights, batch order, defects and augmentation.
    verbose : bool, default=False

    Attributes
    ----------
    extractor_ : PatchFeatureExtractor
        The fitted clone (frozen).
    n_components_ : int
        Channels of the target space used.
    projection_ : ndarray of float32, shape (n_components, C)
        ``P`` (orthonormal rows; the identity with ``n_components=None``).
    center_ : ndarray of float32, shape (n_components, h, w) or (n_components, 1, 1)
        ``F_C``.
    mapping_ : torch.nn.Sequential
        ``N_M``, on ``device_``.
    feature_shape_ : (int, int)
        ``(h, w)`` of the maps.
    loss_history_ : list of float
    n_iter_ : int
    best_epoch_ : int or None
    device_ : torch.device
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    Choices where the paper is silent:

    - Backbone: ResNet-18 ImageNet weights are not available offline, so stages 1-3 are
      mapped onto EfficientNet-Lite0 blocks of the same strides (4, 8, 16); pass
      ``PatchFeatureExtractor("resnet18")`` for the paper's (``layer1-3`` are then
      chosen). The backbone is frozen; only ``N_M`` trains.
    - "Scaled and concatenated": every stage is resized to the finest one (the
      extractor's fusion), then the mixed map is average-pooled by ``downsample``
      (the cost of ``N_M`` is quadratic in the map side).
    - Dimension reduction of ``F_C``: a random Gaussian projection with orthonormal
      rows, fixed by ``random_state`` (it preserves cosine geometry on average and needs
      no fitting); ``F_C`` is the mean of the projected maps.
    - ``N_M``: 3x3 conv + ReLU, 3x3 conv + ReLU, 1x1 conv; with ``residual`` its output
      is added to the projected input (last layer zero-initialised).
    - DGM: ``dgm_ratio`` of each batch gets one defect; ``M_s`` is the mask's area
      fraction per feature position thresholded at 0.5.
    - Training: the clean training features are extracted once and cached (the
      backbone is frozen); defect and augmented images go through the backbone at
      each step. The epoch with the lowest training loss is kept.
    - Image score: the maximum of the unsmoothed map.
    - The paper's IMM is :class:`skad.alignment.ImageAligner`, a separate pipeline
      step: ``make_pipeline(ImageAligner(), LocalOCC())``.

    References
    ----------
    C. Lv, Z. Zhang, F. Shen, F. Zhang. "Unsupervised Automatic Defect Inspection based
    on Image Matching and Local One-class Classification", CVPR Workshops 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import LocalOCC
    >>> from skad.features import PatchFeatureExtractor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(100, 140, (6, 64, 64, 3), dtype=np.uint8)
    >>> X_test = X[:2].copy(); X_test[1, 20:40, 20:40] = 255
    >>> det = LocalOCC(PatchFeatureExtractor(input_size=64), epochs=2, batch_size=3,
    ...                random_state=0).fit(X)
    >>> scores = det.anomaly_score(X_test)
    >>> bool(scores[1] > scores[0]), det.anomaly_map(X_test, output_size=64).shape
    (True, (2, 64, 64))
    """

    #: the registry gives it the run's extractor (its backbone; stage 1-3 layers are
    #: chosen when the extractor's ``layers`` is None)
    _shares_run_extractor = True

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        **training_constraints(),
        "extractor": [PatchFeatureExtractor, None],
        "downsample": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "residual": ["boolean"],
        "target": [StrOptions({"map", "global"})],
        "use_dgm": ["boolean"],
        "dgm": [DefectGenerator, None],
        "dgm_ratio": [Interval(Real, 0, 1, closed="right")],
        "margin": [Interval(Real, 0, 1, closed="right")],
        "augment": ["boolean"],
        "aug_rotation": [Interval(Real, 0, 180, closed="both")],
        "aug_shift": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(
        self,
        extractor=None,
        *,
        downsample=2,
        n_components=128,
        hidden=128,
        residual=True,
        target="map",
        use_dgm=True,
        dgm=None,
        dgm_ratio=0.5,
        margin=0.1,
        augment=False,
        aug_rotation=15.0,
        aug_shift=0.0625,
        epochs=6,
        max_iter=None,
        batch_size=32,
        lr=1e-3,
        weight_decay=0.0,
        solver="adam",
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        device="auto",
        random_state=None,
        verbose=False,
    ):
        self.extractor = extractor
        self.downsample = downsample
        self.n_components = n_components
        self.hidden = hidden
        self.residual = residual
        self.target = target
        self.use_dgm = use_dgm
        self.dgm = dgm
        self.dgm_ratio = dgm_ratio
        self.margin = margin
        self.augment = augment
        self.aug_rotation = aug_rotation
        self.aug_shift = aug_shift
        self.epochs = epochs
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.solver = solver
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- helpers
    def _make_extractor(self):
        if self.extractor is None:
            base = PatchFeatureExtractor(layers=STAGE_LAYERS["efficientnet_lite0"],
                                         normalize="imagenet")
        else:
            base = clone(self.extractor)
            if base.layers is None and isinstance(base.backbone, str):
                base.set_params(layers=STAGE_LAYERS.get(base.backbone))
        return base.set_params(device=self.device_, verbose=False)

    def _mixed(self, tensor):
        """``F_Mixed`` of a normalised image tensor, pooled by ``downsample``."""
        import torch.nn.functional as F

        f = self.extractor_.module_(tensor).float()
        if self.downsample > 1:
            f = F.avg_pool2d(f, self.downsample, ceil_mode=True)
        return f.contiguous()

    def _map(self, mixed):
        return _Mapping.forward(self.mapping_, self._projection_t, mixed, self.residual)

    @property
    def _projection_t(self):
        import torch

        cached = getattr(self, "_proj_cache", None)
        if cached is None or cached.device != self.device_:
            cached = torch.from_numpy(self.projection_).to(self.device_)
            self._proj_cache = cached
        return cached

    @property
    def _center_t(self):
        import torch

        cached = getattr(self, "_center_cache", None)
        if cached is None or cached.device != self.device_:
            cached = torch.from_numpy(self.center_).to(self.device_)[None]
            self._center_cache = cached
        return cached

    def _augment(self, batch, rng):
        """Random rotation and shift of float images ``(b, H, W, 3)`` (reflection padding)."""
        import torch

        from ..alignment import affine_matrices, warp

        b, h, w = batch.shape[:3]
        params = np.column_stack([
            rng.uniform(-self.aug_shift, self.aug_shift, b) * w,
            rng.uniform(-self.aug_shift, self.aug_shift, b) * h,
            np.radians(rng.uniform(-self.aug_rotation, self.aug_rotation, b)),
        ])
        t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        theta = affine_matrices(torch.from_numpy(params).float(), (h, w))
        return warp(t, theta).permute(0, 2, 3, 1).numpy()

    # --------------------------------------------------------------------- fit
    def _fit(self, X):
        import torch
        import torch.nn.functional as F

        rng = check_random_state(self.random_state)
        self._fit_device()
        self._proj_cache = self._center_cache = None
        ext = self._make_extractor().fit(X)
        self.extractor_ = ext
        bs = ext._batch_size()

        # clean F_Mixed of the training images, extracted once (the backbone is frozen)
        feats = []
        with torch.inference_mode():
            for sl, batch in X.iter_batches(bs):
                feats.append(self._mixed(ext.to_tensor(batch)).cpu())
        feats = torch.cat(feats)
        n, c, h, w = feats.shape
        self.feature_shape_ = (h, w)
        d = clip_to_data(self, "n_components", self.n_components, c,
                         "channels of the mixed features")
        if self.n_components is None:
            proj = np.eye(c, dtype=np.float32)
        else:
            # P: Gaussian matrix with orthonormal rows (QR), fixed by random_state
            q, _ = np.linalg.qr(rng.standard_normal((c, d)))
            proj = np.ascontiguousarray(q.T, dtype=np.float32)
        self.projection_ = proj
        reduced_mean = torch.einsum("dc,nchw->dhw", torch.from_numpy(proj), feats) / n
        if self.target == "global":
            center = reduced_mean.mean(dim=(1, 2), keepdim=True)  # one vector (Table 1)
        else:
            center = reduced_mean  # F_C: a center per position
        self.center_ = center.numpy().astype(np.float32)
        with seeded(rng, self.device_):
            self.mapping_ = _mapping_network(c, self.hidden, d).to(self.device_)
        if self.residual:
            torch.nn.init.zeros_(self.mapping_[-1].weight)
            torch.nn.init.zeros_(self.mapping_[-1].bias)
        self._proj_cache = self._center_cache = None

        dgm = None
        if self.use_dgm:
            dgm = DefectGenerator() if self.dgm is None else clone(self.dgm)
        n_defect = (lambda b: max(1, int(round(self.dgm_ratio * b)))) if dgm else (lambda b: 0)
        center_t = self._center_t
        device = self.device_

        def step(indices, batch, step_rng):
            self.mapping_.train()
            b = len(indices)
            k = n_defect(b)
            if self.augment:
                batch = self._augment(batch, step_rng)
            # clean images: cached features unless augmented
            clean = None if self.augment or k == b else feats[indices[k:]].to(device)
            parts, masks = [], []
            if k:
                images, m = dgm.sample(batch[:k], rng=step_rng)
                with torch.no_grad():
                    parts.append(self._mixed(ext.to_tensor(images)))
                m = torch.from_numpy(m).to(device)[:, None]
                masks.append((F.adaptive_avg_pool2d(m, (h, w))[:, 0] > 0.5).float())  # M_s
            if clean is None and k < b:
                with torch.no_grad():
                    parts.append(self._mixed(ext.to_tensor(batch[k:])))
            elif clean is not None:
                parts.append(clean)
            if k < b:
                masks.append(torch.zeros(b - k, h, w, device=device))
            x = torch.cat(parts)
            mask = torch.cat(masks) if dgm else None
            return local_occ_loss(self._map(x), center_t, mask, self.margin)

        ext.module_.eval()
        try:
            result = train_loop(
                step, [self.mapping_], X, batch_size=self.batch_size, rng=rng,
                solver=self.solver, lr=self.lr, weight_decay=self.weight_decay,
                epochs=self.epochs, max_iter=self.max_iter, verbose=self.verbose,
                desc="LocalOCC",
            )
        finally:
            self.mapping_.eval()
        record_training(self, result)
        return self

    # ------------------------------------------------------------------- score
    def _score(self, X):
        import torch

        ext = self.extractor_
        maps = np.empty((len(X), *self.feature_shape_), dtype=np.float32)
        ext.module_.eval()
        self.mapping_.eval()
        with torch.inference_mode():
            for sl, batch in X.iter_batches(ext._batch_size()):
                f_m = self._map(self._mixed(ext.to_tensor(batch)))
                dist = cosine_distance(f_m, self._center_t)  # heatmap, eq. 4
                if tuple(dist.shape[1:]) != self.feature_shape_:
                    raise ValueError(
                        f"X: images give feature maps of size {tuple(dist.shape[1:])}, "
                        f"not the {self.feature_shape_} of fit; use images of the "
                        "training size or a fixed extractor input_size"
                    )
                maps[sl] = dist.cpu().numpy()
        return maps.reshape(len(maps), -1).max(axis=1), maps

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_proj_cache", None)
        state.pop("_center_cache", None)
        net = state.pop("mapping_", None)
        if net is not None:
            state["_mapping_state"] = cpu_state_dict(net)
            state["_mapping_shape"] = (net[0].in_channels, net[0].out_channels,
                                       net[-1].out_channels)
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        state = dict(state)
        net_state = state.pop("_mapping_state", None)
        shape = state.pop("_mapping_shape", None)
        super().__setstate__(state)
        if net_state is None:
            return
        net = _mapping_network(*shape)
        net.load_state_dict(net_state, strict=True)
        self.mapping_ = net.to(self.device_).eval()
        self._proj_cache = self._center_cache = None
