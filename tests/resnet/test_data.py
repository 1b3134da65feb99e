"""The image pipeline: cache reuse and rebuild, colour modes, skipped files, carving, errors."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from col775.resnet import data
from col775.resnet.data import (
    CachedImageDataset,
    build_loaders,
    denormalize,
    load_image,
    load_split,
    normalize,
)

SIZE = 16


def _noise_image(rng: np.random.Generator, mode: str = "RGB", size=(23, 19)) -> Image.Image:
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _make_tree(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> Path:
    """root/<split>/<class>/<k>.png with random pixels; counts[split][class] images."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for name, count in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                _noise_image(rng).save(folder / f"{k:03d}.png")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    counts = {"train": {"Alpha": 4, "Beta": 3}, "val": {"Alpha": 2, "Beta": 2}}
    return _make_tree(tmp_path / "data", counts)


def _reference_rgb(path: Path, size: int) -> np.ndarray:
    """PIL's own route to RGB: convert, then bilinear resize."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def test_cache_is_built_once_then_read_without_decoding(tree, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = load_split(tree / "train", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    expected = np.array(first.images)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached split was decoded again")

    monkeypatch.setattr(Image, "open", refuse)
    again = load_split(tree / "train", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    assert again.directory == first.directory
    np.testing.assert_array_equal(again.images, expected)
    np.testing.assert_array_equal(again.labels, [0, 0, 0, 0, 1, 1, 1])


def test_cache_rows_match_pil_in_file_order(tree, tmp_path):
    cache = load_split(tree / "train", ["Alpha", "Beta"], SIZE, tmp_path / "cache", progress=False)
    files = sorted((tree / "train").glob("*/*.png"))
    assert cache.files == [str(f) for f in files]
    assert cache.images.shape == (7, SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    for row, path in enumerate(files):
        np.testing.assert_array_equal(cache.images[row], _reference_rgb(path, SIZE))


def test_cache_is_rebuilt_when_a_file_changes(tree, tmp_path):
    cache_dir = tmp_path / "cache"
    old = load_split(tree / "val", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    changed = tree / "val" / "Beta" / "001.png"
    _noise_image(np.random.default_rng(99)).save(changed)
    os.utime(changed, ns=(1_000_000_000, 1_000_000_000))  # a distinct mtime, whatever the clock
    new = load_split(tree / "val", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    assert new.directory != old.directory
    assert not old.directory.exists(), "the stale cache of the same folder should be removed"
    np.testing.assert_array_equal(new.images[3], _reference_rgb(changed, SIZE))


def test_image_size_is_part_of_the_key(tree, tmp_path):
    small = load_split(tree / "val", ["Alpha", "Beta"], 8, tmp_path / "cache", progress=False)
    large = load_split(tree / "val", ["Alpha", "Beta"], 12, tmp_path / "cache", progress=False)
    assert small.images.shape[1:] == (8, 8, 3) and large.images.shape[1:] == (12, 12, 3)
    assert small.directory.exists() and large.directory.exists()


def test_killed_build_leaves_no_cache(tree, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    calls = []
    real = data.load_image

    def die_on_third(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(data, "load_image", die_on_third)
    with pytest.raises(KeyboardInterrupt):
        load_split(tree / "train", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(data, "load_image", real)
    cache = load_split(tree / "train", ["Alpha", "Beta"], SIZE, cache_dir, progress=False)
    assert len(cache) == 7


def test_parallel_decoding_gives_the_same_cache(tree, tmp_path):
    serial = load_split(tree / "train", ["Alpha", "Beta"], SIZE, tmp_path / "a", progress=False)
    parallel = load_split(
        tree / "train", ["Alpha", "Beta"], SIZE, tmp_path / "b", workers=2, progress=False
    )
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.files == parallel.files


@pytest.mark.parametrize(
    ("mode", "suffix", "opened_as"),
    [
        ("L", ".png", "L"),
        ("L", ".jpg", "L"),
        ("1", ".png", "1"),
        ("P", ".png", "P"),
        ("P", ".gif", "P"),
        ("LA", ".png", "LA"),
        ("RGBA", ".png", "RGBA"),
        ("RGBA", ".tiff", "RGBA"),
        ("CMYK", ".jpg", "CMYK"),
        ("CMYK", ".tiff", "CMYK"),
        ("RGB", ".bmp", "RGB"),
    ],
)
def test_modes_become_rgb_like_pil(tmp_path, mode, suffix, opened_as):
    path = tmp_path / f"x{suffix}"
    _noise_image(np.random.default_rng(1), mode).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == opened_as
    out = load_image(path, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _reference_rgb(path, 24))


def test_palette_with_transparency_becomes_rgb(tmp_path):
    path = tmp_path / "transparent.png"
    _noise_image(np.random.default_rng(4), "P").save(path, transparency=0)
    np.testing.assert_array_equal(load_image(path, 24), _reference_rgb(path, 24))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    wide = np.random.default_rng(2).integers(0, 65536, (20, 30), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(wide).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")
    eight_bit = np.round(wide / 257.0).astype(np.uint8)
    expected_image = Image.fromarray(eight_bit).convert("RGB").resize((24, 24), Image.BILINEAR)
    expected = np.asarray(expected_image)
    np.testing.assert_array_equal(load_image(path, 24), expected)


def test_corrupt_files_are_skipped_and_named(tree, tmp_path, caplog):
    garbage = tree / "train" / "Alpha" / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    truncated = tree / "train" / "Beta" / "truncated.jpg"
    whole = tmp_path / "whole.jpg"
    _noise_image(np.random.default_rng(3), size=(64, 64)).save(whole)
    truncated.write_bytes(whole.read_bytes()[:300])

    kwargs = dict(image_size=SIZE, cache_dir=tmp_path / "cache", progress=False, test_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="col775.resnet.data"):
        loaders = build_loaders(tree, **kwargs)
    info = loaders.info
    assert sorted(info.skipped) == sorted([str(garbage), str(truncated)])
    assert str(garbage) in caplog.text and str(truncated) in caplog.text
    assert info.split_sizes["train"] + info.split_sizes["test"] == 7
    assert info.to_dict()["num_skipped"] == 2

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="col775.resnet.data"):
        again = build_loaders(tree, **kwargs)
    assert sorted(again.info.skipped) == sorted(info.skipped), "a reused cache still reports them"
    assert str(garbage) in caplog.text


def test_carved_test_split_is_stratified_and_deterministic(tmp_path):
    counts = {"train": {"A": 20, "B": 30, "C": 10}, "val": {"A": 1, "B": 1, "C": 1}}
    root = _make_tree(tmp_path / "data", counts)
    kwargs = dict(image_size=8, cache_dir=tmp_path / "cache", progress=False, test_fraction=0.2)
    loaders = build_loaders(root, seed=5, **kwargs)
    train, test = loaders.train.dataset, loaders.test.dataset
    assert loaders.info.test_carved and loaders.info.test_fraction == 0.2
    assert loaders.info.split_sizes == {"train": 48, "val": 3, "test": 12}
    assert set(train.files).isdisjoint(test.files)
    assert len(set(train.files) | set(test.files)) == 60
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=3), [4, 6, 2])

    same = build_loaders(root, seed=5, **kwargs)
    assert same.test.dataset.files == test.files
    other = build_loaders(root, seed=6, **kwargs)
    assert other.test.dataset.files != test.files


def test_existing_test_folder_is_used(tmp_path):
    counts = {s: {"A": 2, "B": 2} for s in ("train", "val", "test")}
    root = _make_tree(tmp_path / "data", counts)
    loaders = build_loaders(root, image_size=8, cache_dir=tmp_path / "cache", progress=False)
    assert not loaders.info.test_carved and loaders.info.test_fraction is None
    assert loaders.info.split_sizes == {"train": 4, "val": 4, "test": 4}
    assert all("/test/" in f for f in loaders.test.dataset.files)


def test_images_in_class_subfolders_are_read_like_imagefolder(tmp_path):
    """Nested images belong to their class folder, in torchvision ImageFolder's order, and are counted."""
    counts = {s: {"Alpha": 2, "Beta": 2} for s in ("train", "val", "test")}
    root = _make_tree(tmp_path / "data", counts)
    rng = np.random.default_rng(1)
    nested = {"train": ["Alpha/extra/a.png", "Alpha/extra/deeper/b.jpg", "Beta/sub-2/c.png"], "val": ["Beta/x/d.png"]}
    for split, names in nested.items():
        for name in names:
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            _noise_image(rng).save(root / split / name)
    (root / "train" / "Alpha" / "extra" / "notes.txt").write_text("not an image")

    files, labels = data.scan_split(root / "train", ["Alpha", "Beta"])
    reference = ImageFolder(root / "train").samples
    assert [str(f) for f in files] == [path for path, _ in reference]
    assert labels == [label for _, label in reference]

    kwargs = dict(image_size=8, cache_dir=tmp_path / "cache", progress=False)
    for loaders in (build_loaders(root, **kwargs), build_loaders(root, **kwargs)):  # built, then reused
        info = loaders.info
        assert info.split_sizes == {s: len(ImageFolder(root / s)) for s in ("train", "val", "test")}
        assert info.from_subfolders == {"train": 3, "val": 1, "test": 0}
        assert info.to_dict()["from_subfolders"] == {"train": 3, "val": 1, "test": 0}


