"""skad.synthesis: Perlin masks, foreground, sources, MemSeg's simulation, Lv et al.'s DGM."""

import doctest
import os
import pickle

import numpy as np
import pytest
from sklearn.base import clone

import skad.synthesis as syn
from skad.datasets import make_synthetic
from skad.synthesis import (
    AnomalySynthesizer,
    DefectGenerator,
    ImageFolderSource,
    blend,
    darken,
    foreground_mask,
    lighten,
    otsu_threshold,
    paste,
    perlin_mask,
    perlin_noise,
    procedural_texture,
    random_region,
    structural_noise,
)
from skad.synthesis._noise import _perlin_eval


# -- fixtures ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def texture_images():
    return make_synthetic(n_train=4, n_test=2, image_size=64, random_state=0).train_images


@pytest.fixture(scope="module")
def object_images():
    data = make_synthetic(n_train=4, n_test=2, image_size=64, kind="object", random_state=0)
    return data.train_images


def _save_png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def color_folder(tmp_path):
    """Two tiny single-colour PNGs (pure red, pure green) in a nested folder."""
    sub = tmp_path / "textures" / "a"
    sub.mkdir(parents=True)
    _save_png(sub / "red.png", np.tile([255, 0, 0], (12, 20, 1)))
    _save_png(tmp_path / "textures" / "green.PNG", np.tile([0, 255, 0], (20, 12, 1)))
    (tmp_path / "textures" / "notes.txt").write_text("not an image")
    return tmp_path / "textures"


@pytest.fixture
def no_file_access(monkeypatch):
    """Make every way of reading an image or listing a folder raise."""
    import PIL.Image

    import skad.utils.validation as validation

    def boom(*args, **kwargs):
        raise AssertionError("a file was read or a folder listed")

    monkeypatch.setattr(PIL.Image, "open", boom)
    monkeypatch.setattr(validation, "load_image", boom)
    for name in ("walk", "scandir", "listdir"):
        monkeypatch.setattr(os, name, boom)


def _changed(out, X):
    ref = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32)
    if ref.ndim == 3:
        ref = np.repeat(ref[..., None], 3, axis=-1)
    return np.abs(out - ref).max(axis=-1)


def _assert_mask_matches(out, masks, X):
    """Every changed pixel is in the mask; masked pixels changed on average."""
    assert out.dtype == np.float32 and masks.dtype == np.float32
    assert out.shape == (len(X),) + X.shape[1:3] + (3,) and masks.shape == X.shape[:3]
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert out.min() >= 0.0 and out.max() <= 1.0
    diff = _changed(out, X)
    assert not np.any((diff > 1e-6) & (masks == 0))
    for d, m in zip(diff, masks):
        assert m.sum() > 0
        assert d[m == 1].mean() > 0.005


# -- Perlin noise ---------------------------------------------------------------------
def _naive_perlin(u, v, angles):
    """Per-pixel reference: Perlin's gradient noise written out with scalars."""
    out = np.zeros(u.shape)
    for idx in np.ndindex(u.shape):
        y, x = u[idx], v[idx]
        i, j = int(np.floor(y)), int(np.floor(x))
        fy, fx = y - i, x - j
        dots = {}
        for di in (0, 1):
            for dj in (0, 1):
                a = angles[i + di, j + dj]
                dots[di, dj] = np.sin(a) * (fy - di) + np.cos(a) * (fx - dj)
        fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
        sy, sx = fade(fy), fade(fx)
        n0 = dots[0, 0] + sy * (dots[1, 0] - dots[0, 0])
        n1 = dots[0, 1] + sy * (dots[1, 1] - dots[0, 1])
        out[idx] = np.sqrt(2) * (n0 + sx * (n1 - n0))
    return out


def test_perlin_kernel_matches_naive_loop():
    rng = np.random.RandomState(0)
    angles = rng.uniform(0, 2 * np.pi, (4, 5))
    u = rng.uniform(0, 2.999, (7, 6))
    v = rng.uniform(0, 3.999, (7, 6))
    np.testing.assert_allclose(
        _perlin_eval(u, v, angles, False), _naive_perlin(u, v, angles), atol=1e-5
    )


