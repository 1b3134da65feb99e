"""Readers: the course layout (round trip through the generator), official CLEVRTex, bad files."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from col775.slots.data import build_loaders, detect_layout, load_dataset
from col775.slots.scenes import render_scene, write_scene_folder


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("col775.slots.data.DEFAULT_CACHE_ROOT", tmp_path / "scene-cache", raising=False)


def _write_course(root, split, name, image, mask_rgb=None):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / split / name)
    if mask_rgb is not None:
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask_rgb).save(root / "masks" / split / name)


def test_round_trip_of_generated_scenes(tmp_path):
    write_scene_folder(tmp_path, n_train=4, n_val=2, size=32, seed=9, min_objects=2, max_objects=5)
    for background in ("border", (0, 0, 0)):
        train, val, info = load_dataset(tmp_path, image_size=32, background=background)
        assert (info.layout, info.n_train, info.n_val, info.n_skipped, info.has_masks) == ("course", 4, 2, 0, True)
        for split_code, dataset in ((0, train), (1, val)):
            for i in range(len(dataset)):
                image, mask = render_scene(np.random.default_rng([9, split_code, i]), 32, 2, 5)
                sample = dataset[i]
                assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
                assert sample["mask"].dtype == torch.int64
                restored = ((sample["image"].permute(1, 2, 0) + 1.0) * 127.5).round().numpy()
                np.testing.assert_array_equal(restored, image)
                assert adjusted_rand_score(mask.ravel(), sample["mask"].numpy().ravel()) == 1.0
                np.testing.assert_array_equal(sample["mask"].numpy() == 0, mask == 0)  # background stays 0
        assert info.max_objects == max(int(d[i]["mask"].max()) for d in (train, val) for i in range(len(d)))


def test_build_loaders_batches(tmp_path):
    write_scene_folder(tmp_path, n_train=5, n_val=3, size=16, seed=1, max_objects=3)
    train, val, info = build_loaders(tmp_path, batch_size=2, image_size=16)
    batch = next(iter(train))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 16, 16)
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert sum(len(b["image"]) for b in val) == info.n_val == 3
    first = [b["index"].tolist() for b in build_loaders(tmp_path, 2, image_size=16, seed=3)[0]]
    again = [b["index"].tolist() for b in build_loaders(tmp_path, 2, image_size=16, seed=3)[0]]
    assert first == again  # shuffling is seeded


def test_background_rule_border_or_given_colour(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.full((8, 8, 3), 90, np.uint8)  # grey background all round
    mask[2:5, 2:5] = (0, 0, 0)  # a black object
    mask[5:7, 5:7] = (200, 10, 10)
    _write_course(tmp_path, "train", "a.png", image, mask)
    _write_course(tmp_path, "val", "a.png", image, mask)
    train, _, info = load_dataset(tmp_path, image_size=8)
    ids = train[0]["mask"].numpy()
    assert ids[0, 0] == 0 and ids[3, 3] > 0 and ids[6, 6] > 0 and info.max_objects == 2
    train, _, _ = load_dataset(tmp_path, image_size=8, background=(0, 0, 0))
    ids = train[0]["mask"].numpy()
    assert ids[3, 3] == 0 and ids[0, 0] > 0 and ids[6, 6] > 0
    with pytest.raises(ValueError, match="background"):
        load_dataset(tmp_path, image_size=8, background="corner")


def test_course_layout_resizes_and_holds_out_val_when_missing(tmp_path):
    for i in range(10):
        mask = np.zeros((16, 16, 3), np.uint8)
        mask[4:12, 4:12] = (255, 0, 0)
        _write_course(tmp_path, "train", f"{i:02d}.png", np.full((16, 16, 3), i * 20, np.uint8), mask)
    train, val, info = load_dataset(tmp_path, image_size=8, val_fraction=0.2)
    assert (info.n_train, info.n_val) == (8, 2)
    assert train[0]["image"].shape == (3, 8, 8)
    expected = np.zeros((8, 8), np.int64)
    expected[2:6, 2:6] = 1
    np.testing.assert_array_equal(train[0]["mask"].numpy(), expected)
    names = set(train.arrays.names) | set(val.arrays.names)
    assert len(names) == 10


def _clevrtex_files(folder, index, rgba=True):
    """A 320x240 CLEVRTex-like frame and _flat mask; object 2 lies outside the centre 192 crop."""
    folder.mkdir(parents=True, exist_ok=True)
    image = np.zeros((240, 320, 4), np.uint8)
    image[..., 3] = 77  # alpha that must be dropped, not blended
    image[..., :3] = (10, 20, 30)
    ids = np.zeros((240, 320), np.uint8)
    ids[0:20, 0:40] = 2  # cropped away: the crop is rows 24..215, columns 64..255
    ids[24 + 24 : 24 + 72, 64 + 48 : 64 + 96] = 5  # crop rows 24..71, cols 48..95 -> 128px rows 16..47, cols 32..63
    # crop rows 120..191, cols 150..191 -> rows 80..127, cols 100..127
    ids[24 + 120 : 24 + 192, 64 + 150 : 64 + 192] = 9
    image[ids == 5, :3] = (200, 100, 50)
    Image.fromarray(image if rgba else image[..., :3]).save(folder / f"CLEVRTEX_full_{index:06d}.png")
    Image.fromarray(ids).save(folder / f"CLEVRTEX_full_{index:06d}_flat.png")


def test_clevrtex_crop_resize_renumber_and_rgba(tmp_path):
    for i in range(10):
        _clevrtex_files(tmp_path / f"{i // 5}", i)  # nested in sub-folders, as the official download is
    (tmp_path / "0" / "CLEVRTEX_full_000000.json").write_text("{}")
    assert detect_layout(tmp_path) == "clevrtex"
    train, val, info = load_dataset(tmp_path, image_size=128)
    assert (info.layout, info.n_train, info.n_val) == ("clevrtex", 8, 1)  # official split: [20%, 100%) and [10%, 20%)
    assert val.arrays.names == ["CLEVRTEX_full_000001.png"]
    expected = np.zeros((128, 128), np.int64)
    expected[16:48, 32:64] = 1  # id 5 -> 1 after id 2 was cropped away
    expected[80:128, 100:128] = 2  # id 9 -> 2
    sample = train[0]
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    rgb = ((sample["image"] + 1.0) * 127.5).round().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(rgb[20, 40], (200, 100, 50))  # RGB kept as is, alpha ignored
    np.testing.assert_array_equal(rgb[100, 10], (10, 20, 30))
    assert info.max_objects == 2
    _, val_all, _ = load_dataset(tmp_path, image_size=64, clevrtex_official_split=False, val_fraction=0.3)
    assert len(val_all) == 3 and val_all[0]["image"].shape == (3, 64, 64)


def test_corrupt_files_are_named_and_skipped(tmp_path):
    write_scene_folder(tmp_path, n_train=3, n_val=1, size=16, seed=2, max_objects=2)
    bad = tmp_path / "images" / "train" / "000001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = tmp_path / "masks" / "train" / "000002.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.warns(UserWarning) as caught:
        train, _, info = load_dataset(tmp_path, image_size=16)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and str(bad) in messages[0] and str(truncated) in messages[1]
    assert info.n_skipped == 2 and info.n_train == 1 and train.arrays.names == ["000000.png"]
    assert info.skipped == [str(bad), str(truncated)]


def test_missing_masks_error_or_maskless_folder(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    _write_course(tmp_path, "train", "a.png", image, np.zeros((8, 8, 3), np.uint8))
    _write_course(tmp_path, "train", "b.png", image)
    _write_course(tmp_path, "val", "c.png", image)
    with pytest.raises(FileNotFoundError, match="b.png"):
        load_dataset(tmp_path, image_size=8)
    (tmp_path / "masks" / "train" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask"):
        load_dataset(tmp_path, image_size=8)
    train, val, info = load_dataset(tmp_path, image_size=8, require_masks=False)
    assert not info.has_masks and info.max_objects == 0
    assert "mask" not in train[0] and len(val) == 1
    batch = next(iter(build_loaders(tmp_path, 2, image_size=8, require_masks=False)[0]))
    assert batch["image"].shape == (2, 3, 8, 8)


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-scenes"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope")
