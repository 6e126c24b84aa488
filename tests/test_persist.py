"""skad.save / skad.load: identical scores after a round trip, clear refusals, no code run."""

import io
import json
import zipfile

import joblib
import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

import skad
import skad._persist as persist
from skad.detectors import PaDiM, PatchOutlierDetector
from skad.features import PatchFeatureExtractor
from skad.registry import available_detectors, make_model

SIZE = 48


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return (rng.random((8, SIZE, SIZE, 3)) * 255).astype(np.uint8)


# the pipelines `skad fit` builds, for every registered detector that trains in seconds
# (the trained detectors SMCC, MemSeg and LocalOCC take minutes: their pickling
# contract, weights as state dicts, is what save uses too)
FAST = [n for n in available_detectors() if n not in ("smcc", "memseg", "local_occ")]


@pytest.mark.parametrize("name", FAST)
def test_round_trip_gives_identical_scores(name, images, tmp_path):
    model = make_model(name, PatchFeatureExtractor(input_size=SIZE, device="cpu"),
                       random_state=0).fit(images)
    path = skad.save(model, tmp_path / f"{name}.skad")
    back = skad.load(path)
    assert type(back) is type(model) and repr(back) == repr(model)
    np.testing.assert_array_equal(back.score_samples(images), model.score_samples(images))
    np.testing.assert_array_equal(back.predict(images), model.predict(images))
    if hasattr(model, "anomaly_map") and name != "lof":
        np.testing.assert_array_equal(back.anomaly_map(images), model.anomaly_map(images))
    # the file holds arrays (allow_pickle=False) and JSON, nothing else
    with zipfile.ZipFile(path) as zf:
        assert all(n == "skad_model.json" or n.endswith(".npy") for n in zf.namelist())
        for n in zf.namelist()[1:3]:
            np.lib.format.read_array(io.BytesIO(zf.read(n)), allow_pickle=False)


def test_round_trip_of_sklearn_trees_and_random_states(tmp_path):
    X = np.random.default_rng(1).normal(size=(40, 3))
    # a KD-tree (a Cython type) inside the fitted LocalOutlierFactor
    lof = LocalOutlierFactor(n_neighbors=5, novelty=True, algorithm="kd_tree")
    det = PatchOutlierDetector(lof, random_state=np.random.RandomState(3)).fit(X)
    back = skad.load(skad.save(det, tmp_path / "lof.skad"))
    np.testing.assert_array_equal(back.score_samples(X), det.score_samples(X))
    assert back.random_state.randint(1 << 30) == det.random_state.randint(1 << 30)


def test_unfitted_and_nested_params(tmp_path):
    pipe = make_model("padim", PatchFeatureExtractor(device="cpu"),
                      params={"n_features": 7, "calibration": 0.25})
    back = skad.load(skad.save(pipe, tmp_path / "p.skad"))
    assert back.get_params()["padim__n_features"] == 7
    assert back.get_params()["padim__calibration"] == 0.25


@pytest.mark.parametrize("content, message", [
    (b"", r"the file is empty \(0 bytes\), not a skad model"),
    (b"hello, not a model", "not a skad model file"),
    (b"\x80\x04\x95 a pickle", "looks like a pickle"),
])
def test_foreign_files_are_refused(content, message, tmp_path):
    path = tmp_path / "m.skad"
    path.write_bytes(content)
    with pytest.raises(persist.ModelFileError, match=message):
        skad.load(path)


def test_joblib_file_and_other_zips_are_refused(tmp_path):
    det = PaDiM(device="cpu").fit(np.random.default_rng(0).normal(size=(10, 2)))
    joblib.dump(det, tmp_path / "m.joblib")
    with pytest.raises(ValueError, match="not a skad model file.*pickle"):
        skad.load(tmp_path / "m.joblib")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="not a skad model file"):
        skad.load(tmp_path / "other.zip")
    with pytest.raises(ValueError, match="does not exist"):
        skad.load(tmp_path / "missing.skad")


def test_truncated_file_is_refused(tmp_path):
    det = PaDiM(device="cpu").fit(np.random.default_rng(0).normal(size=(10, 2)))
    data = skad.save(det, tmp_path / "m.skad").read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        (tmp_path / "cut.skad").write_bytes(data[:cut])
        with pytest.raises(persist.ModelFileError, match="not a skad model|damaged"):
            skad.load(tmp_path / "cut.skad")


def _rewrite_header(path, edit, recompute_digest=True):
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(files["skad_model.json"])
    edit(header)
    if recompute_digest:  # as a deliberate editor would
        header["root_sha256"] = persist._tree_digest(header["root"])
    files["skad_model.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)


def test_version_mismatch_is_refused_unless_allowed(tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 2))
    det = PaDiM(device="cpu").fit(X)
    path = skad.save(det, tmp_path / "m.skad")
    _rewrite_header(path, lambda h: h["versions"].update({"scikit-learn": "0.24.2",
                                                          "torch": "1.0.0+cu101"}))
    with pytest.raises(ValueError, match=r"written by scikit-learn 0\.24\.2 \(installed: .*"
                                         r"torch 1\.0\.0\+cu101"):
        skad.load(path)
    with pytest.warns(UserWarning, match="scikit-learn 0.24.2"):
        back = skad.load(path, allow_version_mismatch=True)
    np.testing.assert_array_equal(back.score_samples(X), det.score_samples(X))
    # a local build tag (a CUDA build's file on a CPU build) is no mismatch
    path = skad.save(det, tmp_path / "m2.skad")
    _rewrite_header(path, lambda h: h["versions"].update(
        torch=h["versions"]["torch"].split("+")[0] + "+cu999"))
    skad.load(path)


