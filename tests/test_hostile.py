"""Hostile input, property-based (hypothesis): every public estimator, loader, skad.load
and the CLI get random shapes, dtypes, NaN/inf, empty and one-image sets, mismatched
sizes between fit and predict, truncated / corrupt / zero-byte files, wrong channel
counts, huge images and unreadable folders.

The property everywhere: either a valid result, or a documented error (``ValueError`` /
``TypeError``, skad's own subclasses of them, ``FileNotFoundError`` where documented)
whose message names the input; never a bare torch / numpy / PIL exception, never a
changed input array, never a partial output file.

The CI profile ("skad-ci", the default) is derandomized and small, so the file runs in
well under a minute on 2 cores; ``HYPOTHESIS_PROFILE=skad-thorough`` runs 10x more cases
(doc/operating.md, "Hostile input", gives both counts). ``--hypothesis-show-statistics``
prints the number of cases each test ran.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")  # the [test] extra installs it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.base import clone  # noqa: E402

import skad  # noqa: E402
from skad.alignment import ImageAligner  # noqa: E402
from skad.cli import main  # noqa: E402
from skad.datasets import load_folder, load_mvtec  # noqa: E402
from skad.detectors import SMCC, LocalOCC, MemSeg  # noqa: E402
from skad.features import PatchFeatureExtractor  # noqa: E402
from skad.registry import available_detectors  # noqa: E402
from skad.synthesis import AnomalySynthesizer, DefectGenerator  # noqa: E402
from skad.utils.validation import check_images, check_patches, load_image  # noqa: E402

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("skad-ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("skad-thorough", max_examples=250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "skad-ci"))


def few(n):
    """A test's case count: ``n`` under the CI profile, scaled with the loaded profile."""
    return settings(max_examples=max(1, settings.default.max_examples * n // 25))


# --------------------------------------------------------------------------- the property
DOCUMENTED = (ValueError, TypeError)  # skad's ModelFileError etc. subclass ValueError


def _message_names(exc, names):
    text = str(exc)
    return any(n and n in text for n in names)


def expect_clean(fn, *args, names=("X",), inputs=(), allow=(), **kwargs):
    """Call ``fn``; a raised error must be documented and name one of ``names`` (for a
    bound method: also any parameter of its estimator, e.g. ``structure_grid``: 4x8
    cells do not fit an image of 2x2 pixels); arrays in ``inputs`` must be unchanged.
    Returns the result or the error."""
    owner = getattr(fn, "__self__", None)
    if hasattr(owner, "get_params"):
        names = tuple(names) + tuple(owner.get_params(deep=False))
    before = [np.array(a, copy=True) for a in inputs]
    try:
        out = fn(*args, **kwargs)
    except DOCUMENTED + tuple(allow) as exc:
        assert type(exc).__module__.split(".")[0] in ("builtins", "skad", "sklearn"), (
            f"{type(exc).__module__}.{type(exc).__name__} leaked: {exc}")
        assert _message_names(exc, names), f"message names none of {names}: {exc!r}"
        out = exc
    for a, b in zip(inputs, before):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg="input array was changed")
    _label("error" if isinstance(out, Exception) else "result")
    return out


def _label(outcome):
    """Count outcomes in --hypothesis-show-statistics (results vs documented errors)."""
    from hypothesis import event
    from hypothesis.control import _current_build_context

    if _current_build_context.value is not None:  # inside a @given test
        event(outcome)


# --------------------------------------------------------------------------- strategies
_DTYPES = [np.uint8, np.uint16, np.int8, np.int64, np.float16, np.float32, np.float64,
           np.bool_, np.complex64]


@st.composite
def arrays(draw, ndims=(0, 1, 2, 3, 4, 5), max_side=6, dtypes=_DTYPES, special=True):
    """Small arrays of any listed ndim and dtype; floats may hold NaN/inf or lie outside
    [0, 1]; sides may be 0."""
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if dtype.kind == "f":
        finite = st.floats(-2, 2, width=min(dtype.itemsize * 8, 64))
        elements = st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf])) \
            if special else finite
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=2, allow_nan=False, allow_infinity=False)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def image_like(draw, n=(0, 4), side=(1, 40), channels=(None, 1, 2, 3, 4)):
    """Image arrays that are valid or near-valid: random n, size, channel count, dtype,
    value range, NaN/inf."""
    k = draw(st.integers(*n))
    h, w = draw(st.integers(*side)), draw(st.integers(*side))
    c = draw(st.sampled_from(channels))
    shape = (k, h, w) if c is None else (k, h, w, c)
    kind = draw(st.sampled_from(["uint8", "unit", "float_out", "nan", "int16", "bool"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "uint8":
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind == "unit":
        return rng.random(shape).astype(draw(st.sampled_from([np.float32, np.float64])))
    if kind == "float_out":
        return (rng.random(shape) * 4 - 1).astype(np.float32)
    if kind == "nan":
        a = rng.random(shape).astype(np.float32)
        if a.size:
            a.flat[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
        return a
    if kind == "int16":
        return rng.integers(-300, 300, shape).astype(np.int16)
    return rng.random(shape) > 0.5


def _valid_images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    base = np.full((size, size, 3), 110.0)
    base[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 60
    return np.clip(base + rng.normal(0, 6, (n, size, size, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- validation
@few(50)
@given(arrays())
def test_check_images_on_any_array(X):
    out = expect_clean(check_images, X, inputs=[X])
    if not isinstance(out, Exception):
        assert len(out) == X.shape[0] and out.batch(slice(0, 1)).shape[-1] == 3


@few(50)
@given(arrays())
def test_check_patches_on_any_array(X):
    out = expect_clean(check_patches, X, inputs=[X])
    if not isinstance(out, Exception):
        assert out.ndim == 4 and out.dtype == np.float32 and np.isfinite(out).all()


@few(25)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                 st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
def test_validators_on_non_arrays(X):
    expect_clean(check_images, X, allow=(FileNotFoundError,))
    expect_clean(check_patches, X)


# --------------------------------------------------------------------------- patch detectors
PATCH_DETECTORS = {n: s for n, s in available_detectors().items()
                   if s.input == "patches" and not s.pre}


@pytest.fixture(scope="module")
def fitted_patch_detectors():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5, 3, 3)).astype(np.float32)
    return X, {n: clone(s.estimator).set_params(**_fast(s.estimator)).fit(X)
               for n, s in PATCH_DETECTORS.items()}


def _fast(est):
    p = est.get_params(deep=False)
    out = {k: v for k, v in {"device": "cpu", "random_state": 0}.items() if k in p}
    return out


@pytest.mark.parametrize("name", sorted(PATCH_DETECTORS))
@few(12)
@given(X=arrays(ndims=(0, 1, 2, 3, 4), max_side=5))
def test_patch_detector_fit_on_any_array(name, X):
    est = clone(PATCH_DETECTORS[name].estimator)
    est.set_params(**_fast(est))
    # "PaDiM needs at least 2 training images ...; got 1 sample(s)" names the input too
    out = expect_clean(est.fit, X, inputs=[X], names=("X", "k=", "sample"))
    if not isinstance(out, Exception):
        s = out.score_samples(X)
        assert s.shape == (len(X),) and np.isfinite(s).all()


@pytest.mark.parametrize("name", sorted(PATCH_DETECTORS))
@few(12)
@given(X=st.one_of(arrays(ndims=(2, 4), max_side=6),
                   hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(5),
                                                    st.integers(1, 5), st.integers(1, 5)),
                              elements=st.floats(-3, 3, width=32))))
def test_patch_detector_predict_on_any_array(name, X, fitted_patch_detectors):
    _, fitted = fitted_patch_detectors
    est = fitted[name]
    for method in ("score_samples", "predict", "anomaly_map"):
        out = expect_clean(getattr(est, method), X, inputs=[X])
        if not isinstance(out, Exception):
            assert len(out) == len(X) and np.isfinite(np.asarray(out, float)).all()


# --------------------------------------------------------------------------- image estimators
def _image_estimators():
    ext = PatchFeatureExtractor(input_size=32, device="cpu")
    return {
        "extractor": ext,
        "smcc": SMCC(clone(ext), epochs=1, batch_size=4, random_state=0, device="cpu"),
        "memseg": MemSeg(clone(ext), n_memory=1, max_iter=1, batch_size=2, top_k=4,
                         random_state=0, device="cpu"),
        "local_occ": LocalOCC(extractor=clone(ext), epochs=1, batch_size=4, random_state=0,
                              device="cpu"),
        "aligner": ImageAligner(input_size=16, epochs=1, batch_size=4, random_state=0,
                                device="cpu"),
    }


@pytest.fixture(scope="module")
def fitted_image_estimators():
    X = _valid_images(6)
    return X, {n: e.fit(X) for n, e in _image_estimators().items()}


def _apply(name, est, X):
    if name in ("extractor", "aligner"):
        return est.transform(X)
    return est.score_and_map(X)


@pytest.mark.parametrize("name", ["extractor", "smcc", "memseg", "local_occ", "aligner"])
@few(6)
@given(X=image_like())
def test_image_estimator_predict_on_any_images(name, X, fitted_image_estimators):
    _, fitted = fitted_image_estimators
    out = expect_clean(_apply, name, fitted[name], X, inputs=[X])
    if not isinstance(out, Exception):
        first = out[0] if isinstance(out, tuple) else out
        assert len(first) == len(X)
        assert all(np.isfinite(np.asarray(o, float)).all()
                   for o in (out if isinstance(out, tuple) else (out,)))


@pytest.mark.parametrize("name", ["smcc", "memseg", "local_occ", "aligner", "extractor"])
@few(3)
@given(X=image_like(n=(0, 3), side=(1, 24)))
def test_image_estimator_fit_on_any_images(name, X):
    est = _image_estimators()[name]
    expect_clean(est.fit, X, inputs=[X])


def test_huge_image_arrays_are_resized_not_refused(fitted_image_estimators):
    _, fitted = fitted_image_estimators
    X = np.zeros((1, 2048, 1536, 3), np.uint8)  # 9.4 MB; 38 MB as float
    feats = expect_clean(fitted["extractor"].transform, X, inputs=[X])
    assert feats.shape[0] == 1 and np.isfinite(feats).all()
    scores, maps = fitted["smcc"].score_and_map(X)
    assert maps.shape[0] == 1 and np.isfinite(maps).all()


@pytest.mark.parametrize("name", ["smcc", "memseg", "local_occ"])
def test_image_detectors_refuse_patch_tensors(name, fitted_image_estimators):
    _, fitted = fitted_image_estimators
    P = np.random.default_rng(0).random((2, 7, 5, 5)).astype(np.float32)
    err = expect_clean(fitted[name].score_samples, P, inputs=[P])
    assert isinstance(err, ValueError)


# --------------------------------------------------------------------------- synthesizers
@pytest.mark.parametrize("synth", [AnomalySynthesizer(random_state=0),
                                   DefectGenerator(random_state=0)],
                         ids=["AnomalySynthesizer", "DefectGenerator"])
@few(20)
@given(X=image_like(side=(1, 24)))
def test_synthesizers_on_any_images(synth, X):
    out = expect_clean(synth.sample, X, inputs=[X])
    if not isinstance(out, Exception):
        images, masks = out
        assert images.shape[:3] == masks.shape == X.shape[:3]
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


# --------------------------------------------------------------------------- files
def _png_bytes(shape=(12, 10, 3), mode=None):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8),
                    mode=mode).save(buf, format="PNG")
    return buf.getvalue()


_GOOD_PNG = _png_bytes()


@st.composite
def bad_file_bytes(draw):
    """Zero-byte, truncated, bit-flipped or random files (some may still decode)."""
    kind = draw(st.sampled_from(["empty", "truncated", "flipped", "random", "text"]))
    if kind == "empty":
        return b""
    if kind == "truncated":
        return _GOOD_PNG[:draw(st.integers(1, len(_GOOD_PNG) - 1))]
    if kind == "flipped":
        b = bytearray(_GOOD_PNG)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=200))
    return draw(st.text(max_size=50)).encode()


