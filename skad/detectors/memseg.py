"""MemSeg: memory-guided segmentation of simulated defects (Yang et al., EAAI 2023)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.utils import check_random_state
from ..utils._sklearn_compat import Interval, StrOptions
from torch import nn

from .._training import seeded, train_loop, training_constraints, warmup_cosine
from ..utils._torch import cpu_state_dict
from ..features import PatchFeatureExtractor
from ..synthesis import AnomalySynthesizer
from ..utils.validation import ImageSet
from ._base import BaseDetector, ImageDetectorMixin, clip_to_data
from ._device import DeviceMixin

__all__ = ["MEMSEG_LAYERS", "MemSeg"]

#: encoder taps per backbone family: (stride-2 skip, memory scales 1-3, deepest stage)
MEMSEG_LAYERS = {
    "efficientnet_lite": ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"),
    "resnet": ("relu", "layer1", "layer2", "layer3", "layer4"),
}


def _default_layers(backbone):
    if isinstance(backbone, str):
        for prefix, layers in MEMSEG_LAYERS.items():
            if backbone.startswith(prefix) or (prefix == "resnet" and "resnet" in backbone):
                return layers
    raise ValueError(
        f"extractor: no default MemSeg layers for backbone {backbone!r}; give the "
        "extractor five layers (stride-2 skip, three memory scales, deepest stage), "
        "e.g. layers=('relu', 'layer1', 'layer2', 'layer3', 'layer4') for a ResNet"
    )


# ----------------------------------------------------------------------------- network
class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _UpConv(nn.Module):
    """The paper's up-sampling layer: bilinear x2, then conv + BN + ReLU (Sec. 4.2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _ConvBNReLU(cin, cout)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), as MemSeg's MSFF uses it."""

    def __init__(self, channels, reduction=32):
        super().__init__()
        mid = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)                       # (b, c, h, 1)
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)       # (b, c, w, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(y_h))
        a_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))
        return x * a_h * a_w


class _MSFFBlock(nn.Module):
    """One scale of the MSFF module (Fig. 4): 3x3 conv keeping the channels, weighted by
    coordinate attention, then two 3x3 convs down to the encoder's channel count."""

    def __init__(self, cin, cout, use_ca):
        super().__init__()
        self.conv = nn.Conv2d(cin, cin, 3, padding=1)
        self.attn = CoordinateAttention(cin) if use_ca else None
        self.out = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1),
                                 nn.Conv2d(cout, cout, 3, padding=1))

    def forward(self, x):
        y = self.conv(x)
        if self.attn is not None:
            y = y * self.attn(x)
        return self.out(y)


