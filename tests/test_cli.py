"""The ``skad`` command line, run in-process on tiny data (64 px synthetic images).

Two fast detectors: the registry's ``lof`` (LocalOutlierFactor on pooled features) and
``mean_distance``, a small patch detector defined here on BaseDetector and added to the
registry's discovery, so these tests depend only on the CLI, the registry, the
extractor and the data/metrics modules.
"""

import ast
import io
import os

import joblib
import numpy as np

import skad
import pandas as pd
import pytest
from PIL import Image

import skad.registry as registry
from skad.cli import _literal, _parse_params, main
from skad.datasets import make_synthetic
from skad.detectors import BaseDetector, PatchDetectorMixin
from skad.preprocessing import ResizeCrop

SIZE = 64
FAST = ["--input-size", str(SIZE), "--quiet"]


class MeanDistance(PatchDetectorMixin, BaseDetector):
    """Squared distance of each patch to the mean training patch (test-only detector)."""

    _parameter_constraints = {**BaseDetector._parameter_constraints}

    def __init__(self, *, contamination="auto", sigma=4.0):
        self.contamination = contamination
        self.sigma = sigma

    def _fit(self, X):
        self.mean_ = X.mean(axis=(0, 2, 3))

    def _score(self, X):
        maps = ((X - self.mean_[None, :, None, None]) ** 2).sum(axis=1)
        return maps.max(axis=(1, 2)), maps


@pytest.fixture(autouse=True)
def _tiny_detector(monkeypatch):
    real = registry._discover_detector_classes
    monkeypatch.setattr(registry, "_discover_detector_classes", lambda: [*real(), MeanDistance])


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train=8, n_test=8, image_size=SIZE, random_state=0)


