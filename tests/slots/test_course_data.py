"""The course's real data: 320x240 RGBA frames, masks found by name or sorted order, the crop, --no-masks."""

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from col775.cli import main
from col775.core.config import add_config_args, config_from_args
from col775.slots.config import SlotsConfig
from col775.slots.data import load_dataset
from col775.slots.train import make_loaders

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "clevrtex-samples"

# Objects of a 320x240 frame by id: (rows, columns). The auto crop keeps rows 24..215 and
# columns 64..255 (the centre 192x192) and shrinks them to 128x128 by 2/3.
OBJECTS = {
    3: (slice(24 + 30, 24 + 90), slice(64 + 0, 64 + 60)),  # edges on multiples of 3: rows 20..59, columns 0..39
    5: (slice(0, 18), slice(0, 30)),  # outside the crop: dropped
    7: (slice(24 + 120, 24 + 192), slice(64 + 96, 64 + 150)),  # odd frames only
    9: (slice(24 + 100, 24 + 102), slice(64 + 130, 64 + 137)),  # 2 rows thin: a blend would make a new id
}
MASK_COLOURS = {3: (0, 0, 90), 5: (0, 0, 150), 7: (0, 200, 0), 9: (0, 250, 0)}  # RGB masks: colour order is id order
PIXEL_COLOURS = {3: (200, 100, 50), 5: (90, 90, 90), 7: (50, 160, 220), 9: (240, 240, 0)}
BACKGROUND = (10, 20, 30)


@pytest.fixture(autouse=True)
def _scene_cache(tmp_path, monkeypatch):
    monkeypatch.setattr("col775.slots.data.DEFAULT_CACHE_ROOT", tmp_path / "scene-cache", raising=False)


def _frame_ids(index: int) -> np.ndarray:
    ids = np.zeros((240, 320), np.uint8)
    for object_id, (rows, cols) in OBJECTS.items():
        if object_id != 7 or index % 2:
            ids[rows, cols] = object_id
    return ids


def _expected_mask(
    index: int, rows: slice = slice(24, 216), cols: slice = slice(64, 256), size: int = 128
) -> np.ndarray:
    """Frame `index`'s ids in the box (default the centre crop) resized by PyTorch's nearest neighbour, made dense."""
    box = torch.from_numpy(_frame_ids(index)[rows, cols]).float()[None, None]
    resized = F.interpolate(box, size=(size, size), mode="nearest-exact")[0, 0].long().numpy()
    dense = {object_id: rank for rank, object_id in enumerate(sorted(set(resized.ravel()) - {0}), start=1)}
    return np.vectorize(lambda v: dense.get(v, 0))(resized)


def _write_frame(root: Path, split: str, index: int, mask_style: str | None) -> str:
    """An RGBA 320x240 frame in images/<split>/ and its mask in masks/<split>/ (palette `_flat.png` or RGB)."""
    name = f"CLEVRTEX_full_{index:06d}"
    ids = _frame_ids(index)
    frame = np.zeros((240, 320, 4), np.uint8)
    frame[..., :3] = BACKGROUND
    frame[..., 3] = 77  # alpha: dropped, not blended
    for object_id, colour in PIXEL_COLOURS.items():
        frame[ids == object_id, :3] = colour
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame, "RGBA").save(root / "images" / split / f"{name}.png")
    masks = root / "masks" / split
    masks.mkdir(parents=True, exist_ok=True)
    if mask_style == "flat palette":
        palette = Image.new("P", (320, 240))
        palette.putdata(ids.ravel().tolist())
        palette.putpalette([0, 0, 0] + [255, 0, 255] * 255)  # colours do not matter: the index is the id
        palette.save(masks / f"{name}_flat.png")
    elif mask_style == "same-name rgb":
        rgb = np.zeros((240, 320, 3), np.uint8)
        for object_id, colour in MASK_COLOURS.items():
            rgb[ids == object_id] = colour
        Image.fromarray(rgb).save(masks / f"{name}.png")
    return name


@pytest.mark.parametrize("mask_style", ["flat palette", "same-name rgb"])
def test_course_frames_are_cropped_to_their_exact_object_ids(tmp_path, mask_style):
    for index, split in enumerate(["train", "train", "train", "val"]):
        _write_frame(tmp_path, split, index, mask_style)
    if mask_style == "flat palette":
        assert Image.open(tmp_path / "masks" / "train" / "CLEVRTEX_full_000000_flat.png").mode == "P"
    train, val, info = load_dataset(tmp_path, image_size=128)
    assert (info.n_train, info.n_val, info.has_masks, info.max_objects) == (3, 1, True, 3)
    assert info.mask_pairing == {"train": "by name", "val": "by name"}
    assert "192x192 at (64, 24) of 320x240 frames" in info.crop and "128x128" in info.crop
    for index, sample in enumerate([train[0], train[1], train[2], val[0]]):
        expected = _expected_mask(index)
        assert expected[20:60, 0:40].min() == expected[20:60, 0:40].max() == 1 and expected.max() == 2 + index % 2
        np.testing.assert_array_equal(sample["mask"].numpy(), expected)
        rgb = ((sample["image"] + 1.0) * 127.5).round().permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(rgb[40, 20], PIXEL_COLOURS[3])  # inside object 3; alpha ignored
        np.testing.assert_array_equal(rgb[5, 120], BACKGROUND)