class MemSegNetwork(nn.Module):
    """MemSeg's trainable head: MSFF, spatial attention and the U-Net decoder (Fig. 2).

    Takes the encoder's five maps ``[f0, II_1, II_2, II_3, f4]`` (stride 2, the three
    memory scales, the deepest stage) and the best difference information
    ``[DI*_1, DI*_2, DI*_3]`` (None without memory), returns 2-channel logits at
    ``out_size``.

    Parameters
    ----------
    channels : tuple of 5 int
        Channels of the encoder's five maps.
    use_memory, use_multiscale, use_spatial_attention, use_coordinate_attention : bool
        Table 5's modules.
    """

    def __init__(self, channels, *, use_memory=True, use_multiscale=True,
                 use_spatial_attention=True, use_coordinate_attention=True):
        super().__init__()
        c0, c1, c2, c3, c4 = (int(c) for c in channels)
        self.channels = (c0, c1, c2, c3, c4)
        self.use_memory = bool(use_memory)
        self.use_multiscale = bool(use_multiscale)
        self.use_spatial_attention = bool(use_spatial_attention) and self.use_memory
        k = 2 if self.use_memory else 1  # CI_n = [II_n, DI*_n]
        self.msff = nn.ModuleList(
            [_MSFFBlock(k * c, c, use_coordinate_attention) for c in (c1, c2, c3)])
        if self.use_multiscale:
            self.up32 = nn.Conv2d(c3, c2, 3, padding=1)
            self.up21 = nn.Conv2d(c2, c1, 3, padding=1)
        d0 = min(c0, 48)  # the reference code's 48 for ResNet-18's 64
        self.dec3 = _UpConv(c4, c3)
        self.dec2 = _UpConv(2 * c3, c2)
        self.dec1 = _UpConv(2 * c2, c1)
        self.dec0 = _UpConv(2 * c1, d0)
        self.skip0 = nn.Conv2d(c0, d0, 3, padding=1)
        self.dec_mask = _UpConv(2 * d0, d0)
        self.final = nn.Conv2d(d0, 2, 3, padding=1)

    def attention_maps(self, di):
        """``M_1, M_2, M_3`` of eq. 5-7 (channel means of DI*, multiplied coarse to fine)."""
        m3 = di[2].mean(dim=1, keepdim=True)                                    # eq. 5
        m2 = di[1].mean(dim=1, keepdim=True) * _up(m3, di[1].shape[-2:])        # eq. 6
        m1 = di[0].mean(dim=1, keepdim=True) * _up(m2, di[0].shape[-2:])        # eq. 7
        return m1, m2, m3

    def forward(self, feats, di, out_size):
        f0, ii1, ii2, ii3, f4 = feats
        ci = [ii1, ii2, ii3] if di is None else [
            torch.cat([ii, d], dim=1) for ii, d in zip((ii1, ii2, ii3), di)]
        g1, g2, g3 = (blk(x) for blk, x in zip(self.msff, ci))
        if self.use_multiscale:  # up-sample, align channels, add (Sec. 3.3)
            g2 = g2 + self.up32(_up(g3, g2.shape[-2:]))
            g1 = g1 + self.up21(_up(g2, g1.shape[-2:]))
        if self.use_spatial_attention:
            m1, m2, m3 = self.attention_maps(di)
            g1, g2, g3 = g1 * m1, g2 * m2, g3 * m3
        x = torch.cat([self.dec3(f4, g3.shape[-2:]), g3], dim=1)
        x = torch.cat([self.dec2(x, g2.shape[-2:]), g2], dim=1)
        x = torch.cat([self.dec1(x, g1.shape[-2:]), g1], dim=1)
        x = torch.cat([self.dec0(x, f0.shape[-2:]), self.skip0(f0)], dim=1)
        return self.final(self.dec_mask(x, out_size))


def _up(x, size):
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------- kernels
def best_difference(ii, memory, exclude=None):
    """Best difference information DI* of eq. 3-4.

    Parameters
    ----------
    ii : list of 3 tensors ``(b, C_n, h_n, w_n)``
        The input's features at the memory scales (II).
    memory : list of 3 tensors ``(N, C_n, h_n, w_n)``
        The memory information MI.
    exclude : tensor of int64 ``(b,)`` or None
        A memory index each input may not pick (itself, for training images in the
        memory); -1 for none.

    Returns
    -------
    di : list of 3 tensors ``(b, C_n, h_n, w_n)``
        ``(II_n - MI*_n)^2`` for the memory sample ``*`` with the smallest total.
    best : tensor of int64 ``(b,)``
    """
    total = None
    for x, m in zip(ii, memory):
        # mean squared difference to each memory sample: ||x||^2 - 2 x.m + ||m||^2
        xf, mf = x.flatten(1), m.flatten(1)
        d = ((xf * xf).sum(1, keepdim=True) - 2.0 * xf @ mf.T
             + (mf * mf).sum(1)[None, :]) / xf.shape[1]
        total = d if total is None else total + d
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        total[rows, exclude[rows]] = torch.inf
    best = total.argmin(dim=1)  # eq. 4
    di = [(x - m[best]) ** 2 for x, m in zip(ii, memory)]  # eq. 3 (element-wise)
    return di, best


def focal_loss(prob, target, gamma=4.0):
    """Focal loss (Lin et al.) of 2-class probabilities, ``alpha_t = 1``, mean over pixels.

    ``prob`` is ``(b, 2, H, W)`` (softmax), ``target`` ``(b, H, W)`` in {0, 1}.
    """
    p1 = prob[:, 1]
    pt = torch.where(target > 0.5, p1, 1.0 - p1).clamp_min(1e-6)
    return (-((1.0 - pt) ** gamma) * torch.log(pt)).mean()  # eq. 9