def test_perlin_noise_range_and_reproducible():
    n = perlin_noise((40, 56), (4, 7), rng=3)
    assert n.shape == (40, 56) and n.dtype == np.float32
    assert np.abs(n).max() <= 1.0 and n.std() > 0.05
    np.testing.assert_array_equal(n, perlin_noise((40, 56), (4, 7), rng=3))
    assert not np.array_equal(n, perlin_noise((40, 56), (4, 7), rng=4))
    # zero at the lattice points (every 10 rows / 8 columns)
    np.testing.assert_allclose(n[::10, ::8], 0, atol=1e-6)


def test_perlin_noise_periodic_tiles_seamlessly():
    p = perlin_noise((32, 48), (4, 3), rng=0, periodic=True)
    tiled = np.tile(p, (2, 2))
    steps_y = np.abs(np.diff(tiled, axis=0))
    steps_x = np.abs(np.diff(tiled, axis=1))
    # the seams (rows 31->32, columns 47->48) step no more than the interior does
    assert steps_y[31].max() <= steps_y[:31].max() + 1e-6
    assert steps_x[:, 47].max() <= steps_x[:, :47].max() + 1e-6
    q = perlin_noise((32, 48), (4, 3), rng=0, periodic=False)
    assert np.abs(np.diff(np.tile(q, (1, 2)), axis=1))[:, 47].max() > steps_x[:, :47].max()


def test_perlin_noise_rotated():
    n = perlin_noise((48, 48), 6, rng=0, angle=37.0)
    assert n.shape == (48, 48) and np.abs(n).max() <= 1 and n.std() > 0.05
    assert not np.array_equal(n, perlin_noise((48, 48), 6, rng=0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(0, 5), scale=2), "shape"),
        (dict(shape=(8, 8), scale=0), "scale"),
        (dict(shape=(8, 8), scale=(2, -1)), "scale"),
        (dict(shape=(8, 8), scale=2.5, periodic=True), "scale: periodic"),
        (dict(shape=(8, 8), scale=2, angle="10"), "angle"),
    ],
)
def test_perlin_noise_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        perlin_noise(**kwargs)


def test_perlin_mask_never_empty_and_threshold_monotone():
    low = [perlin_mask((32, 32), threshold=0.2, rng=s).mean() for s in range(20)]
    high = [perlin_mask((32, 32), threshold=0.6, rng=s).mean() for s in range(20)]
    assert min(high) > 0 and np.mean(high) < np.mean(low)
    # near the noise's maximum only the fallback (top 10 % of the last field) is left
    m = perlin_mask((32, 32), threshold=0.999, rng=0)
    assert m.dtype == bool and 0 < m.mean() <= 0.11
    np.testing.assert_array_equal(perlin_mask((32, 32), rng=5), perlin_mask((32, 32), rng=5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=1.0), "threshold"),
        (dict(min_scale=-1), "min_scale"),
        (dict(min_scale=3, max_scale=3), "max_scale"),
        (dict(max_scale=2.5), "max_scale"),
    ],
)
def test_perlin_mask_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        perlin_mask((16, 16), **kwargs)


# -- foreground -------------------------------------------------------------------------
def test_otsu_matches_scikit_image():
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.RandomState(0)
    g = np.r_[rng.normal(0.3, 0.05, 3000), rng.normal(0.7, 0.1, 1000)]
    g = np.clip(g, 0, 1).reshape(40, 100)
    ours = otsu_threshold(g)
    ref = filters.threshold_otsu(np.round(g * 255).astype(np.uint8)) / 255.0
    assert abs(ours - ref) < 2 / 255


def _disc_image():
    yy, xx = np.mgrid[:64, :64]
    img = np.full((64, 64, 3), 30, np.uint8)
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2
    img[disc] = 200
    return img, disc


