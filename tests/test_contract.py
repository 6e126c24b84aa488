"""The detector contract written once in skad/detectors/_base.py: the clip-or-raise rule
for size parameters, the blind-mode switch and its contamination="auto", pickles of
renamed attributes, and the layout rules (private scikit-learn API in one module)."""

import pathlib
import pickle
import re
import warnings

import numpy as np
import pytest

import skad
from skad.detectors import (
    SPADE,
    BlindModeMixin,
    ClippedParameterWarning,
    NPad,
    PaDiM,
    PatchCluster,
    PatchCore,
    blind_offset,
    clip_to_data,
)


def _maps(n=12, c=5, h=3, w=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.3, size=(n, c, h, w)).astype(np.float32)


# -- clip-or-raise -----------------------------------------------------------------------
def test_clip_to_data_rule():
    det = PaDiM()
    with pytest.warns(ClippedParameterWarning, match=r"n_features=9 exceeds the 4 channels"):
        assert clip_to_data(det, "n_features", 9, 4, "channels") == 4
    assert det.n_features_ == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing is clipped
        assert clip_to_data(det, "n_features", 3, 4, "channels") == 3
        assert clip_to_data(det, "n_features", None, 4, "channels") == 4
    with pytest.raises(ValueError, match="n_features needs at least 1 of the channels"):
        clip_to_data(det, "n_features", 3, 0, "channels")


def test_too_large_sizes_are_clipped_with_the_value_used_recorded():
    X = _maps()
    with pytest.warns(ClippedParameterWarning, match="n_features=50 exceeds the 5 channels"):
        big = PaDiM(n_features=50, random_state=0, device="cpu").fit(X)
    full = PaDiM(n_features=None, random_state=0, device="cpu").fit(X)
    assert big.n_features_ == full.n_features_ == 5
    np.testing.assert_array_equal(big.anomaly_map(X), full.anomaly_map(X))

    with pytest.warns(ClippedParameterWarning, match="n_channels=50 exceeds the 5 channels"):
        npad = NPad(n_channels=50, max_shift=0, random_state=0, device="cpu").fit(X)
    assert npad.n_channels_ == 5 and npad.top_k_ == 9  # top_k=10 > 3 x 3 positions

    with pytest.warns(ClippedParameterWarning, match="n_neighbors=50 exceeds the 11 other"):
        spade = SPADE(device="cpu").fit(X)
    assert spade.n_neighbors_ == 11 and spade.n_pixel_neighbors_ == 1

    with pytest.warns(ClippedParameterWarning, match="n_neighbors=500 exceeds the 108 bank"):
        core = PatchCore(coreset_ratio=1.0, n_neighbors=500, device="cpu").fit(X)
    assert core.n_neighbors_ == 108


def test_the_cross_fitted_models_do_not_repeat_the_warning():
    with pytest.warns(ClippedParameterWarning) as record:
        PaDiM(n_features=50, calibration="cv", random_state=0, device="cpu").fit(_maps())
    assert len(record) == 1  # fit's own, not one per fold


@pytest.mark.parametrize("det, match", [
    (PatchCore(n_neighbors=0), "n_neighbors"),
    (SPADE(n_pixel_neighbors=0), "n_pixel_neighbors"),
    (SPADE(n_probe=0), "n_probe"),
    (SPADE(n_probe=2.5), "n_probe"),
    (PaDiM(eps=0.0), "eps"),
    (NPad(eps=0.0), "eps"),
    (PatchCluster(n_reweight_neighbors=0), "n_reweight_neighbors"),
])
def test_values_no_data_allows_raise(det, match):
    with pytest.raises(ValueError, match=match):
        det.fit(_maps())


