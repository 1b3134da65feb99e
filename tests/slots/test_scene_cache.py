"""The decoded-scene disk cache: built once, read without decoding, rebuilt when a file or setting changes."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from col775.slots.data import load_dataset
from col775.slots.scenes import write_scene_folder


@pytest.fixture
def scenes(tmp_path):
    return write_scene_folder(tmp_path / "data", n_train=4, n_val=2, size=16, seed=3, min_objects=1, max_objects=3)


def _refuse_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a cached split was decoded again")

    monkeypatch.setattr(Image, "open", refuse)


def test_cache_is_built_once_then_read_without_decoding(scenes, tmp_path, monkeypatch):
    train, val, info = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    images, masks = np.array(train.arrays.images), np.array(train.arrays.masks)
    assert isinstance(train.arrays.images, np.memmap) and isinstance(val.arrays.masks, np.memmap)
    _refuse_decoding(monkeypatch)
    again, _, again_info = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    assert again.arrays.folder == train.arrays.folder and again_info == info
    np.testing.assert_array_equal(again.arrays.images, images)
    np.testing.assert_array_equal(again.arrays.masks, masks)


def test_cache_is_rebuilt_when_a_file_changes(scenes, tmp_path):
    train, _, _ = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[2:6, 3:9] = (255, 255, 0)
    changed = scenes / "masks" / "train" / "000001.png"
    Image.fromarray(mask).save(changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))  # a distinct mtime, whatever the clock
    new, _, _ = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    assert new.arrays.folder != train.arrays.folder
    assert not train.arrays.folder.exists(), "the stale cache of the same split should be removed"
    np.testing.assert_array_equal(new[1]["mask"].numpy(), (mask[..., 0] > 0).astype(np.int64))
    os.utime(changed, ns=(2_000_000_000, 2_000_000_000))  # same bytes, a new mtime: decoded again
    touched, _, _ = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    assert touched.arrays.folder != new.arrays.folder and not new.arrays.folder.exists()


def test_image_size_and_crop_are_part_of_the_key(scenes, tmp_path):
    frame = np.zeros((30, 40, 3), np.uint8)
    frame[:, 20:] = 255  # right half white: the auto crop (centre 24x24) keeps columns 8..31
    for split in ("train", "val"):
        Image.fromarray(frame).save(scenes / "images" / split / "wide.png")
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(scenes / "masks" / split / "wide.png")
    auto, _, _ = load_dataset(scenes, image_size=8, cache_dir=tmp_path / "c")
    whole, _, _ = load_dataset(scenes, image_size=8, crop="none", cache_dir=tmp_path / "c")
    larger, _, _ = load_dataset(scenes, image_size=12, cache_dir=tmp_path / "c")
    assert len({auto.arrays.folder, whole.arrays.folder, larger.arrays.folder}) == 3
    assert auto.arrays.folder.exists() and whole.arrays.folder.exists() and larger.arrays.folder.exists()
    row = auto.arrays.names.index("wide.png")
    reference = {
        "auto": Image.fromarray(frame).crop((8, 3, 32, 27)).resize((8, 8), Image.BILINEAR),
        "none": Image.fromarray(frame).resize((8, 8), Image.BILINEAR),
    }
    np.testing.assert_array_equal(auto.arrays.images[row], np.asarray(reference["auto"]))
    np.testing.assert_array_equal(whole.arrays.images[row], np.asarray(reference["none"]))


def test_workers_reopen_the_memmap_instead_of_copying_pixels(scenes, tmp_path):
    train, _, _ = load_dataset(scenes, image_size=16, cache_dir=tmp_path / "c")
    assert train.arrays.images.shape == (4, 16, 16, 3)  # opened here
    copy = pickle.loads(pickle.dumps(train))
    assert copy.arrays._images._array is None and copy.arrays._masks._array is None, "pixels must not be pickled"
    np.testing.assert_array_equal(copy[2]["image"].numpy(), train[2]["image"].numpy())
