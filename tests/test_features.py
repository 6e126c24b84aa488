"""Tests of skad.features: backbones and weights, PatchFeatureExtractor, GlobalPool."""

import os

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.base import clone
from sklearn.neighbors import LocalOutlierFactor
from sklearn.utils.estimator_checks import parametrize_with_checks

from skad import make_pipeline
from skad.features import GlobalPool, PatchFeatureExtractor, local_average_pool
from skad.features.backbones import (
    HookTruncated,
    build_backbone,
    lite_weights_path,
    load_lite_classifier,
    remap_lite_state_dict,
    torchvision_weights_path,
    truncate_backbone,
)
from skad.features.extractor import _full_float32

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _images(n=3, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def lite0_fitted():
    X = _images()
    return PatchFeatureExtractor(input_size=64).fit(X), X


# ------------------------------------------------------------------ pretrained weights
@pytest.mark.parametrize("variant", LITES)
def test_lite_weights_are_pretrained(variant):
    skdata = pytest.importorskip("skimage.data")
    model = load_lite_classifier(variant)
    images = {"chelsea": (281, 282, 285), "coffee": (967, 968)}
    batch = np.stack([getattr(skdata, name)()[:300, :400] for name in images])
    t = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    t = F.interpolate(t, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.inference_mode():
        top = model((t - 0.5) / 0.5).argmax(1).tolist()  # the Lite weights' recipe
    for (name, classes), pred in zip(images.items(), top):
        assert pred in classes, f"{variant}: {name} classified as {pred}, expected {classes}"


def test_extractor_uses_the_classifier_weights():
    X = _images(2, 64)
    ext = PatchFeatureExtractor(
        layers=("blocks.4",), pooling=None, normalize="lite", input_size=64
    ).fit(X)
    model = load_lite_classifier("efficientnet_lite0")
    t = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        ref = model.blocks[:5](model.bn1(model.conv_stem((t - 0.5) / 0.5)))
    np.testing.assert_allclose(ext.transform(X), ref.numpy(), rtol=1e-4, atol=1e-4)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lite_weights_path_in_timm_keys_equals_default(tmp_path):
    default = build_backbone("efficientnet_lite0")
    sd = torch.load(lite_weights_path("efficientnet_lite0"), weights_only=True)
    timm_sd = remap_lite_state_dict(sd, default)
    assert set(timm_sd) == set(default.state_dict())
    torch.save(timm_sd, tmp_path / "lite0_timm.pth")
    torch.save(sd, tmp_path / "lite0_original_keys.pth")
    for name in ["lite0_timm.pth", "lite0_original_keys.pth"]:
        assert _same_state(build_backbone("efficientnet_lite0", str(tmp_path / name)), default)


def test_weights_none_is_random_but_reproducible():
    state = torch.random.get_rng_state()
    rnd = build_backbone("efficientnet_lite0", weights=None)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert _same_state(rnd, build_backbone("efficientnet_lite0", weights=None))
    assert not _same_state(rnd, build_backbone("efficientnet_lite0"))


def test_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torchvision_weights_path("resnet18")
    assert path.startswith(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    # a stand-in file under the enum's name: loaded by torchvision's own code, no download
    sd = {k: v + 0.01 if v.is_floating_point() else v
          for k, v in build_backbone("resnet18", weights=None).state_dict().items()}
    torch.save(sd, path)
    cached = build_backbone("resnet18")
    assert _same_state(cached, build_backbone("resnet18", weights=path))
    assert torch.equal(cached.state_dict()["conv1.weight"], sd["conv1.weight"])
    X = _images(1, 64)
    ext = PatchFeatureExtractor("resnet18", input_size=64).fit(X)
    assert ext.transform(X).shape == (1, 384, 8, 8)


def test_torchvision_without_cached_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for backbone, fname in [("resnet18", "resnet18-f37072fd.pth"),
                            ("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth")]:
        with pytest.raises(ValueError, match="weights") as info:
            PatchFeatureExtractor(backbone).fit(_images(1, 32))
        msg = str(info.value)
        assert fname in msg and str(tmp_path) in msg and "weights=PATH" in msg
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


# ------------------------------------------------------------- shapes and geometry
@pytest.mark.parametrize("variant, channels", [
    ("efficientnet_lite0", (40, 80)),
    ("efficientnet_lite1", (40, 80)),
    ("efficientnet_lite2", (48, 88)),
])
@pytest.mark.parametrize("size", [224, 256])
def test_lite_shapes_and_strides(variant, channels, size):
    X = _images(1, 64)
    ext = PatchFeatureExtractor(variant, input_size=size).fit(X)
    out = ext.transform(X)
    assert out.dtype == np.float32
    assert out.shape == (1, sum(channels), size // 8, size // 8)
    assert ext.stride_ == 8 and ext.layer_channels_ == channels
    assert ext.n_channels_ == sum(channels) and ext.feature_shape_ == (size // 8, size // 8)
    assert ext.layers_ == ("blocks.2", "blocks.3")  # the default (doc/defaults.md)
    assert len(ext.get_feature_names_out()) == ext.n_channels_


def test_resnet18_random_weights_shapes():
    X = _images(2, 64)
    ext = PatchFeatureExtractor("resnet18", weights=None, input_size=(64, 96)).fit(X)
    assert ext.transform(X).shape == (2, 128 + 256, 8, 12)
    assert ext.stride_ == 8 and ext.layer_channels_ == (128, 256)
    ext.set_params(layers=("layer3",)).fit(X)
    assert ext.stride_ == 16 and ext.transform(X).shape == (2, 256, 4, 6)


def test_input_size_none_keeps_image_size():
    X = _images(2, 48)
    ext = PatchFeatureExtractor(input_size=None, pooling=1).fit(X)
    assert ext.feature_shape_ == (6, 6) and ext.transform(X).shape == (2, 120, 6, 6)


def test_multi_layer_is_resized_concatenation(lite0_fitted):
    ext, X = lite0_fitted
    both = ext.transform(X)
    with _full_float32(ext.device_), torch.inference_mode():  # (as transform: no TF32)
        fine, coarse = ext.module_.layer_maps(ext.to_tensor(X))
    assert fine.shape[-2:] == (8, 8) and coarse.shape[-2:] == (4, 4)
    up = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(both, torch.cat([fine, up], 1).cpu().numpy(), rtol=1e-5,
                               atol=1e-5)
    # the order of layers gives the order of channels; the finest map sets the size
    rev = clone(ext).set_params(layers=("blocks.3", "blocks.2")).fit(X)
    assert rev.layer_channels_ == (80, 40) and rev.stride_ == 8
    np.testing.assert_allclose(rev.transform(X), np.concatenate([both[:, 40:], both[:, :40]], 1),
                               rtol=1e-5, atol=1e-5)


def test_pooling_on_off(lite0_fitted):
    ext, X = lite0_fitted
    pooled = ext.transform(X)[:, :40]  # blocks.2, stride 8: not resized
    raw_ext = clone(ext).set_params(layers="blocks.2", pooling=None).fit(X)
    assert raw_ext.module_.pooling == 1
    raw = raw_ext.transform(X)
    # brute force: 3x3 neighbourhood sum / 9 (zero padding counts at the border)
    np.testing.assert_allclose(pooled[1, :, 0, 5], raw[1, :, 0:2, 4:7].sum(axis=(1, 2)) / 9,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled[1, :, 3, 3], raw[1, :, 2:5, 2:5].mean(axis=(1, 2)),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(pooled, raw)


def test_local_average_pool_brute_force():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 6, 7)).astype(np.float32))
    out = local_average_pool(x, 5).numpy()
    xn = x.numpy()
    ref = np.empty_like(xn)
    for i in range(6):
        for j in range(7):
            ref[..., i, j] = xn[..., max(i - 2, 0):i + 3, max(j - 2, 0):j + 3].mean(axis=(-2, -1))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert local_average_pool(x, 1) is x
    # zero padding counted: every window sum is divided by 25
    padded = np.pad(xn, ((0, 0), (0, 0), (2, 2), (2, 2)))
    ref_pad = np.empty_like(xn)
    for i in range(6):
        for j in range(7):
            ref_pad[..., i, j] = padded[..., i:i + 5, j:j + 5].sum(axis=(-2, -1)) / 25
    np.testing.assert_allclose(local_average_pool(x, 5, include_pad=True).numpy(), ref_pad,
                               rtol=1e-5, atol=1e-6)


def test_extractor_pool_padding_and_upsample_modes():
    rng = np.random.default_rng(2)
    imgs = (rng.random((2, 64, 64, 3)) * 255).astype(np.uint8)
    kw = dict(backbone="resnet18", weights=None, layers=("layer2", "layer3"), input_size=64,
              device="cpu")
    raw = PatchFeatureExtractor(pooling=1, **kw).fit(imgs)
    body = raw.module_.body
    with torch.inference_mode():
        feats = body(raw.to_tensor(imgs))
    l2, l3 = feats["layer2"].numpy(), feats["layer3"].numpy()
    near = PatchFeatureExtractor(pooling=1, upsample="nearest", **kw).fit(imgs).transform(imgs)
    c2 = l2.shape[1]
    np.testing.assert_allclose(near[:, :c2], l2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(near[:, c2:], l3.repeat(2, axis=2).repeat(2, axis=3),
                               rtol=1e-5, atol=1e-5)
    bil = raw.transform(imgs)
    assert not np.allclose(bil[:, c2:], near[:, c2:])
    inc = PatchFeatureExtractor(pooling=3, **kw).fit(imgs).transform(imgs)
    exc = PatchFeatureExtractor(pooling=3, pool_include_pad=False, **kw).fit(imgs).transform(imgs)
    np.testing.assert_allclose(inc[:, :c2, 1:-1, 1:-1], exc[:, :c2, 1:-1, 1:-1], rtol=1e-4,
                               atol=1e-5)  # interior: same windows
    np.testing.assert_allclose(inc[:, :c2, 0, 0], exc[:, :c2, 0, 0] * 4 / 9, rtol=1e-4,
                               atol=1e-5)  # corner: 4 map cells of 9
    with pytest.raises(ValueError, match="upsample"):
        PatchFeatureExtractor(upsample="bicubic", **kw).fit(imgs)


# -------------------------------------------------------------------- truncation
def test_truncation_drops_later_stages(lite0_fitted):
    ext, _ = lite0_fitted
    names = {n for n, _ in ext.module_.named_modules()}
    assert "body.blocks.3" in names  # the default's last layer
    assert not {"body.blocks.4", "body.blocks.5", "body.blocks.6", "body.conv_head", "body.classifier"} & names
    res = PatchFeatureExtractor("resnet18", weights=None, input_size=64).fit(_images(1))
    names = {n for n, _ in res.module_.named_modules()}
    assert "body.layer3" in names and not {"body.layer4", "body.fc"} & names


class _Branchy(torch.nn.Module):
    """Data-dependent control flow (fx cannot trace it); counts calls of its head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.mid = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head_calls = 0

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:
            x = x + 1
        x = self.mid(x)
        self.head_calls += 1
        return self.head(x)


def test_untraceable_module_stops_after_last_layer():
    model = _Branchy()
    body = truncate_backbone(model, ["stem", "mid"])
    assert isinstance(body, HookTruncated)
    out = body(torch.zeros(1, 3, 16, 16))
    assert out["mid"].shape == (1, 6, 4, 4) and model.head_calls == 0
    X = _images(2, 32)
    ext = PatchFeatureExtractor(model, layers=("stem", "mid"), input_size=None).fit(X)
    assert ext.transform(X).shape == (2, 10, 16, 16) and ext.stride_ == 2
    assert ext.module_.body.model.head_calls == 0
    assert model.head_calls == 0  # the backbone parameter is copied, never run or changed


def test_module_instance_backbone_is_not_modified():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X = _images(1, 64)
    ext = PatchFeatureExtractor(model, layers=("layer1",), input_size=64).fit(X)
    assert ext.transform(X).shape == (1, 64, 16, 16) and ext.stride_ == 4
    with torch.no_grad():
        next(ext.module_.parameters()).add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="layers"):
        PatchFeatureExtractor(model).fit(X)
    with pytest.raises(ValueError, match="weights=None"):
        PatchFeatureExtractor(model, layers=("layer1",), weights=None).fit(X)


def test_module_is_trainable(lite0_fitted):
    ext, X = lite0_fitted
    t = ext.to_tensor(X[:2])
    assert t.shape == (2, 3, 64, 64)
    try:
        out = ext.module_(t)
        assert out.shape == (2, 120, 8, 8) and out.requires_grad
        out.mean().backward()
        assert any(p.grad is not None for p in ext.module_.parameters())
    finally:
        ext.module_.zero_grad(set_to_none=True)


# ------------------------------------------------------------------- input forms
def test_paths_equal_arrays_and_grayscale(tmp_path, lite0_fitted):
    ext, X = lite0_fitted
    paths = []
    for i, im in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    np.testing.assert_array_equal(ext.transform(paths), ext.transform(X))
    gray = X[..., 0]
    rgb = np.repeat(gray[..., None], 3, -1)
    np.testing.assert_array_equal(ext.transform(gray), ext.transform(rgb))
    as_float = X.astype(np.float32) / 255
    np.testing.assert_allclose(ext.transform(as_float), ext.transform(X), atol=1e-5)


def test_paths_of_different_sizes_are_resized_one_by_one(tmp_path, lite0_fitted):
    ext, X = lite0_fitted
    big = np.repeat(np.repeat(X[0], 2, 0), 2, 1)
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(X[1]).save(tmp_path / "small.png")
    out = ext.transform([str(tmp_path / "big.png"), str(tmp_path / "small.png")])
    np.testing.assert_allclose(out[1], ext.transform(X[1:2])[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[0], ext.transform(big[None])[0], rtol=1e-4, atol=1e-4)


def test_batches_and_threads_do_not_change_features(lite0_fitted, capfd):
    ext, X = lite0_fitted
    ref = ext.transform(X)
    assert "PatchFeatureExtractor" not in capfd.readouterr().err
    before = torch.get_num_threads()
    try:  # batch_size, n_threads and verbose act at transform time
        ext.set_params(batch_size=1, n_threads=1, verbose=True)
        np.testing.assert_allclose(ext.transform(X), ref, rtol=1e-5, atol=1e-5)
    finally:
        ext.set_params(batch_size="auto", n_threads=None, verbose=False)
    assert "PatchFeatureExtractor" in capfd.readouterr().err  # the progress bar
    # batch_size="auto": 4 images per forward pass on the CPU, 32 on a GPU
    sizes = []
    hook = ext.module_.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    try:
        ext.transform(np.concatenate([X] * 3))
    finally:
        hook.remove()
    assert sizes == ([9] if ext.device_.type == "cuda" else [4, 4, 1])
    # the module runs channels-last; a contiguous (NCHW) input gives the same features
    assert ext.module_.body.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    with _full_float32(ext.device_), torch.inference_mode():
        t = ext.to_tensor(X[:2])
        np.testing.assert_allclose(ext.module_(t.contiguous()).cpu().numpy(), ref[:2],
                                   rtol=1e-4, atol=1e-4)
    assert torch.get_num_threads() == before
    assert str(ext.device_) == ("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------- sklearn plumbing
def test_pipeline_params_clone_and_fit():
    pipe = make_pipeline(PatchFeatureExtractor(), GlobalPool(),
                         LocalOutlierFactor(novelty=True, n_neighbors=3))
    params = pipe.get_params()
    assert params["patchfeatureextractor__backbone"] == "efficientnet_lite0"
    assert params["globalpool__method"] == "mean"
    pipe.set_params(patchfeatureextractor__input_size=64, globalpool__method="meanmax")
    cloned = clone(pipe)
    assert cloned.get_params()["patchfeatureextractor__input_size"] == 64
    step = "patchfeatureextractor"
    assert cloned.named_steps[step] is not pipe.named_steps[step]
    X = _images(8, 64)
    scores = cloned.fit(X).score_samples(X)
    assert scores.shape == (8,) and np.all(np.isfinite(scores))
    assert cloned.predict(X).shape == (8,)
    assert cloned.named_steps["globalpool"].n_features_in_ == 120
    assert not hasattr(pipe.named_steps["patchfeatureextractor"], "module_")


def test_pickle_roundtrip_identical(tmp_path, lite0_fitted):
    ext, X = lite0_fitted
    weight = ext.module_.body.conv_stem.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():  # as after fine-tuning: the stored weights, not the defaults
            weight.mul_(1.5)
        ref = ext.transform(X)
        joblib.dump(ext, tmp_path / "ext.joblib")
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    back = joblib.load(tmp_path / "ext.joblib")
    np.testing.assert_array_equal(back.transform(X), ref)
    assert not np.allclose(ext.transform(X), ref)
    assert str(back.device_) in ("cpu", "cuda") and back.stride_ == ext.stride_


def test_pickle_module_instance_backbone(tmp_path):
    X = _images(2, 32)
    ext = PatchFeatureExtractor(_Branchy(), layers=("mid",), input_size=None).fit(X)
    ref = ext.transform(X)
    joblib.dump(ext, tmp_path / "ext.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "ext.joblib").transform(X), ref)


@parametrize_with_checks([GlobalPool(), GlobalPool(method="meanmax")])
def test_global_pool_sklearn_checks(estimator, check):
    check(estimator)


def test_import_order_has_no_cycle():
    import subprocess
    import sys

    pairs = [("skad.features", "skad.detectors"), ("skad.detectors", "skad.features")]
    for first, second in pairs:
        code = f"import {first}, {second}; {second}.__name__"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-500:]


def test_global_pool():
    X = np.random.default_rng(0).normal(size=(4, 5, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(GlobalPool().fit_transform(X), X.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(GlobalPool("max").fit_transform(X), X.max(axis=(2, 3)))
    mm = GlobalPool("meanmax").fit(X)
    assert mm.transform(X).shape == (4, 10) and len(mm.get_feature_names_out()) == 10
    with pytest.raises(ValueError, match="3 features.*expecting 5"):
        GlobalPool().fit(X).transform(X[:, :3])
    with pytest.raises(ValueError, match="PatchFeatureExtractor"):
        GlobalPool().fit(_images(2, 32))
    with pytest.raises(ValueError, match="method"):
        GlobalPool("median").fit(X)


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("X, match", [
    (np.zeros((2, 32, 32, 3, 1), np.uint8), "shape"),
    (np.zeros((32, 32), np.uint8), "shape|small"),
    (np.zeros((2, 32, 32, 4), np.uint8), "4 channels"),
    (np.zeros((2, 3, 32, 32), np.uint8), "channels-first"),
    (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.full((2, 32, 32, 3), 2.0, np.float32), r"\[0, 1\]"),
    (["/no/such/image.png"], "not found.*/no/such/image.png"),
])
def test_bad_images_are_clear_errors(X, match, lite0_fitted):
    ext, _ = lite0_fitted
    with pytest.raises(ValueError, match=match):
        ext.transform(X)
    with pytest.raises(ValueError, match=match):
        clone(ext).fit(X)


def test_corrupt_file_is_named(tmp_path, lite0_fitted):
    ext, X = lite0_fitted
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image")
    Image.fromarray(X[0]).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="corrupt.png"):
        ext.transform([str(tmp_path / "ok.png"), str(bad)])


@pytest.mark.parametrize("params, match", [
    (dict(backbone="vgg16"), "backbone.*efficientnet_lite0"),
    (dict(layers=("blocks.9",)), r"unknown layer.*blocks\.9.*available.*blocks\.2"),
    (dict(layers=()), "layers"),
    (dict(input_size=(64,)), "input_size"),
    (dict(input_size=(64, 4)), "input_size"),
    (dict(input_size=0), "input_size"),
    (dict(input_size="big"), "input_size"),
    (dict(normalize="zscore"), "normalize"),
    (dict(normalize=((0.5, 0.5), (0.5, 0.5))), "normalize"),
    (dict(normalize=((0.5,) * 3, (0.0,) * 3)), "normalize"),
    (dict(pooling=2), "pooling.*odd"),
    (dict(pooling=0), "pooling"),
    (dict(weights="/no/such/weights.pth"), "weights.*not found"),
    (dict(device="tpu"), "device"),
    (dict(batch_size=0), "batch_size"),
    (dict(n_threads=0), "n_threads"),
])
def test_bad_params_are_clear_errors(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PatchFeatureExtractor(**{"input_size": 64, **params}).fit(_images(1, 32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="device.*CUDA is not available"):
        PatchFeatureExtractor(device="cuda").fit(_images(1, 32))


def test_mismatched_state_dict(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18", weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match.*missing keys"):
        PatchFeatureExtractor(weights=str(path)).fit(_images(1, 32))
    not_sd = tmp_path / "junk.pth"
    not_sd.write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth"):
        PatchFeatureExtractor(weights=str(not_sd)).fit(_images(1, 32))


def test_transform_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PatchFeatureExtractor().transform(_images(1, 32))


@pytest.mark.parametrize("backbone, expected", [
    ("efficientnet_lite0", ((0.5,) * 3, (0.5,) * 3)),
    ("resnet18", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
])
def test_normalize_auto_is_the_backbones_training_recipe(backbone, expected):
    X = _images(1, 32)
    ext = PatchFeatureExtractor(backbone, input_size=32, weights=None, device="cpu").fit(X)
    assert ext.normalize == "auto" and (ext.mean_, ext.std_) == expected
    x = X.astype(np.float32) / 255 if X.dtype == np.uint8 else X
    t = ext.to_tensor(X).numpy()
    want = (x.transpose(0, 3, 1, 2) - np.asarray(expected[0])[:, None, None]) / np.asarray(
        expected[1])[:, None, None]
    assert np.allclose(t, want, atol=1e-5)
