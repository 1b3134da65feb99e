"""The scene generator: determinism, exact masks, occlusion, and colour that does not give objects away."""

import argparse
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from col775.slots import cli
from col775.slots.scenes import (
    MASK_PALETTE,
    Camera,
    SceneObject,
    draw_scene,
    mask_to_colors,
    render_scene,
    sample_scene,
    write_scene_folder,
)

SIZE = 64


def _pixel_centres(size: int) -> np.ndarray:
    """Screen coordinates (size*size, 2) of pixel centres, x right and y up, row-major like the mask."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    xs, ys = np.meshgrid(c, -c)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _silhouette(camera: Camera, obj: SceneObject, size: int) -> np.ndarray:
    """Pixels whose centre lies inside the object's outline: the convex hull of its projected
    corners or rim points, computed without any ray casting."""
    if obj.shape == "cube":
        r = obj.size
        ca, sa = math.cos(obj.angle), math.sin(obj.angle)
        points = [
            [obj.x + ca * dx + sa * dz, y, obj.z - sa * dx + ca * dz]
            for dx in (-r, r) for dz in (-r, r) for y in (0.0, 2 * r)
        ]
    elif obj.shape == "cylinder":
        a = np.linspace(0, 2 * np.pi, 720, endpoint=False)
        ring = np.stack([obj.x + obj.size * np.cos(a), np.zeros_like(a), obj.z + obj.size * np.sin(a)], axis=1)
        points = np.concatenate([ring, ring + [0.0, obj.height, 0.0]])
    else:
        raise ValueError(obj.shape)
    hull = ConvexHull(camera.project(np.asarray(points, dtype=float)))
    centres = np.concatenate([_pixel_centres(size), np.ones((size * size, 1))], axis=1)
    return np.all(centres @ hull.equations.T <= 0.0, axis=1).reshape(size, size)  # inside every edge


def _sphere_disc(camera: Camera, obj: SceneObject, size: int) -> np.ndarray:
    """Pixels whose viewing ray passes within the radius of the sphere's centre (point-to-line distance)."""
    origin, forward, right, up = camera.basis()
    half = math.tan(camera.fov / 2)
    centres = _pixel_centres(size)
    dirs = forward + centres[:, :1] * half * right + centres[:, 1:] * half * up
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    to_centre = np.array([obj.x, obj.size, obj.z]) - origin
    distance = np.linalg.norm(np.cross(dirs, to_centre), axis=1)
    return (distance < obj.size).reshape(size, size)


def test_same_seed_same_scene_and_different_seeds_differ():
    a_image, a_mask = render_scene(11, size=SIZE)
    b_image, b_mask = render_scene(11, size=SIZE)
    c_image, _ = render_scene(12, size=SIZE)
    np.testing.assert_array_equal(a_image, b_image)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_image, c_image)
    assert a_image.dtype == np.uint8 and a_image.shape == (SIZE, SIZE, 3)
    assert a_mask.dtype == np.uint8 and a_mask.shape == (SIZE, SIZE)


@pytest.mark.parametrize("seed", range(6))
def test_every_object_is_visible_with_its_own_dense_id(seed):
    scene = sample_scene(seed, size=SIZE, min_objects=3, max_objects=10)
    image, mask = draw_scene(scene, SIZE)
    np.testing.assert_array_equal(image, render_scene(seed, SIZE, 3, 10)[0])  # render_scene = sample + draw
    assert 3 <= len(scene.objects) <= 10
    assert set(np.unique(mask).tolist()) == set(range(len(scene.objects) + 1))
    counts = np.bincount(mask.ravel(), minlength=len(scene.objects) + 1)
    assert counts[0] > 0.3 * mask.size  # floor and backdrop are background
    for k in range(1, len(scene.objects) + 1):
        components, _ = ndimage.label(mask == k)
        assert np.bincount(components.ravel())[1:].max() >= 0.5 * counts[k]  # one main piece per object