def test_a_hostile_file_runs_no_code(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("os.system", lambda *a: calls.append(a))
    det = PaDiM(device="cpu").fit(np.random.default_rng(0).normal(size=(10, 2)))
    path = skad.save(det, tmp_path / "m.skad")
    for evil in ({"$": "obj", "cls": "os:system", "state": "echo hacked"},
                 {"$": "type", "name": "subprocess:Popen"},
                 {"$": "obj", "cls": "numpy:memmap", "via": "os:system"},
                 {"$": "obj", "cls": "builtins:eval"}):
        _rewrite_header(path, lambda h: h.update(root=evil))
        with pytest.raises(persist.ModelFileError, match="not skad, scikit-learn|may not"):
            skad.load(path)
    assert calls == []
    # nor can a trusted module's constructor be given arguments (np.memmap(filename))
    _rewrite_header(path, lambda h: h.update(
        root={"$": "obj", "cls": "numpy:memmap", "args": ["/tmp/x", "w+"]}))
    with pytest.raises(persist.ModelFileError):
        skad.load(path)


def _my_metric(a, b):
    return float(np.abs(a - b).sum())


class Local:  # a class of this test module: stored by name, loaded only when trusted
    def __init__(self):
        self.w = np.arange(3.0)


def test_save_refuses_functions_and_leaves_no_partial_file(tmp_path):
    det = PatchOutlierDetector(LocalOutlierFactor(metric=_my_metric, novelty=True))
    with pytest.raises(TypeError, match=r"cannot store .*metric.*joblib\.dump"):
        skad.save(det, tmp_path / "m.skad")
    assert list(tmp_path.iterdir()) == []
    path = skad.save({"x": Local()}, tmp_path / "local.skad")
    with pytest.raises(ValueError, match=r"trusted=\["):
        skad.load(path)
    back = skad.load(path, trusted=[Local.__module__])
    np.testing.assert_array_equal(back["x"].w, np.arange(3.0))


# --------------------------------------------------------------------------- trained models
def _trained(name):
    from skad.alignment import ImageAligner
    from skad.detectors import SMCC, LocalOCC, MemSeg

    ext = PatchFeatureExtractor(input_size=32, device="cpu")
    return {
        "smcc": lambda: SMCC(ext, epochs=1, batch_size=4, random_state=0, device="cpu"),
        "memseg": lambda: MemSeg(ext, n_memory=1, max_iter=2, batch_size=2, top_k=4,
                                 random_state=0, device="cpu"),
        "local_occ": lambda: LocalOCC(extractor=ext, epochs=1, batch_size=4, random_state=0,
                                      device="cpu"),
        "aligner": lambda: ImageAligner(input_size=16, epochs=2, batch_size=4, random_state=0,
                                        device="cpu"),
    }[name]()


def _outputs(model, X):
    if hasattr(model, "score_and_map"):
        return model.score_and_map(X)
    return model.transform(X), model.estimate_transforms(X)


def _mark_fitted_on_gpu(obj, seen=None):
    """Record ``cuda:0`` as the fit device of ``obj`` and every fitted object inside it,
    as a model fitted on a GPU would carry."""
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return
    seen.add(id(obj))
    if isinstance(getattr(obj, "device_", None), (torch.device, str)):
        obj.device_ = torch.device("cuda:0")
    for v in vars(obj).values():
        if hasattr(v, "get_params"):
            _mark_fitted_on_gpu(v, seen)


@pytest.mark.parametrize("name", ["smcc", "memseg", "local_occ", "aligner"])
def test_trained_models_round_trip_and_reload_on_a_cpu_only_machine(name, images, tmp_path,
                                                                    monkeypatch):
    import torch

    model = _trained(name).fit(images)
    expected = _outputs(model, images)
    back = skad.load(skad.save(model, tmp_path / f"{name}.skad"))
    assert type(back) is type(model) and repr(back) == repr(model)
    for a, b in zip(_outputs(back, images), expected):
        np.testing.assert_array_equal(a, b)

    # a model fitted on a GPU (its recorded devices say cuda:0), reloaded where there is
    # none: skad.load and joblib both map it to the CPU, with the same outputs
    _mark_fitted_on_gpu(model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for how in ("skad", "joblib"):
        if how == "skad":
            path = skad.save(model, tmp_path / f"{name}-gpu.skad")
            with pytest.warns(UserWarning, match="CUDA is not available"):
                back = skad.load(path)
        else:
            joblib.dump(model, tmp_path / f"{name}-gpu.joblib")
            with pytest.warns(UserWarning, match="CUDA is not available"):
                back = joblib.load(tmp_path / f"{name}-gpu.joblib")
        assert back.device_ == torch.device("cpu")
        for a, b in zip(_outputs(back, images), expected):
            np.testing.assert_array_equal(a, b)


def test_edited_or_damaged_contents_are_refused(tmp_path):
    # regression (hypothesis suite): a rewritten archive whose header still parsed but
    # had lost a fitted attribute loaded, and score_samples then raised AttributeError
    X = np.random.default_rng(0).normal(size=(10, 2))
    path = skad.save(PaDiM(device="cpu").fit(X), tmp_path / "m.skad")

    def drop_cholesky(h):
        h["root"]["state"]["v"] = [kv for kv in h["root"]["state"]["v"]
                                   if kv[0] != "cholesky_"]

    _rewrite_header(path, drop_cholesky, recompute_digest=False)
    with pytest.raises(persist.ModelFileError, match="object tree does not match"):
        skad.load(path)
    # an array replaced by another valid .npy
    path = skad.save(PaDiM(device="cpu").fit(X), tmp_path / "m2.skad")
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(3), allow_pickle=False)
    files["a1.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)
    with pytest.raises(persist.ModelFileError, match="array 'a1' does not match"):
        skad.load(path)