def test_foreground_mask_disc_and_cleaning():
    img, disc = _disc_image()
    noisy = img.copy()
    noisy[3, 3] = 255  # a bright speck in the background
    noisy[32, 32] = 0  # a dark pinhole in the part
    m = foreground_mask(noisy)
    np.testing.assert_array_equal(m, disc)
    raw = foreground_mask(noisy, opening=0, closing=0)
    assert raw[3, 3] and not raw[32, 32]
    np.testing.assert_array_equal(foreground_mask(img, invert=True), ~disc)
    np.testing.assert_array_equal(foreground_mask(img[..., 0], threshold=0.5), disc)
    assert not foreground_mask(np.full((16, 16), 0.5)).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=1.5), "threshold"),
        (dict(opening=-1), "opening"),
        (dict(closing=2.5), "closing"),
    ],
)
def test_foreground_mask_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        foreground_mask(np.zeros((8, 8)), **kwargs)
    with pytest.raises(ValueError, match="image"):
        foreground_mask(np.zeros((2, 8, 8, 3)))


# -- sources ----------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", [("fractal",), ("stripes",), ("cells",), syn.PROCEDURAL_KINDS])
def test_procedural_texture(kinds):
    t = procedural_texture((40, 52), rng=1, kinds=kinds)
    assert t.shape == (40, 52, 3) and t.dtype == np.float32
    assert 0 <= t.min() and t.max() <= 1 and t.std() > 0.01
    np.testing.assert_array_equal(t, procedural_texture((40, 52), rng=1, kinds=kinds))
    with pytest.raises(ValueError, match="kinds"):
        procedural_texture((8, 8), kinds=("plaid",))


def test_image_folder_source(color_folder):
    src = ImageFolderSource(color_folder)
    # recursive, sorted by path ("a/red.png" < "green.PNG"), extensions case-insensitive
    assert [os.path.basename(p) for p in src.paths] == ["red.png", "green.PNG"]
    rng = np.random.RandomState(0)
    colors = {tuple(src.draw((9, 7), rng)[4, 3].round(3)) for _ in range(20)}
    assert colors == {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)}
    # the listing is not pickled: the copy lists the folder again where it is loaded
    blob = pickle.dumps(src)
    _save_png(color_folder / "blue.png", np.tile([0, 0, 255], (8, 8, 1)))
    assert len(src) == 2 and len(pickle.loads(blob)) == 3
    with pytest.raises(ValueError, match="not found"):
        ImageFolderSource(color_folder / "missing").draw((4, 4), rng)
    empty = color_folder.parent / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        len(ImageFolderSource(empty))


def test_image_folder_source_crop_keeps_aspect(tmp_path):
    # left half black, right half white: a window of the target's aspect ratio shows both
    # halves in proportion only if it is not squeezed
    a = np.zeros((20, 80, 3), np.uint8)
    a[:, 40:] = 255
    _save_png(tmp_path / "half.png", a)
    out = ImageFolderSource(tmp_path).draw((10, 40), np.random.RandomState(0))
    np.testing.assert_allclose(out.mean(), 0.5, atol=0.05)
    square = ImageFolderSource(tmp_path).draw((10, 10), np.random.RandomState(0))
    assert square.shape == (10, 10, 3)


# -- operations ----------------------------------------------------------------------
def test_structural_noise_permutes_cells():
    rng = np.random.RandomState(0)
    img = rng.rand(66, 130, 3).astype(np.float32)
    before = img.copy()
    out = structural_noise(
        img, rng=1, grid=(4, 8), flip=False, rotation=None, brightness=0, saturation=0, hue=0
    )
    np.testing.assert_array_equal(img, before)
    assert not np.allclose(out, img)
    # remainder strips (rows 64-65, columns 128-129) stay in place
    np.testing.assert_allclose(out[64:], img[64:], atol=1e-6)
    np.testing.assert_allclose(out[:, 128:], img[:, 128:], atol=1e-6)

    def cells(a):
        return {
            a[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].round(5).tobytes()
            for r in range(4)
            for c in range(8)
        }

    assert cells(out) == cells(img)


def test_structural_noise_transforms():
    img = np.random.RandomState(0).rand(32, 32, 3).astype(np.float32)
    outs = [structural_noise(img, rng=s) for s in range(4)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.float32 for o in outs)
    assert all(0 <= o.min() and o.max() <= 1 for o in outs)
    small = structural_noise(img, rng=0, rotation=10.0)
    assert small.shape == img.shape
    gray = np.repeat(img[..., :1], 3, axis=-1)
    g = structural_noise(gray, rng=0)  # hue and saturation keep gray gray
    np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-5)
    np.testing.assert_allclose(g[..., 0], g[..., 2], atol=1e-5)
    assert structural_noise(img[..., 0], rng=0).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=(0, 8)), "grid"),
        (dict(grid=(64, 8)), "grid: 64x8 cells do not fit"),
        (dict(rotation="left"), "rotation"),
        (dict(brightness=-0.1), "brightness"),
        (dict(hue=0.7), "hue"),
    ],
)
def test_structural_noise_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        structural_noise(np.zeros((32, 32, 3)), **kwargs)