@pytest.mark.parametrize("shape", [(2, 4), (3, 4), (10, 4), (2, 4, 3, 3), (10, 1)])
def test_patchcore_on_tiny_training_sets(shape):
    # a 10 % coreset of so few patches used to keep one bank row; the leave-one-image-out
    # training scores then found no eligible row ("k=1 exceeds ... as few as 0 of 1")
    X = np.random.default_rng(0).normal(size=shape)
    with pytest.warns(ClippedParameterWarning, match="one image's"):
        det = PatchCore(random_state=0, device="cpu").fit(X)
    hw = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert len(det.memory_bank_) == hw + 1
    assert len(np.unique(det.bank_image_ids_)) >= 2
    assert np.isfinite(det.offset_) and np.isfinite(det.score_samples(X)).all()
    assert set(det.predict(X)) <= {-1, 1}
    with pytest.raises(ValueError, match="at least 2 training images"):
        PatchCore(device="cpu").fit(X[:1])


def test_patchcore_bank_floor_leaves_larger_coresets_alone():
    X = _maps(n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClippedParameterWarning)
        det = PatchCore(coreset_ratio=0.5, random_state=0, device="cpu").fit(X)
    assert len(det.memory_bank_) == 90 and det.n_neighbors_ == 9


# -- blind mode ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [PatchCore, SPADE])
def test_exclude_self_is_deprecated_for_exclude(cls):
    X = _maps()
    kw = {"device": "cpu", "n_neighbors": 3}
    if cls is PatchCore:
        kw["random_state"] = 0
    new = cls(exclude="self", **kw).fit(X)
    with pytest.warns(FutureWarning, match="`exclude_self` was renamed `exclude`"):
        old = cls(exclude_self=True, **kw).fit(X)
    assert old.exclude_ == new.exclude_ == "self" and old.blind_ and new.blind_
    np.testing.assert_array_equal(old.score_samples(X), new.score_samples(X))
    assert old.offset_ == new.offset_
    with pytest.warns(FutureWarning):
        assert cls(exclude_self=False, **kw).fit(X).exclude_ is None
    with pytest.raises(ValueError, match="give only `exclude`"), pytest.warns(FutureWarning):
        cls(exclude="self", exclude_self=True, **kw).fit(X)
    assert isinstance(new, BlindModeMixin)
    assert cls().get_params()["exclude_self"] == "deprecated"


def test_contamination_auto_one_meaning():
    X = _maps(n=20)
    X[3, :, 1, 1] += 8.0
    one_class = PatchCore(coreset_ratio=1.0, device="cpu").fit(X)
    assert not one_class.blind_
    assert one_class.offset_ == one_class.calibration_scores_.min()
    for det in (PatchCore(coreset_ratio=1.0, exclude="self", device="cpu"),
                SPADE(n_neighbors=3, exclude="self", device="cpu"),
                PatchCluster(n_neighbors=3, device="cpu")):
        det.fit(X)
        assert det.blind_
        assert det.offset_ == blind_offset(det.calibration_scores_)
        # in blind mode the calibration scores are the fitted set's blind scores
        np.testing.assert_allclose(det.calibration_scores_, det.score_samples(X), rtol=1e-6)
        assert det.predict(X)[3] == -1 and (det.predict(X) == 1).sum() >= 15


def test_blind_offset_is_median_plus_three_scaled_mads():
    a = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # anomaly scores
    med, mad = 3.0, 1.4826 * 1.0
    assert blind_offset(-a) == pytest.approx(-(med + 3 * mad))


# -- pickles written before the renames ------------------------------------------------------
def _old_state(det, renames, drop):
    state = dict(det.__getstate__())  # a copy: __getstate__ may return __dict__ itself
    for new, old in renames.items():
        state[old] = state.pop(new)
    for k in drop:
        state.pop(k, None)
    return state