def test_crop_none_keeps_the_whole_frame(tmp_path):
    for index, split in enumerate(["train", "val"]):
        _write_frame(tmp_path, split, index, "same-name rgb")
    train, _, info = load_dataset(tmp_path, image_size=64, crop="none")
    assert info.crop == "none: whole 320x240 frames, resized to 64x64"
    expected = _expected_mask(0, slice(None), slice(None), size=64)
    assert expected.max() == 3  # object 5 is kept: nothing was cropped
    np.testing.assert_array_equal(train[0]["mask"].numpy(), expected)
    box_train, _, box_info = load_dataset(tmp_path, image_size=32, crop="64,29,256,221")
    assert "192x192 at (64, 29) of 320x240 frames" in box_info.crop
    with pytest.raises(ValueError, match="crop must be"):
        load_dataset(tmp_path, image_size=64, crop="centre")
    with pytest.raises(ValueError, match="does not fit"):
        load_dataset(tmp_path, image_size=64, crop="0,0,400,100")


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"the real CLEVRTex sample frames are not at {SAMPLES}")
def test_auto_crop_of_real_frames_matches_the_official_torchvision_pipeline(tmp_path):
    frames = sorted(SAMPLES.glob("*.png"))
    (tmp_path / "images" / "train").mkdir(parents=True)
    for frame in frames:
        os.symlink(frame, tmp_path / "images" / "train" / frame.name)
    train, val, info = load_dataset(tmp_path, image_size=128, require_masks=False, val_fraction=0.34)
    assert info.crop == "auto: 192x192 at (64, 24) of 320x240 frames, resized to 128x128"
    loaded = dict(zip(train.arrays.names + val.arrays.names, list(train.arrays.images) + list(val.arrays.images)))
    for frame in frames:
        with Image.open(frame) as image:
            assert image.size == (320, 240) and image.mode == "RGBA"
            official = TF.resize(TF.center_crop(image.convert("RGB"), [192]), [128])  # CLEVRTex's loader
        np.testing.assert_array_equal(loaded[frame.name], np.asarray(official))


def _write_plain(root: Path, split: str, name: str, mask_name: str | None, corner: int) -> None:
    """A 12x12 image and (if named) an RGB mask with one white square at row `corner`."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), 40 * corner, np.uint8)).save(root / "images" / split / name)
    if mask_name:
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((12, 12, 3), np.uint8)
        mask[corner : corner + 3, 4:7] = 255
        Image.fromarray(mask).save(root / "masks" / split / mask_name)


def test_masks_with_other_names_are_paired_in_sorted_order_with_a_warning(tmp_path):
    written = [("b.png", "mask_01.png"), ("c.png", "mask_02.png"), ("a.png", "mask_00.png")]
    for i, (name, mask_name) in enumerate(written):
        _write_plain(tmp_path, "train", name, mask_name, corner=i)
    _write_plain(tmp_path, "val", "v.png", "v.png", corner=5)
    with pytest.warns(UserWarning, match="sorted file order") as caught:
        train, val, info = load_dataset(tmp_path, image_size=12)
    assert str(tmp_path / "masks" / "train") in str(caught[0].message)
    assert info.mask_pairing == {"train": "by sorted order", "val": "by name"}
    assert train.arrays.names == ["a.png", "b.png", "c.png"]
    corners = {"a.png": 2, "b.png": 0, "c.png": 1}  # a.png was written with mask_00, b.png with mask_01, ...
    for row, name in enumerate(train.arrays.names):
        expected = np.zeros((12, 12), np.int64)
        expected[corners[name] : corners[name] + 3, 4:7] = 1
        np.testing.assert_array_equal(train[row]["mask"].numpy(), expected)


def test_sorted_order_pairing_needs_equal_counts_and_agreeing_names(tmp_path):
    _write_plain(tmp_path, "train", "a.png", "mask_00.png", corner=0)
    _write_plain(tmp_path, "train", "b.png", "mask_01.png", corner=1)
    _write_plain(tmp_path, "train", "c.png", None, corner=2)
    _write_plain(tmp_path, "val", "v.png", "v.png", corner=5)
    with pytest.raises(FileNotFoundError, match="holds 2 files for 3 images"):
        load_dataset(tmp_path, image_size=12)
    _write_plain(tmp_path, "train", "c.png", "b.png", corner=2)  # b.png matches b.png by name but sorts first
    with pytest.raises(FileNotFoundError, match="would pair b.png with mask_00.png"):
        load_dataset(tmp_path, image_size=12)


def _maskless_folder(root: Path) -> Path:
    for index, split in enumerate(["train", "train", "val", "val"]):
        _write_frame(root, split, index, None)
    return root


def test_missing_masks_stop_training_naming_the_folder_and_the_names(tmp_path, capsys):
    data = _maskless_folder(tmp_path / "data")
    quick = ["--preset", "demo", "--epochs", "1", "--steps-per-epoch", "1", "--cache-dir", str(tmp_path / "c")]
    code = main(["slots", "train", "--data", str(data), "--out", str(tmp_path / "run"), *quick])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("col775: error: no masks")
    assert str(data / "masks" / "train" / "CLEVRTEX_full_000000_flat.png") in error
    assert str(data / "masks" / "train" / "CLEVRTEX_full_000000.png") in error and "--no-masks" in error


def test_no_masks_flag_allows_a_maskless_folder(tmp_path):
    data = _maskless_folder(tmp_path / "data")
    parser = argparse.ArgumentParser()
    add_config_args(parser, SlotsConfig)
    args = parser.parse_args(["--data", str(data), "--no-masks", "--image-size", "32", "--cache-dir", str(tmp_path)])
    config = config_from_args(SlotsConfig, args, "slots")
    assert config.masks is False
    loaders = make_loaders(config)
    assert not loaders.info.has_masks and loaders.info.mask_pairing == {"train": "none", "val": "none"}
    batch = next(iter(loaders.val))
    assert batch["image"].shape == (2, 3, 32, 32) and "mask" not in batch