def test_blend_is_memseg_eq_1_2():
    rng = np.random.RandomState(0)
    img, noise = rng.rand(2, 16, 16, 3).astype(np.float32)
    m = rng.rand(16, 16) > 0.5
    for delta in (0.15, 0.6, 1.0):
        out = blend(img, m, noise, delta)
        M = m[..., None].astype(np.float32)
        expected = (1 - M) * img + delta * (M * noise) + (1 - delta) * (M * img)  # eq. 1-2
        np.testing.assert_allclose(out, expected, atol=1e-6)
        np.testing.assert_array_equal(out[~m], img[~m])  # bit for bit outside
    soft = rng.rand(16, 16).astype(np.float32)
    S = soft[..., None]
    np.testing.assert_allclose(
        blend(img, soft, noise, 0.5), (1 - S) * img + 0.5 * S * noise + 0.5 * S * img, atol=1e-6
    )
    with pytest.raises(ValueError, match="delta"):
        blend(img, m, noise, 1.5)
    with pytest.raises(ValueError, match="noise"):
        blend(img, m, noise[:8], 0.5)
    with pytest.raises(ValueError, match="mask"):
        blend(img, m[:8], noise, 0.5)


def test_region_operations():
    img = np.full((8, 8, 3), 0.5, np.float32)
    m = np.zeros((8, 8), bool)
    m[2:5, 2:6] = True
    d = darken(img, m, 0.4)
    li = lighten(img, m, 0.4)
    p = paste(img, m, np.zeros((8, 8, 3)))
    np.testing.assert_allclose(d[m], 0.3)
    np.testing.assert_allclose(li[m], 0.7)
    np.testing.assert_allclose(p[m], 0.0)
    for out in (d, li, p):
        np.testing.assert_array_equal(out[~m], img[~m])
    np.testing.assert_array_equal(img, 0.5)
    with pytest.raises(ValueError, match="strength"):
        darken(img, m, 1.5)
    with pytest.raises(ValueError, match="mask"):
        lighten(img, np.full((8, 8), 0.5), 0.2)
    with pytest.raises(ValueError, match="content"):
        paste(img, m, np.zeros((4, 4, 3)))


@pytest.mark.parametrize("kind", syn.REGION_KINDS)
def test_random_region(kind):
    for seed in range(10):
        m = random_region((50, 80), kind=kind, size_range=(0.2, 0.3), rng=seed)
        assert m.dtype == bool and m.any()
        ys, xs = np.nonzero(m)
        assert np.ptp(ys) + 1 <= round(0.3 * 50) and np.ptp(xs) + 1 <= round(0.3 * 80)
        if kind == "rectangle":
            assert m.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1) and np.ptp(ys) + 1 >= 10
    with pytest.raises(ValueError, match="kind"):
        random_region((8, 8), kind="star")
    with pytest.raises(ValueError, match="size_range"):
        random_region((8, 8), size_range=(0.0, 0.5))


# -- AnomalySynthesizer ----------------------------------------------------------------
MEMSEG_CONFIGS = [
    dict(),
    dict(anomaly_types=("texture",)),
    dict(anomaly_types=("structure",)),
    dict(use_foreground=True),
    dict(use_foreground=True, foreground_invert=True, foreground_threshold=0.4),
    dict(perlin_threshold=0.3, delta_range=(1.0, 1.0)),
]


@pytest.mark.parametrize("params", MEMSEG_CONFIGS)
def test_anomaly_synthesizer_masks_and_reproducibility(object_images, params):
    X = object_images
    before = X.copy()
    synth = AnomalySynthesizer(random_state=0, **params)
    out, masks = synth.sample(X)
    np.testing.assert_array_equal(X, before)
    _assert_mask_matches(out, masks, X)
    out2, masks2 = synth.sample(X)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(masks, masks2)
    out3, masks3 = AnomalySynthesizer(random_state=1, **params).sample(X)
    assert not np.array_equal(masks, masks3) and not np.array_equal(out, out3)


