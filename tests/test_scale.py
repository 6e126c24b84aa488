"""Large data: running moments, chunked / streamed coresets, fit and score from paths."""

import pickle

import numpy as np
import pytest
from PIL import Image

import skad.detectors  # noqa: F401
from skad import make_pipeline
from skad._kernels import patch_rows
from skad._kernels.coreset import greedy_coreset
from skad._kernels.gaussian import fit_gaussians, gaussians_from_moments, update_moments
from skad.detectors import PaDiM, PatchCore, SPADE
from skad.features import PatchFeatureExtractor
from skad.scale import fit_streaming, score_streaming


@pytest.mark.parametrize("splits", [[50], [1, 49], [7, 13, 30], [25, 25]])
def test_running_moments_equal_the_one_shot_gaussians(splits):
    X = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 5, 4)).astype(np.float32)
    m, start = None, 0
    for size in splits:
        m = update_moments(m, X[start:start + size])
        start += size
    for shrinkage in (0.0, 0.3):
        mu, cov = gaussians_from_moments(m, shrinkage=shrinkage, eps=0.01)
        mu_ref, cov_ref = fit_gaussians(X, shrinkage=shrinkage, eps=0.01)
        np.testing.assert_allclose(mu, mu_ref, atol=1e-5)
        np.testing.assert_allclose(cov, cov_ref, atol=1e-4)


def test_running_moments_errors():
    m = update_moments(None, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussians_from_moments(m)
    with pytest.raises(ValueError, match="positions x features"):
        update_moments(m, np.zeros((2, 4, 2)))


def _patches(n=24, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 5, 5)).astype(np.float32)


def test_padim_partial_fit_gives_the_fit_gaussians():
    X = _patches()
    a = PaDiM(n_features=6, random_state=0).fit(X)
    b = PaDiM(n_features=6, random_state=0)
    for part in np.array_split(np.arange(len(X)), 3):
        b.partial_fit(X[part])
    np.testing.assert_array_equal(a.channels_, b.channels_)
    np.testing.assert_allclose(a.means_, b.means_, atol=1e-5)
    np.testing.assert_allclose(a.score_samples(X), b.score_samples(X), rtol=1e-4)
    assert b.n_images_seen_ == len(X) and b.calibration_ == "streamed"
    assert len(b.calibration_scores_) == len(X) and np.isfinite(b.offset_)
    b.fit(X)  # fit starts over
    assert not hasattr(b, "n_images_seen_")


def test_partial_fit_errors():
    det = PaDiM(random_state=0).partial_fit(_patches(4))
    with pytest.raises(ValueError, match="features"):
        det.partial_fit(np.zeros((4, 7, 5, 5), np.float32))
    with pytest.raises(ValueError, match="at least 2 samples"):
        PatchCore().partial_fit(_patches(1))
    assert not hasattr(SPADE(), "partial_fit")


def test_patchcore_one_chunk_is_the_exact_greedy():
    X = _patches()
    det = PatchCore(coreset_ratio=0.2, random_state=0).fit(X)
    ref = greedy_coreset(patch_rows(X), int(0.2 * len(patch_rows(X))),
                         random_state=np.random.RandomState(0))
    np.testing.assert_array_equal(det.coreset_indices_, ref)


def _covering_radius(rows, bank):
    d2 = (rows**2).sum(1)[:, None] - 2 * rows @ bank.T + (bank**2).sum(1)[None]
    return float(np.sqrt(max(0.0, d2.min(1).max())))


def test_patchcore_chunked_coreset_keeps_each_chunks_share_and_covers():
    X = _patches(40)
    rows = patch_rows(X)
    exact = PatchCore(coreset_ratio=0.1, random_state=0).fit(X)
    chunked = PatchCore(coreset_ratio=0.1, random_state=0, coreset_chunk_size=260).fit(X)
    # 1000 rows in chunks of <= 260 rows -> 4 chunks of 10 images, 25 picks each
    assert len(chunked.memory_bank_) == 100
    counts = np.bincount(chunked.bank_image_ids_, minlength=40)
    assert counts.sum() == 100 and len(np.unique(chunked.coreset_indices_)) == 100
    np.testing.assert_array_equal(chunked.memory_bank_, rows[chunked.coreset_indices_])
    r_exact = _covering_radius(rows, exact.memory_bank_)
    r_chunked = _covering_radius(rows, chunked.memory_bank_)
    assert r_exact <= r_chunked <= 1.5 * r_exact


def test_patchcore_partial_fit_appends_chunk_coresets():
    X = _patches(30)
    det = PatchCore(coreset_ratio=0.2, random_state=0)
    for part in np.array_split(np.arange(30), 3):
        det.partial_fit(X[part])
    assert det.n_images_seen_ == 30
    assert len(det.memory_bank_) == 3 * int(0.2 * 10 * 25)
    np.testing.assert_array_equal(det.memory_bank_, patch_rows(X)[det.coreset_indices_])
    np.testing.assert_array_equal(det.bank_image_ids_, det.coreset_indices_ // 25)
    s = det.score_samples(X[:4])
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_allclose(again.score_samples(X[:4]), s)
    assert det.predict(X[:4]).shape == (4,)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(14):
        img = rng.integers(100, 130, (32, 32, 3), dtype=np.uint8)
        if i == 13:
            img[8:20, 8:20] = 250  # a defect
        Image.fromarray(img).save(folder / f"{i:02d}.png")
        paths.append(str(folder / f"{i:02d}.png"))
    return paths


def _pipe(det):
    return make_pipeline(PatchFeatureExtractor(input_size=32, device="cpu", n_threads=1),
                         det)


def test_fit_streaming_matches_the_in_memory_fit_for_padim(image_paths):
    train = image_paths[:12]
    ref = _pipe(PaDiM(n_features=16, random_state=0)).fit(train)
    pipe = fit_streaming(_pipe(PaDiM(n_features=16, random_state=0)), train,
                         chunk_size=5, calibration=None)
    assert pipe[-1].n_images_seen_ == 12
    np.testing.assert_allclose(score_streaming(pipe, image_paths[12:], chunk_size=2),
                               ref.anomaly_score(image_paths[12:]), rtol=1e-3)


def test_fit_streaming_holds_out_calibration_images(image_paths):
    pipe = fit_streaming(_pipe(PatchCore(random_state=0)), image_paths[:12],
                         chunk_size=4, calibration=0.25, random_state=0)
    det = pipe[-1]
    assert det.n_images_seen_ == 9 and det.calibration_ == "held_out"
    assert len(det.calibration_scores_) == 3
    assert det.offset_ == pytest.approx(det.calibration_scores_.min())
    scores, maps = score_streaming(pipe, image_paths[12:], chunk_size=2, maps=True,
                                   output_size=32)
    assert maps.shape == (2, 32, 32) and scores[1] > scores[0]


def test_streaming_errors(image_paths):
    with pytest.raises(TypeError, match="paths"):
        fit_streaming(_pipe(PaDiM()), "folder")
    with pytest.raises(TypeError, match="partial_fit"):
        fit_streaming(_pipe(SPADE()), image_paths)
    with pytest.raises(ValueError, match="chunk_size"):
        fit_streaming(_pipe(PaDiM()), image_paths, chunk_size=1)
    with pytest.raises(ValueError, match="calibration"):
        fit_streaming(_pipe(PaDiM()), image_paths, calibration=1.5)
    with pytest.raises(TypeError, match="AnomalyPipeline"):
        fit_streaming(PaDiM(), image_paths)