@pytest.mark.parametrize("seed", range(4))
def test_mask_is_exactly_the_visible_part_of_each_object(seed):
    scene = sample_scene(seed, size=SIZE, min_objects=2, max_objects=6)
    _, mask = draw_scene(scene, SIZE)
    alone = [draw_scene(replace(scene, objects=[obj]), SIZE)[1] == 1 for obj in scene.objects]
    np.testing.assert_array_equal(mask > 0, np.any(alone, axis=0))  # covered exactly where some object is
    for k, covered in enumerate(alone, start=1):
        assert np.all(covered[mask == k])  # an id only where its object is


@pytest.mark.parametrize("shape", ["sphere", "cube", "cylinder"])
def test_single_object_mask_matches_its_projected_outline(shape):
    scene = sample_scene(3, size=SIZE, min_objects=1, max_objects=1)
    camera = scene.camera
    obj = replace(scene.objects[0], shape=shape, x=0.3, z=camera.height / math.tan(camera.pitch) + 0.5,
                  size=1.2, height=2.0, angle=0.4)
    _, mask = draw_scene(replace(scene, objects=[obj]), SIZE)
    expected = _sphere_disc(camera, obj, SIZE) if shape == "sphere" else _silhouette(camera, obj, SIZE)
    assert expected.sum() > 100
    # Exact except where a pixel centre grazes the outline (the cylinder's outline is sampled at 720 points).
    assert np.sum((mask == 1) != expected) <= (2 if shape == "cylinder" else 0)


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_object_hides_the_one_behind_it_whatever_the_list_order(near_first):
    scene = sample_scene(5, size=SIZE, min_objects=1, max_objects=1)
    camera = scene.camera
    z_centre = camera.height / math.tan(camera.pitch)  # floor point at the image centre
    near = replace(scene.objects[0], shape="sphere", x=0.0, z=z_centre - 1.5, size=1.2, height=2.4)
    far = replace(scene.objects[0], shape="cube", x=0.6, z=z_centre + 1.5, size=1.5, height=3.0, angle=0.3)
    objects = [near, far] if near_first else [far, near]
    near_id, far_id = (1, 2) if near_first else (2, 1)
    _, mask = draw_scene(replace(scene, objects=objects), SIZE)
    near_alone = draw_scene(replace(scene, objects=[near]), SIZE)[1] == 1
    far_alone = draw_scene(replace(scene, objects=[far]), SIZE)[1] == 1
    overlap = near_alone & far_alone
    assert overlap.sum() > 20
    assert np.all(mask[overlap] == near_id)
    assert np.all(mask[far_alone & ~near_alone] == far_id)  # the uncovered part of the far cube still shows


def test_colour_alone_does_not_separate_objects():
    aris, shared = [], []
    for seed in range(8):
        image, mask = render_scene(seed, size=SIZE, min_objects=3)
        pixels, labels = image.reshape(-1, 3).astype(float), mask.ravel()
        with threadpool_limits(1):  # OpenMP threads crawl on a busy machine
            clusters = KMeans(len(np.unique(labels)), n_init=2, random_state=0).fit_predict(pixels)
        aris.append(adjusted_rand_score(labels, clusters))
        quantised = (image // 32).reshape(-1, 3) @ np.array([64, 8, 1])
        background_colours = np.unique(quantised[labels == 0])
        shared.append(np.isin(quantised[labels > 0], background_colours).mean())
    assert np.mean(aris) < 0.45  # k-means on RGB, one cluster per object, finds the objects poorly
    assert np.mean(shared) > 0.25  # a good share of object pixels have a colour the floor also has


@pytest.mark.parametrize("size", [32, 64])
def test_simple_style_is_solid_colours_on_one_plain_background(size):
    aris = []
    for seed in range(6):
        image, mask = render_scene(seed, size=size, min_objects=2, max_objects=6, style="simple")
        pixels, labels = image.reshape(-1, 3).astype(float), mask.ravel()
        assert 2 <= labels.max() <= 6 and set(np.unique(labels)) == set(range(labels.max() + 1))
        assert len(np.unique(pixels[labels == 0], axis=0)) == 1  # one plain background colour
        chroma = pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1.0)
        for k in range(1, labels.max() + 1):  # one colour per object, only its brightness shaded
            assert np.abs(chroma[labels == k] - chroma[labels == k].mean(axis=0)).max() < 0.06
        with threadpool_limits(1):
            clusters = KMeans(labels.max() + 1, n_init=2, random_state=0).fit_predict(chroma)
        aris.append(adjusted_rand_score(labels, clusters))
    assert np.mean(aris) > 0.8  # unlike the textured style, colour alone finds the objects


