"""Shared input validation: images, patch tensors, labels and masks."""

import numpy as np
import pytest
from PIL import Image

from skad.utils.validation import (
    check_images,
    check_patches,
    labels_from_y,
    load_image,
    masks_from_y,
)


def _write(tmp_path, name, arr):
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return str(p)


def test_check_images_array_forms():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 10, 12, 3), dtype=np.uint8)
    imgs = check_images(u8)
    assert len(imgs) == 3 and imgs.image_size == (10, 12) and not imgs.is_lazy
    batch = imgs.batch(slice(0, 2))
    assert batch.dtype == np.float32 and batch.shape == (2, 10, 12, 3)
    np.testing.assert_allclose(batch, u8[:2] / 255.0, rtol=1e-6)
    gray = check_images(u8[..., 0])
    assert gray.batch(slice(None)).shape == (3, 10, 12, 3)
    one = check_images(u8[..., :1])
    np.testing.assert_array_equal(one.batch([0])[..., 0], one.batch([0])[..., 2])
    floats = check_images(u8.astype(np.float32) / 255)
    np.testing.assert_allclose(floats.batch(slice(None)), u8 / 255.0, rtol=1e-6)
    listed = check_images([u8[0], u8[1]])
    assert len(listed) == 2


def test_check_images_paths_lazy(tmp_path):
    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8) for _ in range(3)]
    paths = [_write(tmp_path, f"{i}.png", a) for i, a in enumerate(arrs)]
    imgs = check_images(paths)
    assert imgs.is_lazy and imgs.image_size == (8, 9)
    batches = list(imgs.iter_batches(2))
    assert [sl for sl, _ in batches] == [slice(0, 2), slice(2, 3)]
    np.testing.assert_allclose(batches[1][1][0], arrs[2] / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    "X, exc, match",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "empty"),
        (np.zeros((2, 8, 8, 5), np.uint8), ValueError, "5 channels"),
        (np.zeros((2, 3, 8, 8), np.uint8), ValueError, "channels-first"),
        (np.zeros((8, 8)), ValueError, "shape"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((2, 8, 8, 3), 2.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((2, 8, 8, 3), 300, np.int32), ValueError, r"\[0, 255\]"),
        (np.array(["a", "b"], dtype=object).reshape(1, 2), TypeError, "dtype"),
        ("image.png", TypeError, "single path"),
    ],
)
def test_check_images_errors(X, exc, match):
    with pytest.raises(exc, match=match):
        check_images(X)


def test_check_images_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="not found.*nope.png"):
        check_images([str(tmp_path / "nope.png")])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image at all")
    imgs = check_images([str(bad)])
    with pytest.raises(ValueError, match="corrupt.png"):
        imgs.batch([0])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_lazy_batches_of_mixed_sizes_error(tmp_path):
    a = _write(tmp_path, "a.png", np.zeros((8, 8, 3), np.uint8))
    b = _write(tmp_path, "b.png", np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        check_images([a, b]).batch(slice(0, 2))


def test_check_patches():
    out = check_patches(np.ones((4, 3), dtype=np.float64))
    assert out.shape == (4, 3, 1, 1) and out.dtype == np.float32
    with pytest.raises(ValueError, match="got images of shape"):
        check_patches(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="got images of shape"):
        check_patches(np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="image file paths"):
        check_patches(["a.png", "b.png"])
    with pytest.raises(ValueError, match="NaN or infinity"):
        check_patches(np.full((2, 4, 2, 2), np.inf))
    with pytest.raises(ValueError, match="empty"):
        check_patches(np.zeros((0, 4, 2, 2)))
    with pytest.raises(ValueError, match="spatial"):
        check_patches(np.zeros((3, 4)), allow_2d=False)
    with pytest.raises(ValueError, match=r"\(n, C, h, w\)"):
        check_patches(np.zeros((2, 3, 4, 5, 6)))
    # regression (hypothesis suite): zero-size patch maps reached the detectors and
    # ended in a ZeroDivisionError
    with pytest.raises(ValueError, match=r"X: patch maps of spatial size \(0, 0\)"):
        check_patches(np.zeros((2, 1, 0, 0), np.uint16))


def test_patch_detectors_name_X_in_scikit_learn_errors():
    # regression (hypothesis suite): scikit-learn's own messages for 0-d / empty 2-D
    # input did not say which input was wrong
    from skad.detectors import NPad, PaDiM

    with pytest.raises(ValueError, match=r"^X: Expected 2D array, got scalar"):
        PaDiM(device="cpu").fit(np.array(0.0))
    det = NPad(device="cpu", random_state=0).fit(np.random.default_rng(0).normal(size=(8, 3)))
    with pytest.raises(ValueError, match=r"^X: Found array with 0 sample"):
        det.score_samples(np.zeros((0, 0)))


def test_labels_and_masks():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[1, 2, 2] = 255
    np.testing.assert_array_equal(labels_from_y(masks), [0, 1, 0])
    np.testing.assert_array_equal(masks_from_y(masks).max(axis=(1, 2)), [0, 1, 0])
    np.testing.assert_array_equal(labels_from_y([0, 1, 1]), [0, 1, 1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        labels_from_y([-1, 1])
    with pytest.raises(ValueError, match="expected 2 labels"):
        labels_from_y([0, 1, 1], n_samples=2)
    with pytest.raises(ValueError, match="binary"):
        masks_from_y(np.full((1, 2, 2), 7))