@few(60)
@given(data=bad_file_bytes(), suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif"]))
def test_load_image_on_damaged_files(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("img") / f"bad{suffix}"
    p.write_bytes(data)
    out = expect_clean(load_image, p, names=(str(p),))
    if not isinstance(out, Exception):
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 3


def _png_header_only(width, height):
    """A tiny PNG file that declares ``width x height`` pixels (its data is cut short)."""
    import struct
    import zlib

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_load_image_on_a_decompression_bomb(tmp_path):
    # regression: a file declaring 30000 x 30000 pixels (900 Mpx, over Pillow's bomb
    # limit) raised PIL's DecompressionBombError from every reader
    from skad.datasets._io import read_image

    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(30000, 30000))
    for reader in (load_image, lambda q: read_image(q, resize=16)):
        err = expect_clean(reader, p, names=(str(p),))
        assert isinstance(err, ValueError) and "pixels" in str(err)
    err = expect_clean(check_images([p]).batch, [0], names=(str(p),))
    assert isinstance(err, ValueError)


def test_load_image_on_folders_and_missing_files(tmp_path):
    err = expect_clean(load_image, tmp_path, names=(str(tmp_path),))
    assert isinstance(err, ValueError)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


@few(20)
@given(data=bad_file_bytes(), n_good=st.integers(0, 2))
def test_extractor_on_damaged_files(tmp_path_factory, data, n_good, fitted_image_estimators):
    _, fitted = fitted_image_estimators
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(n_good):
        (folder / f"good{i}.png").write_bytes(_GOOD_PNG)
        paths.append(os.fspath(folder / f"good{i}.png"))
    (folder / "bad.png").write_bytes(data)
    paths.append(os.fspath(folder / "bad.png"))
    out = expect_clean(fitted["extractor"].transform, paths, names=("bad.png",))
    if not isinstance(out, Exception):
        assert out.shape[0] == len(paths)


@few(15)
@given(data=bad_file_bytes(), sizes=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20)),
                                             min_size=0, max_size=3),
       resize=st.sampled_from([None, 16]), channels=st.sampled_from(["RGB", "L", "RGBA"]))