@pytest.mark.parametrize("exclude", ["self", "image", None])
def test_patchcluster_pickles_with_the_old_attribute_names_load(exclude):
    X = _maps()
    det = PatchCluster(n_neighbors=3, exclude=exclude, device="cpu").fit(X)
    state = _old_state(det, {"n_reweight_neighbors_": "_n_reweight",
                             "train_anomaly_": "_train_anomaly"},
                       ["bank_image_ids_", "exclude_", "blind_"])
    state["_bank_groups"] = {"self": det.coreset_indices_, "image": det.bank_image_ids_,
                             None: None}[exclude]
    old = PatchCluster.__new__(PatchCluster)
    old.__setstate__(state)
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.n_reweight_neighbors_ == det.n_reweight_neighbors_
    np.testing.assert_array_equal(loaded.bank_image_ids_, det.bank_image_ids_)
    for Xs in (X, _maps(n=3, seed=5)):  # recognised training samples, new samples
        np.testing.assert_array_equal(loaded.score_samples(Xs), det.score_samples(Xs))
        np.testing.assert_array_equal(loaded.anomaly_map(Xs), det.anomaly_map(Xs))


@pytest.mark.parametrize("cls", [PatchCore, SPADE])
def test_pickles_from_before_exclude_load(cls):
    X = _maps()
    with pytest.warns(FutureWarning):
        det = cls(exclude_self=True, n_neighbors=3, device="cpu").fit(X)  # fit once
    state = dict(det.__getstate__())
    for k in ("exclude", "exclude_", "blind_", "n_neighbors_", "n_pixel_neighbors_"):
        if cls is SPADE and k == "n_neighbors_":
            continue  # SPADE had n_neighbors_ already
        state.pop(k, None)
    state["exclude_self"] = True
    old = cls.__new__(cls)
    old.__setstate__(state)
    assert old.exclude_ == "self" and old.get_params()["exclude"] is None
    np.testing.assert_array_equal(old.score_samples(X), det.score_samples(X))


# -- layout ----------------------------------------------------------------------------------
def test_private_sklearn_api_only_in_the_compat_module():
    root = pathlib.Path(skad.__file__).parent
    private = re.compile(r"^\s*(from|import)\s+sklearn(\.\w+)*\._\w+|"
                         r"^\s*from\s+sklearn[\w.]*\s+import\s+.*\b_[a-z]\w*", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "_sklearn_compat.py" and private.search(p.read_text())]
    assert offenders == []


# -- parameter validation through scikit-learn's _fit_context ---------------------------
def test_no_direct_validate_params_calls():
    root = pathlib.Path(skad.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"\._validate_params\(", p.read_text())]
    assert offenders == []


def test_fit_validation_honours_skip_parameter_validation():
    # the parameters are checked by the decorator, so scikit-learn's switch turns it off
    from sklearn import config_context

    from skad.features import GlobalPool
    from skad.utils._sklearn_compat import InvalidParameterError

    X = _maps(n=4)
    with pytest.raises(InvalidParameterError, match="method"):
        GlobalPool(method="median").fit(X)
    with config_context(skip_parameter_validation=True):
        assert GlobalPool(method="median").fit(X).n_features_in_ == 5


def test_nested_estimators_are_validated_inside_a_detector_fit():
    # detectors fit with prefer_skip_nested_validation=False: LOF's own parameters are
    # still checked by LOF when the detector fits its clone
    from sklearn.neighbors import LocalOutlierFactor

    from skad.detectors import PatchOutlierDetector
    from skad.utils._sklearn_compat import InvalidParameterError

    det = PatchOutlierDetector(estimator=LocalOutlierFactor(n_neighbors=0, novelty=True))
    with pytest.raises(InvalidParameterError, match="n_neighbors"):
        det.fit(_maps())


@pytest.mark.parametrize("cls", [PaDiM, PatchCore])
def test_partial_fit_validates_on_the_first_chunk(cls):
    from skad.utils._sklearn_compat import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="contamination"):
        cls(contamination=0.9).partial_fit(_maps())


def test_fit_warnings_name_the_callers_line():
    # fit runs inside scikit-learn's _fit_context wrapper; a clip warning raised several
    # helpers deep still points at the line that called fit (skad.utils._warnings)
    for det in (PaDiM(n_features=9), PatchCore(n_neighbors=99), NPad(top_k=50)):
        with pytest.warns(ClippedParameterWarning) as record:
            det.fit(_maps(c=4))
        assert {w.filename for w in record} == {__file__}, type(det).__name__