def test_training_folder_with_one_class_is_refused(tmp_path):
    root = _make_tree(tmp_path / "data", {s: {"Only": 3} for s in ("train", "val")})
    with pytest.raises(ValueError, match="at least two") as error:
        build_loaders(root, image_size=8, cache_dir=tmp_path / "cache", progress=False)
    assert str(root / "train") in str(error.value)


@pytest.mark.parametrize("val_classes", [["Alpha"], ["Alpha", "Beta", "Gamma"], ["Alpha", "Delta"]])
def test_mismatched_classes_name_the_folder(tmp_path, val_classes):
    counts = {"train": {"Alpha": 2, "Beta": 2}, "val": {name: 1 for name in val_classes}}
    root = _make_tree(tmp_path / "data", counts)
    with pytest.raises(ValueError, match="val"):
        build_loaders(root, image_size=8, cache_dir=tmp_path / "cache", progress=False)


def test_missing_and_empty_folders_are_explained(tmp_path):
    root = _make_tree(tmp_path / "data", {"train": {"A": 2, "B": 2}})
    with pytest.raises(FileNotFoundError, match=r"val.*expected layout"):
        build_loaders(root, image_size=8, cache_dir=tmp_path / "cache", progress=False)
    (root / "val" / "A").mkdir(parents=True)
    (root / "val" / "B").mkdir()
    (root / "val" / "B" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=r"no images in .*val.A"):
        build_loaders(root, image_size=8, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="augment"):
        build_loaders(root, augment="random", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="test_fraction"):
        build_loaders(root, test_fraction=1.5, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_loaders(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    (tmp_path / "bare" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no class folders"):
        build_loaders(tmp_path / "bare", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("augment", ["sample", "batch", "none"])
def test_loaders_yield_every_image_as_normalised_float(tree, tmp_path, augment):
    loaders = build_loaders(
        tree,
        image_size=SIZE,
        batch_size=3,
        augment=augment,
        test_fraction=0.3,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    for loader, expected in ((loaders.train, loaders.info.split_sizes["train"]), (loaders.val, 4)):
        seen = 0
        for images, labels in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, SIZE, SIZE)
            assert labels.dtype == torch.int64
            seen += len(labels)
        assert seen == expected  # drop_last is off
    val_images = torch.cat([images for images, _ in loaders.val])
    cache = loaders.val.dataset.cache
    raw = torch.from_numpy(np.array(cache.images)).permute(0, 3, 1, 2)
    torch.testing.assert_close(denormalize(val_images), raw.float() / 255, atol=1e-6, rtol=0)


def test_normalize_matches_torchvision(tree):
    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.MEAN, data.STD)]
    )
    torch.testing.assert_close(normalize(images), reference(images))


def test_dataset_uint8_output_and_batched_read(tree, tmp_path):
    cache = load_split(tree / "train", ["Alpha", "Beta"], SIZE, tmp_path / "cache", progress=False)
    dataset = CachedImageDataset(cache, indices=[5, 1, 3], as_float=False)
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE) and label == 1
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), cache.images[5])
    batch = dataset.__getitems__([2, 0, 1])
    for (got, got_label), index in zip(batch, [2, 0, 1]):
        want, want_label = dataset[index]
        torch.testing.assert_close(got, want)
        assert got_label == want_label


