"""ImageAligner (Lv et al.'s image matching module): small synthetic images, short fits."""

import pickle

import numpy as np
import pytest
import torch

from skad import make_pipeline
from skad.alignment import ImageAligner, affine_matrices, warp
from skad.datasets import rotate_crop
from skad.detectors import PatchCore
from skad.features import PatchFeatureExtractor


def _base(size=48):
    """An asymmetric pattern: colour ramps and two blocks."""
    yy, xx = np.mgrid[:size, :size] / size
    img = np.zeros((size, size, 3), np.float32)
    img[..., 0] = 0.5 * xx
    img[..., 1] = 0.5 * yy
    img[10:22, 14:30] = [1, 1, 0]
    img[28:40, 8:16] = [0, 0, 1]
    return (img * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shifted():
    """24 copies of the pattern, each rotated (<= 15 deg) and cropped at a random place."""
    base = np.repeat(_base()[None], 24, 0)
    mask = np.zeros((24, 48, 48), np.uint8)
    mask[:, 10:22, 14:30] = 1  # the yellow block
    images, masks = rotate_crop(base, mask, max_angle=15, crop=40, random_state=0)
    return images, masks


@pytest.fixture(scope="module")
def fitted(shifted):
    return ImageAligner(input_size=32, epochs=40, batch_size=8, random_state=0,
                        device="cpu").fit(shifted[0])


def _mse(a, b):
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_alignment_reduces_error_to_template(shifted, fitted):
    X = shifted[0]
    template = X[fitted.template_index_]
    before = _mse(X, template)
    after = _mse(fitted.transform(X), template)
    assert fitted.loss_history_[-1] < fitted.loss_history_[0]
    assert after < 0.5 * before


def test_recovers_a_known_shift():
    """Images made from the template by known motions: the estimated shift undoes it."""
    base = torch.from_numpy(_base().astype(np.float32) / 255).permute(2, 0, 1)[None]
    rng = np.random.RandomState(1)
    params = np.column_stack([rng.uniform(-5, 5, 24), rng.uniform(-5, 5, 24),
                              np.radians(rng.uniform(-10, 10, 24))])
    params[0] = 0
    theta = affine_matrices(torch.from_numpy(params).float(), (48, 48))
    X = warp(base.expand(24, -1, -1, -1), theta).permute(0, 2, 3, 1).numpy()
    al = ImageAligner(template=0, input_size=32, epochs=40, batch_size=8, random_state=0,
                      device="cpu").fit(X)
    est = al.estimate_transforms(X)
    # aligning image i means sampling it at -(its shift): the estimate is minus the truth
    err_before = np.abs(params[:, :2]).mean()
    err_after = np.abs(params[:, :2] + est[:, :2]).mean()
    assert err_after < 0.3 * err_before
    assert al.template_index_ == 0
    np.testing.assert_allclose(est[0], 0, atol=1.0)  # the template itself barely moves


def test_masks_follow_their_images(shifted, fitted):
    X, masks = shifted
    aligned = fitted.transform(X)
    aligned_masks = fitted.transform_masks(X, masks)
    assert aligned_masks.shape == masks.shape and aligned_masks.dtype == masks.dtype
    assert set(np.unique(aligned_masks)) <= {0, 1}
    # the yellow block (red and green high, blue low) is where the warped mask says
    yellow = (aligned[..., 0] > 190) & (aligned[..., 1] > 190) & (aligned[..., 2] < 100)
    inter = (yellow & (aligned_masks == 1)).sum()
    union = (yellow | (aligned_masks == 1)).sum()
    assert inter / union > 0.8


def test_inverse_transform_maps_undoes_the_warp(shifted, fitted):
    X = shifted[0][:6]
    gray = X.astype(np.float32).mean(axis=3) / 255
    aligned = fitted.transform(X.astype(np.float32) / 255).mean(axis=3)
    back = fitted.inverse_transform_maps(X, aligned)
    assert back.shape == gray.shape and back.dtype == np.float32
    inner = (slice(None), slice(8, 32), slice(8, 32))
    assert np.abs(back[inner] - gray[inner]).mean() < 0.05


def test_shape_and_dtype_preserved(shifted, fitted):
    X = shifted[0][:3]
    out = fitted.transform(X)
    assert out.shape == X.shape and out.dtype == np.uint8
    Xf = X.astype(np.float32) / 255
    outf = fitted.transform(Xf)
    assert outf.dtype == np.float32 and 0 <= outf.min() and outf.max() <= 1
    np.testing.assert_allclose(outf, out / 255, atol=1 / 255 + 1e-6)
    gray = X[..., 0]
    assert fitted.transform(gray).shape == gray.shape
    # a different resolution: the same rigid motion, full-size output
    big = np.repeat(np.repeat(X, 2, axis=1), 2, axis=2)
    assert fitted.transform(big).shape == big.shape
    est_small, est_big = fitted.estimate_transforms(X), fitted.estimate_transforms(big)
    np.testing.assert_allclose(est_big[:, :2], 2 * est_small[:, :2], atol=0.5)


def test_in_a_pipeline(shifted):
    X = shifted[0][:12]
    pipe = make_pipeline(
        ImageAligner(input_size=32, epochs=1, batch_size=6, random_state=0, device="cpu"),
        PatchFeatureExtractor(input_size=32, device="cpu"), PatchCore())
    pipe.fit(X)
    maps = pipe.anomaly_map(X[:2])
    assert maps.shape == (2, 40, 40)
    assert pipe.score_samples(X[:2]).shape == (2,)


def test_pickle_round_trip(shifted, fitted):
    X = shifted[0][:5]
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.transform(X), fitted.transform(X))
    np.testing.assert_array_equal(clone.template_, fitted.template_)


def test_reproducible(shifted):
    X = shifted[0][:10]
    a = ImageAligner(input_size=32, epochs=2, batch_size=5, random_state=3, device="cpu").fit(X)
    b = ImageAligner(input_size=32, epochs=2, batch_size=5, random_state=3, device="cpu").fit(X)
    assert a.template_index_ == b.template_index_
    assert a.loss_history_ == b.loss_history_
    np.testing.assert_array_equal(a.estimate_transforms(X), b.estimate_transforms(X))


def test_identity_at_initialisation(shifted):
    X = shifted[0][:4]
    al = ImageAligner(input_size=32, max_iter=1, lr=1e-12, random_state=0, device="cpu").fit(X)
    np.testing.assert_allclose(al.estimate_transforms(X), 0, atol=1e-4)
    assert np.abs(al.transform(X).astype(int) - X).max() <= 1


@pytest.mark.parametrize("params, match", [
    ({"input_size": 4}, "input_size"),
    ({"input_size": (32, "a")}, "input_size"),
    ({"template": 99}, "template"),
    ({"max_shift": 2.0}, "max_shift"),
    ({"max_rotation": 0}, "max_rotation"),
    ({"padding_mode": "wrap"}, "padding_mode"),
    ({"epochs": 0}, "epochs"),
])
def test_parameter_errors(shifted, params, match):
    with pytest.raises(ValueError, match=match):
        ImageAligner(**{"epochs": 1, **params}).fit(shifted[0][:4])


def test_input_errors(shifted, fitted):
    X, masks = shifted
    with pytest.raises(ValueError, match="masks"):
        fitted.transform_masks(X[:3], masks[:2])
    with pytest.raises(ValueError, match="maps"):
        fitted.inverse_transform_maps(X[:2], np.full((2, 40, 40), np.nan))
    with pytest.raises(ValueError, match="X"):
        fitted.transform(np.full((2, 40, 40, 3), np.nan, np.float32))