@pytest.mark.parametrize("kind", ["float32", "float64", "gray"])
def test_sample_input_kinds_unchanged(texture_images, kind):
    X = texture_images.astype(np.float32) / 255
    if kind == "float64":
        X = X.astype(np.float64)
    elif kind == "gray":
        X = X.mean(axis=-1)
    before = X.copy()
    for synth in (AnomalySynthesizer(random_state=0), DefectGenerator(random_state=0)):
        out, masks = synth.sample(X)
        np.testing.assert_array_equal(X, before)  # float32 batches are views of X
        _assert_mask_matches(out, masks, X)


def test_rng_argument_gives_new_draws(texture_images):
    synth = AnomalySynthesizer(random_state=0)
    rng = np.random.RandomState(7)
    a = synth.sample(texture_images, rng=rng)
    b = synth.sample(texture_images, rng=rng)
    assert not np.array_equal(a[1], b[1])
    again = synth.sample(texture_images, rng=np.random.RandomState(7))
    np.testing.assert_array_equal(a[1], again[1])
    np.testing.assert_array_equal(
        synth.sample(texture_images, rng=3)[0], synth.sample(texture_images, rng=3)[0]
    )


def test_sample_from_paths_equals_arrays(tmp_path, texture_images):
    paths = [_save_png(tmp_path / f"{i}.png", im) for i, im in enumerate(texture_images)]
    for synth in (AnomalySynthesizer(random_state=0), DefectGenerator(random_state=0)):
        from_paths = synth.sample(paths)
        from_array = synth.sample(texture_images)
        np.testing.assert_array_equal(from_paths[0], from_array[0])
        np.testing.assert_array_equal(from_paths[1], from_array[1])


def test_sample_paths_of_different_sizes(tmp_path, texture_images):
    paths = [_save_png(tmp_path / f"{i}.png", texture_images[0]) for i in range(16)]
    paths.append(_save_png(tmp_path / "small.png", texture_images[0][:32, :32]))
    with pytest.raises(ValueError, match="different sizes"):
        AnomalySynthesizer(random_state=0).sample(paths)


def test_texture_folder_is_used(color_folder, texture_images):
    synth = AnomalySynthesizer(texture_source=color_folder, anomaly_types=("texture",),
                               delta_range=(1.0, 1.0), random_state=0)
    out, masks = synth.sample(texture_images)
    _assert_mask_matches(out, masks, texture_images)
    pixels = out[masks == 1]
    is_red = np.all(np.abs(pixels - [1, 0, 0]) < 1e-6, axis=1)
    is_green = np.all(np.abs(pixels - [0, 1, 0]) < 1e-6, axis=1)
    assert np.all(is_red | is_green)


def test_procedural_default_reads_no_file(no_file_access, texture_images):
    synth = AnomalySynthesizer(anomaly_types=("texture",), random_state=0)
    out, masks = synth.sample(texture_images)
    _assert_mask_matches(out, masks, texture_images)
    out, masks = DefectGenerator(operations=("paste",), random_state=0).sample(texture_images)
    _assert_mask_matches(out, masks, texture_images)


class _CountingSource:
    def __init__(self):
        self.calls = 0

    def draw(self, shape, rng):
        self.calls += 1
        return np.zeros(tuple(shape) + (3,), np.float32)


def test_anomaly_types_switch(texture_images):
    src = _CountingSource()
    X = texture_images
    AnomalySynthesizer(texture_source=src, anomaly_types=("structure",), random_state=0).sample(X)
    assert src.calls == 0
    AnomalySynthesizer(texture_source=src, anomaly_types=("texture",), random_state=0).sample(X)
    assert src.calls == len(X)
    src.calls = 0
    AnomalySynthesizer(texture_source=src, random_state=0).sample(np.repeat(X, 10, axis=0))
    assert 5 < src.calls < 35  # texture about half of the time