def test_load_folder_on_damaged_trees(tmp_path_factory, data, sizes, resize, channels):
    root = tmp_path_factory.mktemp("folder")
    (root / "good").mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.new(channels, (w, h)).save(root / "good" / f"{i}.png")
    (root / "good" / "zz_bad.png").write_bytes(data)
    out = expect_clean(load_folder, root, resize=resize,
                       names=("zz_bad.png", str(root), "size", "resize"))
    if not isinstance(out, Exception):
        assert out.images.ndim == 4 and out.images.dtype == np.uint8


@few(15)
@given(where=st.sampled_from(["train", "test_good", "test_defect", "mask"]),
       data=bad_file_bytes(), mask_size=st.sampled_from([(20, 20), (10, 12)]),
       resize=st.sampled_from([None, 16]), crop=st.sampled_from([None, 12, 40]))
def test_load_mvtec_on_damaged_trees(tmp_path_factory, where, data, mask_size, resize, crop):
    root = tmp_path_factory.mktemp("mvtec")
    cat = root / "thing"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (cat / sub).mkdir(parents=True)
    img = Image.fromarray(_valid_images(1, 20)[0])
    for sub in ("train/good", "test/good", "test/crack"):
        img.save(cat / sub / "000.png")
    Image.new("L", mask_size[::-1], 255).save(cat / "ground_truth/crack/000_mask.png")
    target = {"train": "train/good/001.png", "test_good": "test/good/001.png",
              "test_defect": "test/crack/000.png",
              "mask": "ground_truth/crack/000_mask.png"}[where]
    (cat / target).write_bytes(data)
    out = expect_clean(load_mvtec, root, "thing", resize=resize, crop=crop,
                       names=(Path(target).name, "crop", "resize", "mask"))
    if not isinstance(out, Exception):
        assert out.train_images.dtype == np.uint8 and len(out.test_labels) == 2


