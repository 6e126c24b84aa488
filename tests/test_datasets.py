"""Loaders on generated folder trees and on ../shared/data; synthetic set; protocol transforms."""

import os

import numpy as np
import pytest
from PIL import Image

from skad.datasets import (
    DEFECT_TYPES,
    blind_setting,
    load_crackforest,
    load_elpv,
    load_folder,
    load_mvtec,
    make_rto,
    make_synthetic,
    rotate_crop,
)


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _defect_pair(size=40, box=(10, 14, 20, 30)):
    """Grey image with a red rectangle, and the rectangle's 0/255 mask."""
    img = np.full((size, size, 3), 90, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1] = (255, 0, 0)
    mask[r0:r1, c0:c1] = 255
    return img, mask


@pytest.fixture
def mvtec_tree(tmp_path):
    root = tmp_path / "mvtec"
    cat = root / "widget"
    good = np.full((40, 40, 3), 90, np.uint8)
    for i in range(3):
        _save(str(cat / "train" / "good" / f"{i:03d}.png"), good)
    _save(str(cat / "test" / "good" / "000.png"), good)
    for i, box in enumerate([(10, 14, 20, 30), (0, 6, 0, 6)]):
        img, mask = _defect_pair(box=box)
        _save(str(cat / "test" / "crack" / f"{i:03d}.png"), img)
        _save(str(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png"), mask)
    return root


# -- load_mvtec ------------------------------------------------------------------------
def test_load_mvtec_tree(mvtec_tree):
    data = load_mvtec(mvtec_tree, "widget", resize=32, crop=28)
    threaded = load_mvtec(mvtec_tree, "widget", resize=32, crop=28, n_jobs=2)
    np.testing.assert_array_equal(threaded.test_images, data.test_images)
    assert data.train_images.shape == (3, 28, 28, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (3, 28, 28, 3)
    assert data.test_masks.shape == (3, 28, 28) and data.test_masks.dtype == np.uint8
    assert data.test_labels.tolist() == [1, 1, 0]  # folders sorted: crack, good
    assert data.test_defect_types == ["crack", "crack", "good"]
    assert data.defect_types == ["crack"] and data.category == "widget"
    assert set(np.unique(data.test_masks).tolist()) == {0, 1}
    assert data.test_masks[2].sum() == 0
    # same geometry for image and mask: the red pixels sit on the mask
    red = (data.test_images[0, ..., 0] > 200) & (data.test_images[0, ..., 1] < 60)
    m = data.test_masks[0].astype(bool)
    assert (red & m).sum() / m.sum() > 0.8 and (red & ~m).sum() <= 0.1 * m.sum()
    # the second defect is cut by the centre crop: 40 -> 32 keeps 6*0.8 = 4.8 px, crop
    # removes 2 px per side
    assert 0 < data.test_masks[1].sum() < 16
    assert "widget" in data.DESCR and len(data.train_filenames) == 3


def test_load_mvtec_native_and_paths(mvtec_tree):
    native = load_mvtec(mvtec_tree, "widget", resize=None, crop=None)
    assert native.test_images.shape == (3, 40, 40, 3)
    assert native.test_masks[0].sum() == 4 * 10
    paths = load_mvtec(mvtec_tree, "widget", resize=None, crop=None, return_paths=True)
    assert isinstance(paths.train_images, list) and os.path.isfile(paths.train_images[0])
    np.testing.assert_array_equal(paths.test_masks, native.test_masks)
    rect = load_mvtec(mvtec_tree, "widget", resize=(20, 30), crop=None, interpolation="bicubic")
    assert rect.test_images.shape == (3, 20, 30, 3) and rect.test_masks.shape == (3, 20, 30)


def test_load_mvtec_errors(mvtec_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        load_mvtec(tmp_path / "nowhere", "widget")
    with pytest.raises(FileNotFoundError, match=r"categories found .*\['widget'\]"):
        load_mvtec(mvtec_tree, "bottle")
    with pytest.raises(ValueError, match="return_paths=True"):
        load_mvtec(mvtec_tree, "widget", return_paths=True)
    with pytest.raises(ValueError, match="larger than the image"):
        load_mvtec(mvtec_tree, "widget", resize=20, crop=24)
    with pytest.raises(ValueError, match="interpolation"):
        load_mvtec(mvtec_tree, "widget", interpolation="cubic")
    with pytest.raises(ValueError, match="resize"):
        load_mvtec(mvtec_tree, "widget", resize=-3)
    cat = mvtec_tree / "widget"
    # mask of another size than its image
    _save(str(cat / "ground_truth" / "crack" / "001_mask.png"), np.zeros((30, 40), np.uint8))
    with pytest.raises(ValueError, match=r"001_mask.png.*30x40.*must have the size"):
        load_mvtec(mvtec_tree, "widget")
    # missing mask
    os.remove(cat / "ground_truth" / "crack" / "001_mask.png")
    with pytest.raises(FileNotFoundError, match=r"mask file not found .*001.png"):
        load_mvtec(mvtec_tree, "widget")
    _save(str(cat / "ground_truth" / "crack" / "001_mask.png"), np.zeros((40, 40), np.uint8))
    # corrupt image file, named in the message
    (cat / "train" / "good" / "002.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image file .*002.png"):
        load_mvtec(mvtec_tree, "widget")
    with pytest.raises(ValueError, match=r"cannot read image file .*002.png"):
        load_mvtec(mvtec_tree, "widget", n_jobs=2)
    with pytest.raises(ValueError, match=r"cannot read image file .*002.png"):
        load_mvtec(mvtec_tree, "widget", resize=None, crop=None, return_paths=True)
    # empty category
    for f in (cat / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="is empty"):
        load_mvtec(mvtec_tree, "widget")
    os.rmdir(cat / "train" / "good")
    with pytest.raises(FileNotFoundError, match="train/good"):
        load_mvtec(mvtec_tree, "widget")


# -- load_folder -------------------------------------------------------------------------
@pytest.mark.parametrize("nested", [True, False])
def test_load_folder(tmp_path, nested):
    good = np.full((24, 24, 3), 50, np.uint8)
    for i in range(2):
        _save(str(tmp_path / "ok" / f"g{i}.png"), good)
    img, mask = _defect_pair(size=24, box=(2, 6, 2, 10))
    _save(str(tmp_path / "dent" / "d0.png"), img)
    _save(str(tmp_path / "hole" / "h0.jpg"), img)
    sub = ("dent", "hole") if nested else ("", "")
    _save(str(tmp_path / "gt" / sub[0] / "d0_mask.png"), mask)
    _save(str(tmp_path / "gt" / sub[1] / "h0.png"), mask)
    data = load_folder(tmp_path, good_dir="ok", mask_dir="gt")
    assert data.images.shape == (4, 24, 24, 3)
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.defect_types == ["ok", "ok", "dent", "hole"]
    assert data.masks.shape == (4, 24, 24) and data.masks[2].sum() == 32 == data.masks[3].sum()
    assert data.masks[:2].sum() == 0
    no_masks = load_folder(tmp_path, good_dir="ok", resize=16, crop=12)
    assert no_masks.masks is None and no_masks.images.shape[1:] == (12, 12, 3)
    paths = load_folder(tmp_path, good_dir="ok", mask_dir="gt", return_paths=True)
    assert len(paths.images) == 4 and paths.masks.shape == (4, 24, 24)


def test_load_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="good_dir folder 'good'"):
        load_folder(tmp_path)
    os.makedirs(tmp_path / "good")
    with pytest.raises(ValueError, match="no normal image"):
        load_folder(tmp_path)
    _save(str(tmp_path / "good" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    _save(str(tmp_path / "bent" / "b.png"), np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="different sizes"):
        load_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        load_folder(tmp_path, mask_dir="masks")
    os.makedirs(tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match=r"no mask found .*b.png"):
        load_folder(tmp_path, mask_dir="masks", resize=(8, 8))


# -- load_elpv ---------------------------------------------------------------------------
@pytest.fixture
def elpv_tree(tmp_path):
    rows = [(0.0, "mono"), (1 / 3, "mono"), (2 / 3, "mono"), (1.0, "poly"), (0.0, "poly")]
    lines = []
    for i, (p, t) in enumerate(rows):
        name = f"images/cell{i:04d}.png"
        _save(str(tmp_path / name), np.full((12, 12), 20 * i, np.uint8))
        lines.append(f"{name}  {p!r}  {t}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_load_elpv_tree(elpv_tree):
    data = load_elpv(elpv_tree)
    assert data.images.shape == (4, 12, 12) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(data.probability, [0, 2 / 3, 1, 0])
    assert data.cell_types == ["mono", "mono", "poly", "poly"]
    strict = load_elpv(elpv_tree, min_defect_probability=1.0, ambiguous="normal", as_rgb=True)
    assert strict.labels.tolist() == [0, 0, 0, 1, 0] and strict.images.shape == (5, 12, 12, 3)
    mono = load_elpv(elpv_tree, cell_type="mono", resize=8, return_paths=False)
    assert mono.images.shape == (2, 8, 8) and set(mono.cell_types) == {"mono"}
    paths = load_elpv(elpv_tree, cell_type="poly", return_paths=True)
    assert [os.path.basename(p) for p in paths.images] == ["cell0003.png", "cell0004.png"]


def test_load_elpv_errors(elpv_tree, tmp_path):
    with pytest.raises(ValueError, match="cell_type"):
        load_elpv(elpv_tree, cell_type="thin-film")
    with pytest.raises(ValueError, match="min_defect_probability"):
        load_elpv(elpv_tree, min_defect_probability=0)
    with pytest.raises(ValueError, match="ambiguous"):
        load_elpv(elpv_tree, ambiguous="keep")
    with pytest.raises(FileNotFoundError, match="labels file"):
        load_elpv(tmp_path / "images")
    with open(elpv_tree / "labels.csv", "a") as fh:
        fh.write("images/cell0009.png 0.5\n")
    with pytest.raises(ValueError, match="line 6"):
        load_elpv(elpv_tree)


# -- load_crackforest --------------------------------------------------------------------
def test_load_crackforest_tree(tmp_path):
    for i in range(1, 4):
        img, mask = _defect_pair(size=16, box=(4, 5, 0, 16))
        _save(str(tmp_path / "image" / f"{i:03d}.jpg"), img)
        if i < 3:
            _save(str(tmp_path / "masks_png" / f"{i:03d}_mask.png"), mask)
    data = load_crackforest(tmp_path)
    assert data.images.shape == (2, 16, 16, 3) and data.masks.shape == (2, 16, 16)
    assert data.labels.tolist() == [1, 1] and data.masks[0].sum() == 16
    assert [os.path.basename(f) for f in data.unlabeled_filenames] == ["003.jpg"]
    small = load_crackforest(tmp_path, resize=8)
    assert small.masks.shape == (2, 8, 8)
    _save(str(tmp_path / "masks_png" / "002_mask.png"), np.zeros((16, 10), np.uint8))
    with pytest.raises(ValueError, match="must have the size of their image"):
        load_crackforest(tmp_path)
    with pytest.raises(FileNotFoundError, match="CrackForest image folder"):
        load_crackforest(tmp_path / "masks_png")


# -- real data (../shared/data) ----------------------------------------------------------
def test_load_mvtec_bottle(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle", n_jobs=2)
    assert data.train_images.shape == (209, 224, 224, 3)
    assert data.test_images.shape == (83, 224, 224, 3) and data.test_masks.shape == (83, 224, 224)
    assert int(data.test_labels.sum()) == 63
    assert data.defect_types == ["broken_large", "broken_small", "contamination"]
    assert set(np.unique(data.test_masks).tolist()) == {0, 1}
    has_mask = data.test_masks.reshape(83, -1).any(axis=1)
    np.testing.assert_array_equal(has_mask, data.test_labels == 1)


def test_load_mvtec_bottle_paths(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle", resize=None, crop=None, return_paths=True)
    assert len(data.train_images) == 209 and data.test_masks.shape == (83, 512, 512)


def test_load_folder_on_bottle_test_set(mvtec_root):
    # MVTec's test/ is a load_folder layout; its masks live outside root (absolute mask_dir)
    bottle = mvtec_root / "bottle"
    data = load_folder(bottle / "test", mask_dir=bottle / "ground_truth", return_paths=True)
    assert len(data.images) == 83 and int(data.labels.sum()) == 63
    np.testing.assert_array_equal(data.masks.reshape(83, -1).any(axis=1), data.labels == 1)


def test_load_elpv_real(shared_data):
    mono = load_elpv(shared_data / "elpv", cell_type="mono", return_paths=True)
    # 588 mono cells with probability 0, 56 + 313 with probability >= 2/3
    assert int((mono.labels == 0).sum()) == 588 and int(mono.labels.sum()) == 369
    both = load_elpv(shared_data / "elpv", ambiguous="normal", min_defect_probability=1 / 3,
                     return_paths=True)
    assert len(both.images) == 2624 and int(both.labels.sum()) == 1116
    assert mono.images[0].endswith(".png") and all(t == "mono" for t in mono.cell_types)


def test_load_crackforest_real(shared_data):
    data = load_crackforest(shared_data / "crackforest")
    assert data.images.shape == (118, 320, 480, 3) and data.masks.shape == (118, 320, 480)
    assert len(data.unlabeled_filenames) == 37
    assert data.labels.sum() == 118 and 0 < data.masks.mean() < 0.05


# -- make_synthetic ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["texture", "object", "mixed"])
def test_make_synthetic(kind):
    data = make_synthetic(n_train=5, n_test=12, image_size=48, kind=kind, random_state=3)
    assert data.train_images.shape == (5, 48, 48, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (12, 48, 48, 3) and data.test_masks.shape == (12, 48, 48)
    assert data.test_labels.tolist() == [0] * 6 + [1] * 6
    assert data.test_defect_types[6:] == list(DEFECT_TYPES) + ["scratch"]
    per_image = data.test_masks.reshape(12, -1).sum(axis=1)
    assert np.all(per_image[:6] == 0) and np.all(per_image[6:] >= 4)
    assert set(np.unique(data.test_masks).tolist()) == {0, 1}
    assert data.category == kind
    again = make_synthetic(n_train=5, n_test=12, image_size=48, kind=kind, random_state=3)
    np.testing.assert_array_equal(again.test_images, data.test_images)
    np.testing.assert_array_equal(again.test_masks, data.test_masks)
    other = make_synthetic(n_train=5, n_test=12, image_size=48, kind=kind, random_state=4)
    assert not np.array_equal(other.test_images, data.test_images)


def test_make_synthetic_masks_cover_the_changes():
    """Defects change pixels inside their mask: against a defect-free redraw, using the
    same generator state, mask pixels differ and the rest of the image is identical."""
    from sklearn.utils import check_random_state

    from skad.datasets._synthetic import _apply_defect, _object, _texture, _to_uint8

    for gen, is_obj in [(_texture, False), (_object, True)]:
        for kind in DEFECT_TYPES:
            rng = check_random_state(0)
            img, support = gen(rng, 64)
            out, mask = _apply_defect(rng, img, support, kind, 64, is_obj,
                                      lambda: (np.zeros_like(img), None))
            changed = np.any(_to_uint8(out) != _to_uint8(img), axis=-1)
            assert not np.any(changed & ~mask), kind  # nothing changes outside the mask
            assert mask.sum() > 0


def test_make_synthetic_errors():
    with pytest.raises(ValueError, match="kind"):
        make_synthetic(kind="metal")
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic(image_size=16)
    with pytest.raises(ValueError, match="defect_types"):
        make_synthetic(defect_types=["dent"])
    with pytest.raises(ValueError, match="anomaly_ratio"):
        make_synthetic(anomaly_ratio=1.5)
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic(n_train=0)


# -- MAD-RTO and blind settings ----------------------------------------------------------
def test_rotate_crop_alignment_and_determinism():
    img, mask = _defect_pair(size=48, box=(20, 30, 14, 34))
    imgs = np.stack([img] * 4)
    masks = np.stack([mask] * 4)
    out, out_masks, params = rotate_crop(imgs, masks, max_angle=30, crop=40, random_state=0,
                                         return_params=True)
    assert out.shape == (4, 40, 40, 3) and out.dtype == np.uint8 and out_masks.shape == (4, 40, 40)
    assert set(np.unique(out_masks).tolist()) <= {0, 1}
    assert np.ptp(params["angles"]) > 1 and np.all(np.abs(params["angles"]) <= 30)
    for o, m in zip(out, out_masks):
        red = (o[..., 0] > 180) & (o[..., 1] < 80)
        assert (red & (m == 1)).sum() >= 0.8 * m.sum() and (red & (m == 0)).sum() <= 0.15 * m.sum()
    again = rotate_crop(imgs, masks, max_angle=30, crop=40, random_state=0)
    np.testing.assert_array_equal(again[0], out)
    # no rotation, full crop: identity
    same = rotate_crop(imgs, max_angle=0, crop=1.0)
    np.testing.assert_array_equal(same, imgs)
    gray = rotate_crop(imgs[..., 0].astype(np.float32) / 255, crop=0.5)
    assert gray.shape == (4, 24, 24) and gray.dtype == np.float32
    with pytest.raises(ValueError, match="crop"):
        rotate_crop(imgs, crop=60)
    with pytest.raises(ValueError, match="masks"):
        rotate_crop(imgs, masks[:, :10])
    with pytest.raises(ValueError, match="fill"):
        rotate_crop(imgs, fill="zeros")
    with pytest.raises(ValueError, match="max_angle"):
        rotate_crop(imgs, max_angle=-5)


def test_make_rto_and_blind_settings():
    data = make_synthetic(n_train=4, n_test=6, image_size=40, kind="object", random_state=0)
    rto = make_rto(data, crop=32, random_state=1)
    assert rto.train_images.shape == (4, 32, 32, 3) and rto.test_masks.shape == (6, 32, 32)
    np.testing.assert_array_equal(rto.test_labels, data.test_labels)
    X, y, m = blind_setting(data, "mix")
    assert len(X) == 10 and y.tolist() == [0] * 7 + [1] * 3 and m.shape == (10, 40, 40)
    X, y, m = blind_setting(data, "test")
    np.testing.assert_array_equal(X, data.test_images)
    X, y, m = blind_setting(data, "ano")
    assert len(X) == 3 and np.all(y == 1) and np.all(m.reshape(3, -1).any(axis=1))
    with pytest.raises(ValueError, match="setting"):
        blind_setting(data, "train")
    no_anom = make_synthetic(n_train=2, n_test=2, image_size=32, anomaly_ratio=0.0)
    with pytest.raises(ValueError, match="no defective test image"):
        blind_setting(no_anom, "ano")


def test_blind_setting_with_paths(mvtec_tree):
    data = load_mvtec(mvtec_tree, "widget", resize=None, crop=None, return_paths=True)
    X, y, m = blind_setting(data, "mix")
    assert isinstance(X, list) and len(X) == 6 and m.shape == (6, 40, 40)
    X, y, m = blind_setting(data, "ano")
    assert len(X) == 2 and isinstance(X, list)


def test_one_class_train_test_holds_out_normals_with_every_defect():
    from sklearn.utils import Bunch

    from skad.datasets import one_class_train_test

    labels = np.r_[np.zeros(20, int), np.ones(5, int)]
    data = Bunch(images=np.arange(25)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8),
                 labels=labels, filenames=[f"f{i}" for i in range(25)],
                 masks=np.zeros((25, 4, 4), np.uint8))
    split = one_class_train_test(data, test_size=0.2, random_state=0)
    train = [int(f[1:]) for f in split.train_filenames]
    test = [int(f[1:]) for f in split.test_filenames]
    assert len(train) == 16 and len(test) == 9 and not set(train) & set(test)
    assert labels[train].sum() == 0 and split.test_labels.sum() == 5
    np.testing.assert_array_equal(split.test_images[:, 0, 0, 0], test)
    assert split.test_masks.shape == (9, 4, 4)
    # reproducible; no normal images: nothing to train on
    again = one_class_train_test(data, test_size=0.2, random_state=0)
    assert again.train_filenames == split.train_filenames
    only_bad = Bunch(images=data.images[20:], labels=labels[20:],
                     filenames=data.filenames[20:])
    empty = one_class_train_test(only_bad)
    assert len(empty.train_images) == 0 and len(empty.test_images) == 5
    assert empty.test_masks is None
