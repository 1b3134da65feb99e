"""The synthetic stand-in for Birds_25: deterministic, balanced, named, readable by the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from col775.resnet.data import build_loaders
from col775.resnet.synthetic import (
    BIRDS25_CLASSES,
    PALETTES,
    SHAPES,
    TEXTURES,
    class_specs,
    generate_image_folder,
    render_image,
)

SMALL = dict(num_classes=5, train_per_class=3, val_per_class=2, size=32)


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {
        str(path.relative_to(root)): np.asarray(Image.open(path))
        for path in sorted(root.rglob("*.png"))
    }


def test_same_seed_same_images_other_seed_different(tmp_path):
    a = generate_image_folder(tmp_path / "a", seed=3, image_format="png", **SMALL)
    b = generate_image_folder(tmp_path / "b", seed=3, image_format="png", **SMALL)
    c = generate_image_folder(tmp_path / "c", seed=4, image_format="png", **SMALL)
    first, second, third = _pixels(a), _pixels(b), _pixels(c)
    assert first.keys() == second.keys() == third.keys() and len(first) == 25
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert any(not np.array_equal(first[name], third[name]) for name in first)


def test_splits_are_class_balanced_and_images_sized(tmp_path):
    root = generate_image_folder(tmp_path / "d", test_per_class=1, **SMALL)
    specs = class_specs(5)
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(spec.name for spec in specs)
        for folder in folders:
            files = list((root / split / folder).glob("*.jpg"))
            assert len(files) == count
            with Image.open(files[0]) as img:
                assert img.size == (32, 32) and img.mode == "RGB"


def test_no_test_split_unless_asked(tmp_path):
    root = generate_image_folder(tmp_path / "e", **SMALL)
    assert not (root / "test").exists()


def test_images_within_a_class_differ(tmp_path):
    spec = class_specs(25)[7]
    images = [render_image(spec, 48, np.random.default_rng(k)) for k in range(4)]
    for i in range(4):
        assert images[i].shape == (48, 48, 3) and images[i].dtype == np.uint8
        for j in range(i):
            assert np.abs(images[i].astype(int) - images[j]).mean() > 10


def test_default_classes_are_distinct_shape_texture_names():
    specs = class_specs(25)
    names = [spec.name for spec in specs]
    assert len(set(names)) == 25
    assert all(name == f"{s.shape}-{s.texture}" for name, s in zip(names, specs))
    assert {s.shape for s in specs} == set(SHAPES[:5])
    assert {s.texture for s in specs} == set(TEXTURES)
    palettes = [s.palette for s in specs]
    assert set(palettes) == set(PALETTES)
    assert max(palettes.count(p) for p in PALETTES) == 5, "colour alone must not give the class"
    many = class_specs(60)
    assert len({s.name for s in many}) == 60


def test_class_names_can_be_the_bird_names(tmp_path):
    root = generate_image_folder(
        tmp_path / "birds", num_classes=25, train_per_class=1, val_per_class=1, size=16,
        class_names=BIRDS25_CLASSES,
    )  # fmt: skip
    assert sorted(p.name for p in (root / "val").iterdir()) == sorted(BIRDS25_CLASSES)
    for bad in (["A"] * 5, ["A", "B", "C", "D"], ["A", "B", "C", "D", "../E"]):
        with pytest.raises(ValueError):
            class_specs(5, bad)


def test_existing_tree_is_reused_and_foreign_folder_refused(tmp_path):
    root = generate_image_folder(tmp_path / "f", **SMALL)
    marker = root / "train" / class_specs(5)[0].name / "00000.jpg"
    mtime = marker.stat().st_mtime_ns
    assert generate_image_folder(tmp_path / "f", **SMALL) == root
    assert marker.stat().st_mtime_ns == mtime, "an identical request must not rewrite the files"
    with pytest.raises(FileExistsError):
        generate_image_folder(tmp_path / "f", seed=1, **SMALL)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_image_folder(tmp_path / "g", **SMALL)
    assert not list(tmp_path.glob(".tmp-*"))


def test_loader_reads_the_generated_tree(tmp_path):
    root = generate_image_folder(
        tmp_path / "h", num_classes=4, train_per_class=10, val_per_class=2, size=24
    )
    loaders = build_loaders(root, image_size=24, cache_dir=tmp_path / "cache", progress=False)
    info = loaders.info
    assert info.classes == sorted(spec.name for spec in class_specs(4))
    assert info.test_carved and info.split_sizes == {"train": 36, "val": 8, "test": 4}
    assert info.skipped == []