def test_loaders_on_missing_and_empty_folders(tmp_path):
    for fn, args in [(load_folder, (tmp_path / "nope",)), (load_folder, (tmp_path,)),
                     (load_mvtec, (tmp_path, "bottle")), (load_mvtec, (tmp_path / "x", "y"))]:
        expect_clean(fn, *args, names=(str(tmp_path),), allow=(FileNotFoundError,))
    (tmp_path / "a_file").write_text("x")
    expect_clean(load_folder, tmp_path / "a_file", names=("a_file",),
                 allow=(FileNotFoundError, NotADirectoryError))


# --------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from skad.detectors import PaDiM

    X = np.random.default_rng(0).normal(size=(20, 4))
    path = tmp_path_factory.mktemp("model") / "padim.skad"
    skad.save(PaDiM(random_state=0, device="cpu").fit(X), path)
    return path.read_bytes(), X


@few(80)
@given(how=st.sampled_from(["truncate", "flip", "append", "header"]),
       at=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255),
       junk=st.binary(max_size=40))
def test_load_refuses_damaged_model_files(model_file, tmp_path_factory, how, at, byte, junk):
    data, X = model_file
    i = int(at * len(data))
    if how == "truncate":
        data = data[:i]
    elif how == "flip":
        data = data[:i] + bytes([byte]) + data[i + 1:]
    elif how == "append":
        data = data + junk
    else:  # a valid zip whose header JSON is damaged
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
            for name in src.namelist():
                body = src.read(name)
                if name == "skad_model.json":
                    j = int(at * len(body))
                    body = body[:j] + junk + body[j + 1:]
                dst.writestr(name, body)
        data = buf.getvalue()
    p = tmp_path_factory.mktemp("bad") / "m.skad"
    p.write_bytes(data)
    out = expect_clean(skad.load, p, names=(str(p),))
    if not isinstance(out, Exception):
        # a change the format does not notice (e.g. bytes after the archive) loads the
        # same model
        s = out.score_samples(X)
        assert s.shape == (len(X),)