def test_scene_style_picks_the_generator_and_is_recorded(tmp_path):
    write_scene_folder(tmp_path, n_train=2, n_val=1, size=32, seed=4, min_objects=2, max_objects=3, style="simple")
    assert json.loads((tmp_path / "scenes.json").read_text())["style"] == "simple"
    image = np.asarray(Image.open(tmp_path / "images" / "val" / "000000.png"))
    np.testing.assert_array_equal(image, render_scene(np.random.default_rng([4, 1, 0]), 32, 2, 3, "simple")[0])
    assert not np.array_equal(image, render_scene(np.random.default_rng([4, 1, 0]), 32, 2, 3)[0])
    with pytest.raises(ValueError, match="scene_style"):
        render_scene(0, style="flat")


def test_mask_palette_is_distinct_with_black_background():
    assert MASK_PALETTE.shape == (256, 3)
    assert tuple(MASK_PALETTE[0]) == (0, 0, 0)
    assert len({tuple(c) for c in MASK_PALETTE.tolist()}) == 256
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(mask_to_colors(mask)[1, 1], MASK_PALETTE[255])


def test_write_scene_folder_layout_and_determinism(tmp_path):
    write_scene_folder(tmp_path / "a", n_train=3, n_val=2, size=32, seed=4, max_objects=4)
    write_scene_folder(tmp_path / "b", n_train=3, n_val=2, size=32, seed=4, max_objects=4, workers=2)
    for split, n in (("train", 3), ("val", 2)):
        names = sorted(p.name for p in (tmp_path / "a" / "images" / split).iterdir())
        assert names == [f"{i:06d}.png" for i in range(n)]
        assert sorted(p.name for p in (tmp_path / "a" / "masks" / split).iterdir()) == names
        for name in names:
            for kind in ("images", "masks"):
                a = np.asarray(Image.open(tmp_path / "a" / kind / split / name))
                b = np.asarray(Image.open(tmp_path / "b" / kind / split / name))
                np.testing.assert_array_equal(a, b)  # the same files whatever the number of workers
    settings = json.loads((tmp_path / "a" / "scenes.json").read_text())
    assert settings["n_train"] == 3 and settings["seed"] == 4


def test_make_scenes_command_writes_the_split(tmp_path):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    command = ["slots", "make-scenes", "--n", "5", "--size", "32", "--out", str(tmp_path)]
    args = parser.parse_args(command + ["--val-fraction", "0.4"])
    assert args.handler(args) == 0
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3
    assert len(list((tmp_path / "masks" / "val").iterdir())) == 2
    simple = parser.parse_args(["slots", "make-scenes", "--n", "2", "--size", "32", "--out", str(tmp_path / "s"),
                                "--scene-style", "simple"])  # fmt: skip
    assert simple.handler(simple) == 0 and json.loads((tmp_path / "s" / "scenes.json").read_text())["style"] == "simple"
    with pytest.raises(ValueError, match="val-fraction"):
        args.handler(parser.parse_args(command + ["--val-fraction", "1.5"]))


def test_bad_object_counts_are_rejected():
    with pytest.raises(ValueError, match="min_objects"):
        render_scene(0, min_objects=5, max_objects=2)