def _subset(images, idx):
    if images.array is not None:
        return ImageSet(array=images.array[idx], name=images.name)
    return ImageSet(paths=[images.paths[i] for i in idx], name=images.name)


# --------------------------------------------------------------------------- estimator
class MemSeg(DeviceMixin, ImageDetectorMixin, BaseDetector):
    """MemSeg (Yang et al. 2023): a U-Net that segments simulated defects, guided by a memory.

    Training (the paper's Fig. 2):

    1. Memory: ``n_memory`` random normal training images go through the encoder's
       frozen stages; their maps at three scales are the memory information MI.
    2. Each training batch holds normal images and, for the other half, simulated
       anomalies (``synthesizer``: Perlin mask, texture or structural noise, eq. 1-2)
       with their masks as ground truth (normal images: an empty mask).
    3. The input's maps II at the three scales are compared with every memory sample;
       DI* is the squared difference to the most similar one (eq. 3-4). ``[II, DI*]``
       per scale goes through the MSFF module (3x3 conv, coordinate attention,
       multi-scale up-sample + add), is weighted by the spatial attention maps
       ``M_3 = mean(DI*_3)``, ``M_2 = mean(DI*_2) up(M_3)``, ``M_1 = mean(DI*_1) up(M_2)``
       (eq. 5-7) and feeds the U-Net decoder, whose 2-channel output (softmax; channel
       1 = anomaly) is trained with ``0.6 L1 + 0.4 focal (gamma 4)`` (eq. 8-10).

    The encoder's stages up to the deepest memory scale stay frozen (so memory and
    input features remain comparable); the later stages, MSFF and decoder train.
    Inference is one forward pass: the anomaly map is the predicted anomaly
    probability, the image score the mean of its ``top_k`` highest pixels.

    Parameters
    ----------
    extractor : PatchFeatureExtractor or None, default=None
        Gives the encoder (its backbone, input size and normalisation; its pooling and
        fusion are not used). ``None``: ``PatchFeatureExtractor(input_size=160,
        pooling=1, normalize="imagenet")`` on EfficientNet-Lite0 with MemSeg's layers
        (ImageNet statistics: those MemSeg's benchmark figures were measured with; the
        extractor's cross-set default ``"auto"`` is not measured for MemSeg yet). With
        ``layers=None`` the layers follow the backbone (:data:`MEMSEG_LAYERS`: Lite ``blocks.0``,
        ``blocks.1/2/4`` (memory, strides 4/8/16), ``blocks.6``; ResNet ``relu``,
        ``layer1-3`` (memory), ``layer4``, the paper's; MemSeg's own, never the
        extractor's default layers); else give five layers in that role order. ``fit`` trains a clone; the object passed is never changed.
    synthesizer : AnomalySynthesizer or None, default=None
        Simulates the anomalies (``None``: ``AnomalySynthesizer()``: procedural
        textures and structural noise, no foreground mask). Table 3's parts are its
        parameters: ``anomaly_types``, ``use_foreground`` (with
        ``foreground_invert`` / ``foreground_threshold`` per category),
        ``texture_source`` (a DTD folder in the paper). A clone draws from this
        detector's ``random_state``.
    n_memory : int or "auto", default="auto"
        Memory samples ``N``; ``"auto"``: ``min(30, n_train // 6)`` (at least 1): the
        paper's 30, and 10 for a set as small as toothbrush's 60 images; an integer is
        clipped with a warning to ``n_train - 1`` (``n_memory_``; the rule:
        :func:`~skad.detectors.clip_to_data`). Memory images
        are not used as training images (the paper's Fig. 8 trade-off) while at least
        ``batch_size`` others remain.
    use_memory, use_multiscale, use_spatial_attention, use_coordinate_attention : bool, default=True
        Table 5's modules. Without memory there is no DI* (the MSFF sees II alone) and
        no spatial attention.
    anomaly_fraction : float in (0, 1), default=0.5
        Share of each batch replaced by simulated anomalies (the paper: 4 of 8).
    l1_weight, focal_weight : float, default=0.6, 0.4
        ``lambda_l1`` and ``lambda_f`` of eq. 10 (Table 4: either may be 0).
    focal_gamma : float, default=4.0
    top_k : int, default=100
        Pixels averaged into the image score; images with fewer pixels average all of
        them (the one size limit known only when scoring: images of any size are
        accepted, so there is no fitted ``top_k_``).
    max_iter : int, default=500
        Optimisation steps (the paper: 2700).
    epochs : int or None, default=None
        Optional cap in passes over the training images.
    batch_size : int, default=8
        Images per step, normal and simulated together (the paper: 8).
    lr : float, default=3e-3
    weight_decay : float, default=5e-4
    solver : {"adam", "adamw", "sgd"}, default="adamw"
    warmup_ratio : float in [0, 1), default=0.1
        Linear warm-up share of the steps, followed by cosine decay to
        ``min_lr_ratio * lr`` (the authors' code's schedule).
    min_lr_ratio : float in [0, 1], default=0.0333
        The authors' 1e-4 / 3e-3.
    contamination : "auto" or float in (0, 0.5], default="auto"
        ``"auto"``: ``offset_`` at the least normal calibration image (in-sample:
        memory images compared with the other memory samples); a float flags that
        fraction of them.
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
        Gaussian smoothing (pixels) of maps resized by ``output_size``, skad's default
        for every detector (0: none, the paper's end-to-end maps).
    device : {"auto", "cpu", "cuda", "cuda:<index>"} or torch.device, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the memory choice, new layers, batch order and the synthesis.
    verbose : bool, default=False
        A progress bar over the training steps.

    Attributes
    ----------
    extractor_ : PatchFeatureExtractor
        The fitted clone; ``extractor_.module_.body`` is the encoder (later stages
        fine-tuned).
    network_ : MemSegNetwork
        MSFF, spatial attention and decoder, on ``device_``.
    synthesizer_ : AnomalySynthesizer
        The clone used in training.
    memory_ : list of 3 ndarray of float32, shape (N, C_n, h_n, w_n)
        The memory information MI.
    n_memory_ : int
        ``N`` used.
    memory_indices_ : ndarray of int64, shape (N,)
        Training images in the memory.
    trainable_parameters_ : list of str
        Encoder parameters that were trained (the rest were frozen).
    loss_history_ : list of float
        Mean training loss of each epoch.
    n_iter_ : int
    device_ : torch.device
    offset_ : float
    train_scores_ : ndarray of shape (n_samples,)

    Notes
    -----
    Choices where the paper is silent or ambiguous:

    - Encoder: the paper uses ResNet-18 with blocks 1-3 frozen. skad's default is the
      offline EfficientNet-Lite0: memory scales ``blocks.1`` (24 ch, stride 4),
      ``blocks.2`` (40, stride 8), ``blocks.4`` (112, stride 16), the stride-2 skip
      ``blocks.0`` and the deepest stage ``blocks.6`` (320, stride 32). Frozen = every
      parameter that feeds a memory scale (found by back-propagating from them: the
      stem and ``blocks.0-4`` for Lite0; ``conv1``, ``layer1-3`` for ResNet-18), kept
      in eval mode (fixed batch-norm statistics), so the memory stays valid; the rest
      (``blocks.5-6`` / ``layer4``) trains with batch statistics.
    - DI is the element-wise squared difference (the authors' code); the best memory
      sample minimises the sum over scales of the mean squared difference per scale.
    - MSFF: ``conv3x3(CI) * CA(CI)`` (the authors' code), then two 3x3 convs to the
      encoder's channel count; multi-scale fusion by bilinear up-sampling, a 3x3 conv
      aligning channels and addition; the spatial attention maps multiply the fused
      features unnormalised (as eq. 5-7).
    - Decoder: one conv-BN-ReLU per up-sampling step (the authors' code), widths
      following the encoder's channels, the last two ``min(C_0, 48)``; bilinear
      up-sampling everywhere; the output has the encoder's input size.
    - Optimiser: the paper gives lr 0.04 without an optimiser; the authors' code uses
      AdamW (lr 3e-3, weight decay 5e-4, warm-up + cosine), which is the default here.
    - Focal loss with ``alpha_t = 1`` (the authors' ``alpha=None``); L1 on the
      anomaly probability; both means over pixels.
    - Simulated half: the last ``round(anomaly_fraction * b)`` images of each shuffled
      batch are replaced by their simulation; masks are resized bilinearly to the
      output size and binarised at 0.5.
    - The final state is kept (the loss on fresh simulations does not rank epochs).
    - Default budget: 500 steps of 8 images at 160 px (the paper: 2700 at 256 px), so
      that a fit on 2 CPU cores stays within about 20 minutes (measured cost:
      ``benchmarks/results/memseg_bottle.md``). The maps come out at 160 px; pass
      ``output_size`` for the images' size.

    References
    ----------
    M. Yang, P. Wu, H. Feng, "MemSeg: A semi-supervised method for image surface defect
    detection using differences and commonalities", Engineering Applications of
    Artificial Intelligence 119, 2023.
    Q. Hou, D. Zhou, J. Feng, "Coordinate attention for efficient mobile network
    design", CVPR 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.detectors import MemSeg
    >>> from skad.features import PatchFeatureExtractor
    >>> X = np.random.default_rng(0).integers(100, 140, (8, 64, 64, 3), dtype=np.uint8)
    >>> det = MemSeg(PatchFeatureExtractor(input_size=64), n_memory=2, max_iter=2,
    ...              batch_size=4, top_k=10, random_state=0).fit(X)
    >>> det.anomaly_map(X[:2]).shape, det.anomaly_score(X[:2]).shape
    ((2, 64, 64), (2,))
    """

    _parameter_constraints: dict = {
        **BaseDetector._parameter_constraints,
        **training_constraints(),
        "extractor": [PatchFeatureExtractor, None],
        "synthesizer": [AnomalySynthesizer, None],
        "n_memory": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "use_memory": ["boolean"],
        "use_multiscale": ["boolean"],
        "use_spatial_attention": ["boolean"],
        "use_coordinate_attention": ["boolean"],
        "anomaly_fraction": [Interval(Real, 0, 1, closed="neither")],
        "l1_weight": [Interval(Real, 0, None, closed="left")],
        "focal_weight": [Interval(Real, 0, None, closed="left")],
        "focal_gamma": [Interval(Real, 0, None, closed="left")],
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "warmup_ratio": [Interval(Real, 0, 1, closed="left")],
        "min_lr_ratio": [Interval(Real, 0, 1, closed="both")],
    }

    def __init__(
        self,
        extractor=None,
        *,
        synthesizer=None,
        n_memory="auto",
        use_memory=True,
        use_multiscale=True,
        use_spatial_attention=True,
        use_coordinate_attention=True,
        anomaly_fraction=0.5,
        l1_weight=0.6,
        focal_weight=0.4,
        focal_gamma=4.0,
        top_k=100,
        max_iter=500,
        epochs=None,
        batch_size=8,
        lr=3e-3,
        weight_decay=5e-4,
        solver="adamw",
        warmup_ratio=0.1,
        min_lr_ratio=1e-4 / 3e-3,
        contamination="auto",
        calibration="auto",
        false_alarm_rate=None,
        sigma=4.0,
        device="auto",
        random_state=None,
        verbose=False,
    ):
        self.extractor = extractor
        self.synthesizer = synthesizer
        self.n_memory = n_memory
        self.use_memory = use_memory
        self.use_multiscale = use_multiscale
        self.use_spatial_attention = use_spatial_attention
        self.use_coordinate_attention = use_coordinate_attention
        self.anomaly_fraction = anomaly_fraction
        self.l1_weight = l1_weight
        self.focal_weight = focal_weight
        self.focal_gamma = focal_gamma
        self.top_k = top_k
        self.max_iter = max_iter
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.solver = solver
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio
        self.contamination = contamination
        self.calibration = calibration
        self.false_alarm_rate = false_alarm_rate
        self.sigma = sigma
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ pieces
    def _make_extractor(self):
        if self.extractor is None:
            return PatchFeatureExtractor(layers=MEMSEG_LAYERS["efficientnet_lite"],
                                         input_size=160, pooling=1, normalize="imagenet")
        ext = clone(self.extractor)
        if ext.layers is None:
            ext.set_params(layers=_default_layers(ext.backbone))
        elif isinstance(ext.layers, str) or len(ext.layers) != 5:
            raise ValueError(
                f"extractor: MemSeg needs five layers (stride-2 skip, three memory "
                f"scales, deepest stage); got layers={ext.layers!r}. Use layers=None for "
                "the backbone's defaults"
            )
        return ext.set_params(pooling=1)

    def _encode(self, x):
        feats = self.extractor_.module_.body(x)
        return [feats[name] for name in self.extractor_.layers_]

    def _freeze_encoder(self, body, X_size):
        """Freeze what feeds the memory scales; return the names of the rest."""
        size = self.extractor_.input_size_ or X_size
        probe = torch.zeros(1, 3, *size, device=self.device_)
        for p in body.parameters():
            p.requires_grad_(True)
            p.grad = None
        feats = body(probe)
        sum(feats[name].sum() for name in self.extractor_.layers_[1:4]).backward()
        trainable = []
        for name, p in body.named_parameters():
            frozen = p.grad is not None
            p.grad = None
            p.requires_grad_(not frozen)
            if not frozen:
                trainable.append(name)
        return trainable

    def _set_train_mode(self, body, trainable):
        prefixes = {name.rsplit(".", 1)[0] for name in trainable}
        body.eval()
        for name, sub in body.named_modules():
            if name in prefixes:
                sub.train()
        self.network_.train()

    def _memory_tensors(self):
        return [torch.from_numpy(m).to(self.device_) for m in self.memory_]

    def _forward(self, x, memory, exclude=None):
        feats = self._encode(x)
        di = None
        if self.use_memory:
            di, _ = best_difference(feats[1:4], memory, exclude)
        return self.network_(feats, di, tuple(x.shape[-2:]))

    # --------------------------------------------------------------------- fit
    def _fit(self, X):
        rng = check_random_state(self.random_state)
        self._fit_device()
        n = len(X)
        ext = self._make_extractor().set_params(device=self.device_, verbose=False)
        ext.fit(X)
        self.extractor_ = ext
        body = ext.module_.body
        self.trainable_parameters_ = self._freeze_encoder(body, X.image_size)
        if not self.trainable_parameters_:
            raise ValueError(
                "extractor: no encoder stage after the memory scales to train; the "
                "fifth layer must come after the fourth"
            )

        # memory information MI: N normal images through the frozen stages
        n_mem = (max(1, min(30, n // 6)) if self.n_memory == "auto"
                 else clip_to_data(self, "n_memory", self.n_memory, n - 1,
                                   "training images left besides one to train on"))
        self.n_memory_ = n_mem
        self.memory_indices_ = np.sort(rng.choice(n, n_mem, replace=False)).astype(np.int64)
        body.eval()
        with torch.inference_mode():
            mem = [self._encode(ext.to_tensor(X.batch(self.memory_indices_[i:i + 8])))[1:4]
                   for i in range(0, n_mem, 8)]
        self.memory_ = [np.ascontiguousarray(
            torch.cat([m[s] for m in mem]).float().cpu().numpy()) for s in range(3)]
        rest = np.setdiff1d(np.arange(n), self.memory_indices_)
        train_idx = rest if len(rest) >= min(self.batch_size, n) else np.arange(n)

        channels = tuple(ext.layer_channels_)
        with seeded(rng, self.device_):
            self.network_ = MemSegNetwork(
                channels, use_memory=self.use_memory, use_multiscale=self.use_multiscale,
                use_spatial_attention=self.use_spatial_attention,
                use_coordinate_attention=self.use_coordinate_attention,
            ).to(self.device_)
        self.synthesizer_ = clone(self.synthesizer if self.synthesizer is not None
                                  else AnomalySynthesizer())
        result = self._train(_subset(X, train_idx), body, rng)
        self.loss_history_ = result.loss_history
        self.n_iter_ = result.n_iter
        for p in body.parameters():
            p.requires_grad_(True)
        body.eval()
        self.network_.eval()
        return self

    def _train(self, images, body, rng):
        memory = self._memory_tensors()
        trainable = self.trainable_parameters_
        params = [p for p in body.parameters() if p.requires_grad]
        params += list(self.network_.parameters())

        def step(indices, batch, step_rng):
            self._set_train_mode(body, trainable)
            b = len(batch)
            n_anom = int(round(self.anomaly_fraction * b)) if b > 1 else 0
            masks = np.zeros(batch.shape[:3], dtype=np.float32)
            if n_anom:
                batch = batch.copy()
                sim, sim_masks = self.synthesizer_.sample(batch[b - n_anom:], rng=step_rng)
                batch[b - n_anom:] = sim
                masks[b - n_anom:] = sim_masks
            x = self.extractor_.to_tensor(batch)
            logits = self._forward(x, memory)
            target = torch.from_numpy(masks).to(self.device_)[:, None]
            if tuple(target.shape[-2:]) != tuple(logits.shape[-2:]):
                target = _up(target, logits.shape[-2:])
            target = (target[:, 0] > 0.5).float()
            prob = torch.softmax(logits, dim=1)
            loss = logits.new_zeros(())
            if self.l1_weight:
                loss = loss + self.l1_weight * (prob[:, 1] - target).abs().mean()  # eq. 8
            if self.focal_weight:
                loss = loss + self.focal_weight * focal_loss(prob, target, self.focal_gamma)
            return loss  # eq. 10

        if not (self.l1_weight or self.focal_weight):
            raise ValueError("l1_weight, focal_weight: at least one must be positive")
        return train_loop(
            step, [self.network_], images, batch_size=min(self.batch_size, len(images)),
            rng=rng, solver=self.solver, lr=self.lr, weight_decay=self.weight_decay,
            epochs=self.epochs, max_iter=self.max_iter, criterion="last",
            parameters=params, verbose=self.verbose, desc="MemSeg training",
            lr_schedule=warmup_cosine(self.warmup_ratio, self.min_lr_ratio),
        )

    # ------------------------------------------------------------------- score
    def _predict_maps(self, X, exclude=None):
        n = len(X)
        maps = None
        memory = self._memory_tensors()
        self.extractor_.module_.eval()
        self.network_.eval()
        bs = 32 if self.device_.type == "cuda" else 4
        with torch.inference_mode():
            for start in range(0, n, bs):
                sl = slice(start, min(start + bs, n))
                ex = None if exclude is None else torch.from_numpy(exclude[sl]).to(self.device_)
                logits = self._forward(self.extractor_.to_tensor(X.batch(sl)), memory, ex)
                prob = torch.softmax(logits.float(), dim=1)[:, 1]
                if maps is None:
                    maps = np.empty((n, *prob.shape[1:]), dtype=np.float32)
                maps[sl] = prob.cpu().numpy()
        return maps

    def _image_scores(self, maps):
        flat = maps.reshape(len(maps), -1)
        k = min(self.top_k, flat.shape[1])
        return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1)

    def _score(self, X):
        maps = self._predict_maps(X)
        return self._image_scores(maps), maps

    def _offset_scores(self, X):
        exclude = np.full(len(X), -1, dtype=np.int64)
        if self.use_memory and len(self.memory_indices_) > 1:
            exclude[self.memory_indices_] = np.arange(len(self.memory_indices_))
        return self._image_scores(self._predict_maps(X, exclude))

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())
        net = state.pop("network_", None)
        if net is not None:
            state["_network_state"] = cpu_state_dict(net)
            state["_network_config"] = {
                "channels": net.channels, "use_memory": net.use_memory,
                "use_multiscale": net.use_multiscale,
                "use_spatial_attention": net.use_spatial_attention,
                "use_coordinate_attention": net.msff[0].attn is not None,
            }
        return state

    def __setstate__(self, state):
        state = dict(state)
        net_state = state.pop("_network_state", None)
        config = state.pop("_network_config", None)
        super().__setstate__(state)
        if net_state is not None:
            config = dict(config)
            channels = config.pop("channels")
            net = MemSegNetwork(channels, **config)
            net.load_state_dict(net_state, strict=True)
            self.network_ = net.to(self.device_).eval()