# --------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train = root / "train"
    train.mkdir()
    for i, im in enumerate(_valid_images(6, size=40)):
        Image.fromarray(im).save(train / f"{i}.png")
    model = root / "m.skad"
    code = main(["fit", "--train", os.fspath(train), "--detector", "padim", "-o",
                 os.fspath(model), "--input-size", "32", "--quiet"])
    assert code == 0
    return model


def _stray_files(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


@few(5)
@given(files=st.lists(st.one_of(bad_file_bytes(), st.just(_GOOD_PNG),
                                st.just(_png_bytes((30, 20), "L")),
                                st.just(_png_bytes((9, 9, 4), "RGBA"))),
                      min_size=1, max_size=4),
       maps=st.booleans())
def test_cli_predict_on_damaged_folders(cli_model, tmp_path_factory, files, maps, capsys):
    root = tmp_path_factory.mktemp("pred")
    images = root / "images"
    images.mkdir()
    for i, data in enumerate(files):
        (images / f"{i}.png").write_bytes(data)
    out = root / "scores.csv"
    argv = ["predict", "--model", os.fspath(cli_model), "--images", os.fspath(images),
            "-o", os.fspath(out), "--quiet"]
    if maps:
        argv += ["--maps", os.fspath(root / "maps")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err and "unexpected error" not in err, err
    assert not _stray_files(root)
    if out.exists():
        import pandas as pd

        table = pd.read_csv(out)
        assert 1 <= len(table) <= len(files) and table["anomaly_score"].notna().all()
        assert (code == 0) == (len(table) == len(files))
        if maps:
            assert all(Path(p).is_file() for p in table["heatmap"])
    else:
        assert code == 2 and "no image could be scored" in err


@few(4)
@given(files=st.lists(bad_file_bytes(), min_size=1, max_size=3))
def test_cli_fit_on_damaged_training_folders(tmp_path_factory, files, capsys):
    root = tmp_path_factory.mktemp("fit")
    train = root / "train"
    train.mkdir()
    for i, data in enumerate(files):
        (train / f"{i}.png").write_bytes(data)
    out = root / "m.skad"
    code = main(["fit", "--train", os.fspath(train), "--detector", "padim", "-o",
                 os.fspath(out), "--input-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "unexpected error" not in err, err
    assert out.exists() == (code == 0)
    assert not _stray_files(root)


@pytest.mark.parametrize("case", ["file_as_folder", "missing", "empty", "model_is_folder",
                                  "model_is_png", "output_in_missing_folder",
                                  "unreadable_folder", "unwritable_output"])
def test_cli_predict_on_unusable_paths(cli_model, tmp_path, case, capsys, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_valid_images(1, 40)[0]).save(images / "a.png")
    model, out = cli_model, tmp_path / "s.csv"
    if case == "file_as_folder":
        images = images / "a.png"
    elif case == "missing":
        images = tmp_path / "nope"
    elif case == "empty":
        images = tmp_path / "empty"
        images.mkdir()
    elif case == "model_is_folder":
        model = tmp_path
    elif case == "model_is_png":
        model = images / "a.png"
    elif case == "output_in_missing_folder":
        out = tmp_path / "no" / "s.csv"
    elif case == "unreadable_folder":  # as root, chmod cannot make one: simulate it
        real = Path.iterdir

        def iterdir(self):
            if self == images:
                raise PermissionError(13, "Permission denied", os.fspath(self))
            return real(self)

        monkeypatch.setattr(Path, "iterdir", iterdir)
    else:
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path)
    code = main(["predict", "--model", os.fspath(model), "--images", os.fspath(images),
                 "-o", os.fspath(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"error: (--images|--model|-o)", err), err
    assert not out.exists()