def test_worker_processes_reopen_the_memmap(tree, tmp_path):
    loaders = build_loaders(
        tree,
        image_size=SIZE,
        num_workers=1,
        augment="none",
        test_fraction=0.3,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    total = sum(len(labels) for _, labels in loaders.val)
    assert total == 4
    cache = loaders.val.dataset.cache
    assert cache.images.shape[0] > 0  # opened here
    assert pickle.loads(pickle.dumps(cache))._images._array is None, "pixels must not be pickled into workers"


def test_distributed_sampler_when_process_group_is_up(tree, tmp_path):
    import torch.distributed as dist

    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        loaders = build_loaders(
            tree, image_size=SIZE, test_fraction=0.3, cache_dir=tmp_path / "c", progress=False
        )
        assert len(loaders.samplers) == 1  # train only: evaluation loaders shard without padding
        assert isinstance(loaders.train.sampler, torch.utils.data.DistributedSampler)
        loaders.set_epoch(1)
        assert sum(len(labels) for _, labels in loaders.val) == 4
    finally:
        dist.destroy_process_group()


def test_uint8_batches_normalise_like_float_batches(tree, tmp_path):
    kwargs = dict(image_size=SIZE, augment="none", test_fraction=0.3, progress=False)
    raw = build_loaders(tree, as_float=False, cache_dir=tmp_path / "c", **kwargs)
    ready = build_loaders(tree, as_float=True, cache_dir=tmp_path / "c", **kwargs)
    for (images, labels), (floats, same_labels) in zip(raw.val, ready.val):
        assert images.dtype == torch.uint8 and floats.is_contiguous()
        torch.testing.assert_close(normalize(images), floats)
        torch.testing.assert_close(labels, same_labels)


def test_loader_datasets_index_to_what_their_batches_hold(tree, tmp_path):
    kwargs = dict(image_size=SIZE, test_fraction=0.3, cache_dir=tmp_path / "c", progress=False)
    ready = build_loaders(tree, **kwargs)
    image, label = ready.val.dataset[2]  # e.g. Grad-CAM reads single validation images
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(image, next(iter(ready.val))[0][2])
    raw = build_loaders(tree, as_float=False, **kwargs)
    assert raw.val.dataset[2][0].dtype == torch.uint8