def _save(images, folder, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{prefix}{i:03d}.png")


@pytest.fixture(scope="module")
def folders(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    _save(data.train_images, root / "cat" / "train" / "good", "train")
    _save(data.test_images, root / "test_images", "t")
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny benchmark run shared by the tests that read its outputs."""
    mp = pytest.MonkeyPatch()
    real = registry._discover_detector_classes
    mp.setattr(registry, "_discover_detector_classes", lambda: [*real(), MeanDistance])
    out = tmp_path_factory.mktemp("report")
    stdout = io.StringIO()
    code = main(["benchmark", "--n-train", "8", "--n-test", "8", "--image-size", str(SIZE),
                 "--detectors", "mean_distance,lof", "--param", "lof.n_neighbors=5",
                 "--out", str(out), *FAST], stdout=stdout)
    mp.undo()
    return code, out, stdout.getvalue()


def test_benchmark_writes_results_and_reports(bench):
    code, out, printed = bench
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert list(table["detector"]) == ["mean_distance", "lof"]
    for col in ["image_auroc", "pixel_auroc", "pro", "pixel_ap", "fit_s",
                "predict_img_per_s", "peak_mem_mb"]:
        assert col in table
    md = table.set_index("detector")
    assert 0.0 <= md.loc["mean_distance", "pixel_auroc"] <= 1.0
    assert 0.0 <= md.loc["mean_distance", "pro"] <= 1.0
    assert 0.0 <= md.loc["lof", "image_auroc"] <= 1.0
    assert np.isnan(md.loc["lof", "pixel_auroc"])  # image-level detector: no maps
    assert (md["fit_s"] >= 0).all() and (md["predict_img_per_s"] > 0).all()
    # the table is printed at the end
    assert "mean_distance" in printed and "image_auroc" in printed
    html = (out / "report.html").read_text()
    md_text = (out / "report.md").read_text()
    for name in ("mean_distance", "lof"):
        assert f'data-detector="{name}"' in html and f"| {name} |" in md_text
    # every figure the reports reference exists beside them
    import re

    refs = set(re.findall(r'src="([^"]+)"', html)) | set(re.findall(r"\]\(([^)]+)\)", md_text))
    assert any("roc" in r for r in refs) and any("pro" in r for r in refs)
    assert len([r for r in refs if "case" in r]) >= 4
    for ref in refs:
        assert (out / ref).is_file(), ref
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == ["file", "label", "mean_distance", "lof"]
    assert len(scores) == 8
    # peak memory is shown, never ranked: no bold in its column; below 1 MB it reads "<1"
    header = next(line for line in md_text.splitlines() if line.startswith("| detector"))
    col = [c.strip() for c in header.strip("|").split("|")].index("peak memory MB")
    for name in ("mean_distance", "lof"):
        row = next(line for line in md_text.splitlines() if line.startswith(f"| {name} |"))
        cell = [c.strip() for c in row.strip("|").split("|")][col]
        assert not cell.startswith("**")
        value = md.loc[name, "peak_mem_mb"]
        assert cell == ("<1" if value < 1 else f"{value:.1f}")


def test_peak_memory_sees_pages_an_earlier_detector_freed():
    # LOF after PaDiM used to read ~0.6 MB (pages PaDiM freed, still resident, reused);
    # its own numpy allocations peak at ~3.5 MB (benchmarks/results/peak_memory_check.md)
    from sklearn.pipeline import make_pipeline

    from skad.benchmark import PeakMemory
    from skad.registry import make_detector_steps

    X = np.random.default_rng(0).normal(size=(30, 152, 28, 28)).astype(np.float32)
    make_pipeline(*make_detector_steps("padim", random_state=0)).fit(X)
    lof = make_pipeline(*make_detector_steps("lof"))
    with PeakMemory() as mem:
        lof.fit(X).score_samples(X[:20])
    if mem.method != "rss":
        pytest.skip("resident-memory measure needs Linux /proc")
    assert mem.peak_mb > 2.0


def test_fit_predict_reproduces_benchmark_scores(bench, folders, data, tmp_path):
    _, out, _ = bench
    model = tmp_path / "m.skad"
    assert main(["fit", "--train", str(folders / "cat"), "-o", str(model),
                 "--detector", "mean_distance", "--resize", "none", "--crop", "none",
                 *FAST], stdout=io.StringIO()) == 0
    # MeanDistance is defined in this test module: loading it must be asked for
    with pytest.raises(ValueError, match="trusted="):
        skad.load(model)
    pipe = skad.load(model, trusted=[MeanDistance.__module__])
    assert isinstance(pipe.steps[0][1], ResizeCrop)  # preprocessing inside the model
    csv = tmp_path / "scores.csv"
    maps = tmp_path / "maps"
    assert main(["predict", "--model", str(model), "--images", str(folders / "test_images"),
                 "-o", str(csv), "--maps", str(maps), "--quiet",
                 "--trust", MeanDistance.__module__], stdout=io.StringIO()) == 0
    pred = pd.read_csv(csv)
    bench_scores = pd.read_csv(out / "scores.csv")["mean_distance"].to_numpy()
    np.testing.assert_allclose(pred["anomaly_score"], bench_scores, rtol=1e-4)
    # the in-Python model gives the same scores on the arrays
    np.testing.assert_allclose(pipe.anomaly_score(data.test_images), bench_scores, rtol=1e-4)
    # decisions follow the model's own threshold
    offset = pipe.steps[-1][1].offset_
    np.testing.assert_array_equal(
        pred["prediction"], np.where(pred["anomaly_score"] > -offset, -1, 1))
    assert set(pred["prediction"]) <= {-1, 1}
    pngs = sorted(os.listdir(maps))
    assert len(pngs) == 8 and all(p.endswith("_heatmap.png") for p in pngs)
    assert Image.open(maps / pngs[0]).size == (SIZE, SIZE)


@pytest.fixture(scope="module")
def lof_model(folders, tmp_path_factory):
    model = tmp_path_factory.mktemp("lof") / "m.skad"
    assert main(["fit", "--train", str(folders / "cat" / "train" / "good"), "-o", str(model),
                 "--detector", "lof", "--param", "n_neighbors=3", "--resize", "none",
                 "--crop", "none", *FAST], stdout=io.StringIO()) == 0
    return model


def test_predict_threshold(lof_model, folders, tmp_path):
    assert skad.load(lof_model).steps[-1][1].n_neighbors == 3
    for thr, expected in (("1e9", 1), ("-1e9", -1)):
        csv = tmp_path / f"s{expected}.csv"
        assert main(["predict", "--model", str(lof_model), "--images",
                     str(folders / "test_images"), "-o", str(csv), f"--threshold={thr}",
                     "--quiet"], stdout=io.StringIO()) == 0
        assert (pd.read_csv(csv)["prediction"] == expected).all()
    csv = tmp_path / "all.csv"  # --recursive: train/good and test_images below the root
    assert main(["predict", "--model", str(lof_model), "--images", str(folders), "-o",
                 str(csv), "--recursive", "--quiet"], stdout=io.StringIO()) == 0
    assert len(pd.read_csv(csv)) == 16


def test_predict_input_errors(lof_model, folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run(["predict", "--model", str(lof_model), "--images", str(empty), "-o",
                      str(tmp_path / "s.csv")], capsys)
    assert code == 2 and "no images" in err
    # an image-level model has no maps to write
    code, err = _run(["predict", "--model", str(lof_model), "--images",
                      str(folders / "test_images"), "-o", str(tmp_path / "x.csv"),
                      "--maps", str(tmp_path / "m")], capsys)
    assert code == 2 and "no anomaly maps" in err


def test_predict_checks_arguments_before_loading_the_model(lof_model, tmp_path, capsys,
                                                           monkeypatch):
    import skad.cli as cli

    def slow_load(*a, **k):
        raise AssertionError("the model was loaded before the cheap checks")

    monkeypatch.setattr(cli, "_load_model", slow_load)
    code, err = _run(["predict", "--model", str(lof_model), "--images",
                      str(tmp_path / "missing"), "-o", str(tmp_path / "s.csv")], capsys)
    assert code == 2 and "folder not found" in err


def test_predict_skips_and_lists_unreadable_images(lof_model, folders, tmp_path, capsys):
    images = tmp_path / "mixed"
    images.mkdir()
    for f in sorted(os.listdir(folders / "test_images"))[:3]:
        (images / f).write_bytes((folders / "test_images" / f).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (images / "empty.png").write_bytes(b"")
    csv = tmp_path / "s.csv"
    code, err = _run(["predict", "--model", str(lof_model), "--images", str(images), "-o",
                      str(csv), "--batch-size", "2", "--quiet"], capsys)
    assert code == 2
    assert "2 image(s) could not be scored" in err
    assert "broken.png" in err and "empty.png" in err
    table = pd.read_csv(csv)
    assert len(table) == 3 and not table["file"].str.contains("broken|empty").any()
    # --on-error stop: nothing written
    csv2 = tmp_path / "s2.csv"
    code, err = _run(["predict", "--model", str(lof_model), "--images", str(images), "-o",
                      str(csv2), "--on-error", "stop", "--quiet"], capsys)
    assert code == 2 and "cannot read image file" in err and not csv2.exists()


def test_crop_is_in_help(capsys):
    assert main(["fit", "--help"], stdout=io.StringIO()) == 0
    assert "--crop" in capsys.readouterr().out


def _run(argv, capsys):
    code = main(argv, stdout=io.StringIO())
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--train", "/nonexistent/dir", "-o", "m.joblib", "--detector", "lof"],
         "folder not found"),
        (["fit", "--train", "{empty}", "-o", "m.joblib", "--detector", "lof"], "no images"),
        (["fit", "--train", "{empty}", "-o", "m.joblib", "--detector", "mean_distanse"],
         "did you mean 'mean_distance'"),
        (["fit", "--train", "{empty}", "-o", "m.joblib", "--detector", "lof",
          "--param", "n_neigbors=3"], "did you mean 'n_neighbors'"),
        (["fit", "--train", "{empty}", "-o", "m.joblib", "--detector", "lof",
          "--param", "oops"], "NAME=VALUE"),
        (["predict", "--model", "/nonexistent.joblib", "--images", "{empty}", "-o", "s.csv"],
         "model file not found"),
        (["predict", "--model", "{garbage}", "--images", "{images}", "-o", "s.csv"],
         "not a skad model file"),
        (["predict", "--model", "{pickle}", "--images", "{images}", "-o", "s.csv"],
         "looks like a pickle"),
        (["predict", "--model", "{zero}", "--images", "{images}", "-o", "s.csv"],
         "the file is empty (0 bytes), not a skad model"),
        (["predict", "--model", "{notmodel}", "--images", "{images}", "-o", "s.csv"],
         "does not hold a skad model"),
        (["predict", "--model", "{notmodel}", "--images", "{images}", "-o",
          "/nonexistent/s.csv"], "folder of the scores file not found"),
        (["benchmark", "--detectors", "lfo"], "did you mean 'lof'"),
        (["benchmark", "--data", "/nonexistent/data"], "folder not found"),
        (["benchmark", "--param", "lof.n_neighbours=3", "--detectors", "lof"],
         "did you mean 'n_neighbors'"),
        (["benchmark", "--bogus-flag"], "unrecognized arguments"),
        (["fit", "--train", "{empty}"], "required"),
    ],
)
def test_error_paths_exit_2_with_one_line(argv, message, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"not a pickle at all")
    pkl = tmp_path / "dict.joblib"
    joblib.dump({"a": 1}, pkl)
    notmodel = tmp_path / "dict.skad"
    skad.save({"a": 1}, notmodel)
    zero = tmp_path / "zero.skad"
    zero.write_bytes(b"")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    subs = {"{empty}": str(empty), "{garbage}": str(garbage), "{notmodel}": str(notmodel),
            "{pickle}": str(pkl), "{zero}": str(zero), "{images}": str(images)}
    argv = [subs.get(a, a) for a in argv]
    code, err = _run(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("skad")


def test_unexpected_error_exits_1(monkeypatch, capsys):
    import skad.cli as cli

    def boom(args, out):
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "_cmd_list", boom)
    code, err = _run(["list"], capsys)
    assert code == 1 and "unexpected error" in err and "something broke" in err
    with pytest.raises(RuntimeError):
        main(["--traceback", "list"])


def test_list_and_no_command(capsys):
    out = io.StringIO()
    assert main(["list"], stdout=out) == 0
    names = [line.split()[0] for line in out.getvalue().splitlines()]
    assert names == registry.default_detectors()
    assert main([], stdout=io.StringIO()) == 2


def test_param_values_are_literals_never_evaluated():
    assert _literal("0.1") == 0.1 and _literal("[1, 2]") == [1, 2]
    assert _literal("None") is None and _literal("cosine") == "cosine"
    # not a literal: kept as the string, never executed
    assert _literal("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert _parse_params(["patchcore.coreset_ratio=0.01", "lof.n_neighbors=5"], scoped=True) == {
        "patchcore": {"coreset_ratio": 0.01}, "lof": {"n_neighbors": 5}}
    assert ast.literal_eval("(1, 2)") == _parse_params(["k=(1, 2)"], scoped=False)["k"]


def test_registry_discovers_every_exported_detector():
    import inspect

    import skad.detectors as detectors

    names = registry.default_detectors()
    assert names[-1] == "lof" and "mean_distance" in names
    exported = [
        getattr(detectors, a) for a in detectors.__all__
        if inspect.isclass(getattr(detectors, a))
        and issubclass(getattr(detectors, a), BaseDetector)
        and getattr(detectors, a) is not BaseDetector
    ]
    specs = registry.available_detectors()
    assert {type(s.estimator) for s in specs.values()} >= set(exported)
    with pytest.raises(registry.UnknownDetectorError, match="did you mean 'mean_distance'"):
        registry.get_detector("mean_distanse")


def test_registry_blind_sets_exclude():
    from skad.detectors import BlindModeMixin

    n_blind = 0
    for name, spec in registry.available_detectors().items():
        steps = registry.make_detector_steps(name, blind=True, random_state=3)
        params = steps[-1].get_params()
        if isinstance(steps[-1], BlindModeMixin):
            assert params["exclude"] == "self"
            n_blind += 1
        assert params.get("exclude_self", "deprecated") == "deprecated"
        if "random_state" in params:
            assert params["random_state"] == 3
    assert n_blind >= 3  # PatchCore, SPADE, PatchCluster


PADIM_PAPER = {"pooling": 1, "upsample": "nearest"}


def test_registry_feature_recipes(monkeypatch):
    from skad.features import PatchFeatureExtractor

    assert registry.available_detectors()["padim"].features == {}   # none measured better
    monkeypatch.setitem(registry._FEATURE_RECIPES, "padim", PADIM_PAPER)
    specs = registry.available_detectors()
    assert specs["padim"].features == PADIM_PAPER
    assert specs["patchcore"].features == {}
    base = PatchFeatureExtractor(input_size=64, normalize="lite")
    ext = registry.recipe_extractor("padim", base, specs)
    assert ext is not base and (ext.pooling, ext.upsample) == (1, "nearest")
    assert (base.pooling, base.upsample) == (3, "bilinear")        # not modified
    assert ext.input_size == 64 and ext.normalize == "lite"          # the rest is kept
    assert registry.recipe_extractor("patchcore", base, specs) is base
    follows = PatchFeatureExtractor(pooling=1, upsample="nearest")
    assert registry.recipe_extractor("padim", follows, specs) is follows
    pipe = registry.make_model("padim", base, specs=specs)
    assert (pipe[0].pooling, pipe[0].upsample) == (1, "nearest")
    assert registry.make_model("padim", base, specs=specs, recipe=False)[0] is base


def test_run_benchmark_gives_a_detector_its_recipe_features(monkeypatch):
    from skad.report import run_benchmark

    monkeypatch.setitem(registry._FEATURE_RECIPES, "padim", PADIM_PAPER)
    data = make_synthetic(n_train=6, n_test=6, image_size=64, random_state=0)
    res = run_benchmark(data, ["padim", "patchcore"], input_size=64, verbose=False)
    params = {r.name: r.params for r in res.runs}
    assert params["padim"]["features"] == "pooling=1, upsample='nearest'"
    assert "features" not in params["patchcore"]
    off = run_benchmark(data, ["padim"], input_size=64, verbose=False, recipes=False)
    assert "features" not in off.runs[0].params
    # different features, so different scores
    assert not np.allclose(res.runs[0].scores, off.runs[0].scores)


def test_resize_crop_matches_the_loaders(tmp_path):
    from skad.datasets._io import read_image

    rng = np.random.default_rng(0)
    img = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    step = ResizeCrop(resize=64, crop=48)
    from_paths = step.fit_transform([str(path)])
    from_arrays = step.transform(img[None])
    expected = read_image(path, resize=64, crop=(48, 48))
    assert from_paths.shape == (1, 48, 48, 3)
    np.testing.assert_array_equal(from_paths[0], expected)
    np.testing.assert_array_equal(from_arrays[0], expected)
    assert ResizeCrop(resize=None, crop=None).transform(img[None]).shape == (1, 90, 120, 3)
    with pytest.raises(ValueError, match="crop"):
        ResizeCrop(resize=32, crop=48).transform(img[None])


def test_fit_shows_coreset_progress(folders, tmp_path, capsys):
    # `skad fit` reports the coreset selection (the long silent step on large sets);
    # --quiet hides it, and the saved model is quiet either way
    for quiet in (False, True):
        out = tmp_path / f"m{quiet}.skad"
        argv = ["fit", "--train", str(folders / "cat"), "--detector", "patchcore",
                "--input-size", str(SIZE), "-o", str(out)] + (["--quiet"] if quiet else [])
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert ("PatchCore coreset" in err) is not quiet
        assert skad.load(out)[-1].verbose is False


def test_benchmark_reports_clipped_parameters_instead_of_warning(tmp_path):
    # 8 training images: SPADE's default n_neighbors=50 is clipped to 7 (the data the
    # benchmark chose, not the user's setting): a note in the output and the report
    import warnings

    from skad.detectors import ClippedParameterWarning

    stdout = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["benchmark", "--n-train", "8", "--n-test", "8", "--image-size",
                     str(SIZE), "--detectors", "spade", "--out", str(tmp_path), *FAST],
                    stdout=stdout)
    assert code == 0
    assert not [w for w in caught if issubclass(w.category, ClippedParameterWarning)]
    note = "n_neighbors=50 exceeds the 7 other training images; SPADE uses n_neighbors_=7"
    assert f"note: spade: {note}" in stdout.getvalue()
    assert note in (tmp_path / "report.md").read_text()
    assert note in (tmp_path / "report.html").read_text()


def test_clip_notes_pass_other_warnings_through():
    import warnings

    from skad.benchmark import _clip_notes
    from skad.detectors import ClippedParameterWarning

    notes = []
    with pytest.warns(UserWarning, match="other") as record:
        with _clip_notes(notes):
            warnings.warn("k=9 exceeds 4", ClippedParameterWarning)
            warnings.warn("k=9 exceeds 4", ClippedParameterWarning)  # kept once
            warnings.warn("other", UserWarning)
    assert notes == ["k=9 exceeds 4"]
    assert [w.category for w in record] == [UserWarning]