def test_foreground_restriction(object_images):
    out, masks = AnomalySynthesizer(use_foreground=True, random_state=0).sample(object_images)
    for img, m in zip(object_images, masks):
        fg = foreground_mask(img)
        assert fg.any() and np.all(fg[m == 1])
    # an image without foreground: the mask falls back to the whole image (documented)
    flat = np.full((2, 32, 32, 3), 0.4, np.float32)
    synth = AnomalySynthesizer(use_foreground=True, anomaly_types=("texture",), random_state=0)
    out, masks = synth.sample(flat)
    assert np.all(masks.sum(axis=(1, 2)) > 0)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(anomaly_types=("texture", "noise")), "anomaly_types"),
        (dict(anomaly_types=()), "anomaly_types"),
        (dict(delta_range=(0.5, 0.2)), "delta_range"),
        (dict(delta_range=(0.1, 1.5)), "delta_range"),
        (dict(delta_range=0.5), "delta_range"),
        (dict(perlin_threshold=1.0), "perlin_threshold"),
        (dict(structure_grid=(0, 8)), "structure_grid"),
        (dict(structure_grid=(4, 80)), "structure_grid"),
        (dict(texture_source=5), "texture_source"),
        (dict(use_foreground="yes"), "use_foreground"),
        (dict(foreground_threshold=2.0), "foreground_threshold"),
        (dict(random_state="seed"), "random_state"),
    ],
)
def test_anomaly_synthesizer_errors(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AnomalySynthesizer(**params).sample(np.zeros((1, 32, 32, 3), np.uint8))


def test_missing_texture_folder(tmp_path):
    synth = AnomalySynthesizer(texture_source=tmp_path / "nope", anomaly_types=("texture",))
    with pytest.raises(ValueError, match="not found"):
        synth.sample(np.zeros((1, 32, 32, 3), np.uint8))


def test_sklearn_conventions(color_folder, texture_images):
    synth = AnomalySynthesizer(
        texture_source=str(color_folder), perlin_threshold=0.4, random_state=3
    )
    assert "perlin_threshold=0.4" in repr(synth)
    c = clone(synth)
    assert c.get_params() == synth.get_params()
    a = synth.sample(texture_images)
    restored = pickle.loads(pickle.dumps(synth))
    assert "_source_cache" not in restored.__dict__ and "_source_cache" in synth.__dict__
    np.testing.assert_array_equal(restored.sample(texture_images)[0], a[0])
    np.testing.assert_array_equal(c.sample(texture_images)[1], a[1])
    with pytest.raises(TypeError):
        AnomalySynthesizer(0.5)  # keyword-only
    g = DefectGenerator(max_regions=2).set_params(max_regions=3)
    assert g.max_regions == 3 and clone(g).max_regions == 3


def test_source_cache_follows_set_params(color_folder, tmp_path, texture_images):
    synth = AnomalySynthesizer(texture_source=color_folder, anomaly_types=("texture",),
                               delta_range=(1.0, 1.0), random_state=0)
    synth.sample(texture_images)
    blue = tmp_path / "blue"
    blue.mkdir()
    _save_png(blue / "b.png", np.tile([0, 0, 255], (8, 8, 1)))
    out, masks = synth.set_params(texture_source=blue).sample(texture_images)
    blue_px = np.tile([0, 0, 1], (int(masks.sum()), 1))
    np.testing.assert_allclose(out[masks == 1], blue_px, atol=1e-6)


# -- DefectGenerator -------------------------------------------------------------------
def _ref(X):
    return X.astype(np.float32) / 255.0


@pytest.mark.parametrize("region", list(syn.REGION_KINDS) + [syn.REGION_KINDS])
def test_dgm_darken_lighten_paste(texture_images, region):
    X = texture_images
    ref = _ref(X)
    for op, sign in (("darken", -1), ("lighten", 1)):
        out, masks = DefectGenerator(operations=(op,), region=region, random_state=0).sample(X)
        _assert_mask_matches(out, masks, X)
        for o, r, m in zip(out, ref, masks):
            delta = (o - r)[m == 1]
            assert np.all(sign * delta >= -1e-7) and sign * delta.mean() > 0.02
    out, masks = DefectGenerator(operations=("paste",), region=region, random_state=0).sample(X)
    _assert_mask_matches(out, masks, X)


def test_dgm_reproducible_and_regions(texture_images):
    g = DefectGenerator(region=("rectangle", "ellipse", "perlin"), max_regions=4, random_state=0)
    a, b = g.sample(texture_images), g.sample(texture_images)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = clone(g).set_params(random_state=1).sample(texture_images)
    assert not np.array_equal(a[1], c[1])
    _assert_mask_matches(a[0], a[1], texture_images)
    one = DefectGenerator(region_size=(0.25, 0.25), random_state=0).sample(texture_images)[1]
    np.testing.assert_array_equal(one.sum(axis=(1, 2)), 16 * 16)  # one 16x16 rectangle each


def test_dgm_content_folder_is_used(color_folder, texture_images):
    g = DefectGenerator(operations=("paste",), content_source=color_folder, random_state=0)
    out, masks = g.sample(texture_images)
    pixels = out[masks == 1]
    is_red = np.all(np.isclose(pixels, [1, 0, 0]), axis=1)
    assert np.all(is_red | np.all(np.isclose(pixels, [0, 1, 0]), axis=1))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(operations=("blur",)), "operations"),
        (dict(region="triangle"), "region"),
        (dict(max_regions=0), "max_regions"),
        (dict(region_size=(0.0, 0.5)), "region_size"),
        (dict(region_size=(0.5, 0.2)), "region_size"),
        (dict(strength_range=(0.5, 2.0)), "strength_range"),
        (dict(content_source=3.0), "content_source"),
    ],
)
def test_dgm_errors(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DefectGenerator(**params).sample(np.zeros((1, 32, 32, 3), np.uint8))


def test_sample_rejects_bad_rng(texture_images):
    with pytest.raises(ValueError, match="rng"):
        AnomalySynthesizer().sample(texture_images, rng=np.random.default_rng(0))


def test_sample_rejects_bad_images():
    with pytest.raises(ValueError, match="X"):
        AnomalySynthesizer().sample(np.zeros((1, 32, 32, 5)))
    with pytest.raises(TypeError, match="X"):
        DefectGenerator().sample("one_image.png")


# -- docstring examples and the user guide -------------------------------------------------
def test_user_guide_example_runs():
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "doc" / "synthesis.md"
    block = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[0]
    namespace = {}
    exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own page
    assert namespace["images"].shape == (8, 128, 128, 3)
    assert namespace["batch_masks"].shape == (4, 128, 128)


@pytest.mark.parametrize("module", ["_noise", "_masks", "_sources", "_ops", "_simulation", "_dgm"])
def test_docstring_examples(module):
    import importlib

    mod = importlib.import_module(f"skad.synthesis.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- real textures (../shared/data, skipped when absent) ---------------------------------
def test_dtd_textures(shared_data, object_images):
    dtd = shared_data / "textures" / "dtd"
    if not dtd.is_dir():
        pytest.skip(f"DTD textures not found at {dtd}")
    src = ImageFolderSource(dtd)
    assert len(src) >= 100 and all(p.lower().endswith(".jpg") for p in src.paths)
    t = src.draw((64, 64), np.random.RandomState(0))
    assert t.shape == (64, 64, 3) and t.std() > 0.01
    synth = AnomalySynthesizer(
        texture_source=dtd, anomaly_types=("texture",), use_foreground=True, random_state=0
    )
    out, masks = synth.sample(object_images)
    _assert_mask_matches(out, masks, object_images)
    np.testing.assert_array_equal(out, synth.sample(object_images)[0])


def test_natural_images_pasted(shared_data, texture_images):
    natural = shared_data / "textures" / "natural"
    if not natural.is_dir():
        pytest.skip(f"natural images not found at {natural}")
    g = DefectGenerator(
        operations=("paste",), content_source=natural, region=("ellipse", "perlin"),
        max_regions=3, random_state=0,
    )
    out, masks = g.sample(texture_images)
    _assert_mask_matches(out, masks, texture_images)
    np.testing.assert_array_equal(masks, g.sample(texture_images)[1])


def test_foreground_on_bottle(mvtec_root):
    from skad.utils.validation import load_image

    path = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[0]
    img = load_image(path)
    m = foreground_mask(img, invert=True)  # a dark bottle seen from above on a light ground
    h, w = m.shape
    assert m[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20].mean() > 0.9
    assert m[:10, :10].mean() < 0.1 and 0.2 < m.mean() < 0.9
