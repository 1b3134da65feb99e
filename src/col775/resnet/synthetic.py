"""A synthetic stand-in for Birds_25: an ImageFolder tree of shapes that a CNN can learn.

Each class is one (shape, texture, palette) combination, e.g. ``Star-Stripes``. Every image puts
the class object at a random position, scale and rotation over a random background (gradient,
smooth noise or clutter of small shapes), together with a smaller distractor object of another
class's shape and texture. Colour alone narrows a class down to one of five, and the object's
pose varies, so a linear classifier on raw pixels does far worse than a small CNN.

Generation is deterministic: image ``k`` of class ``c`` in a split depends only on
(seed, split, c, k). Only numpy and PIL are used.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("Circle", "Square", "Triangle", "Star", "Ring", "Cross", "Diamond", "Hexagon")
TEXTURES = ("Plain", "Stripes", "Dots", "Checks", "Noise")
# Five palettes, each a pair of hues (primary, secondary) in [0, 1).
PALETTES = {
    "Red": (0.00, 0.12),
    "Green": (0.33, 0.20),
    "Blue": (0.60, 0.50),
    "Violet": (0.78, 0.92),
    "Mono": (None, None),  # black and white
}
# The class folder names of the course's Birds_25 data, sorted: pass them as ``class_names`` to get
# a synthetic set whose classes carry the bird names (the Grad-CAM part names seven of them).
BIRDS25_CLASSES = (
    "Asian-Green-Bee-Eater", "Brown-Headed-Barbet", "Cattle-Egret", "Common-Kingfisher",
    "Common-Myna", "Common-Rosefinch", "Common-Tailorbird", "Coppersmith-Barbet",
    "Forest-Wagtail", "Gray-Wagtail", "Hoopoe", "House-Crow", "Indian-Grey-Hornbill",
    "Indian-Peacock", "Indian-Pitta", "Indian-Roller", "Jungle-Babbler", "Northern-Lapwing",
    "Red-Wattled-Lapwing", "Ruddy-Shelduck", "Rufous-Treepie", "Sarus-Crane",
    "White-Breasted-Kingfisher", "White-Breasted-Waterhen", "White-Wagtail",
)  # fmt: skip
SPLITS = ("train", "val", "test")
_MANIFEST = "synthetic.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")


@dataclass(frozen=True)
class ClassSpec:
    """What the images of one class show; ``name`` is its folder name."""

    name: str
    shape: str
    texture: str
    palette: str


def class_specs(num_classes: int = 25, class_names: Sequence[str] | None = None) -> list[ClassSpec]:
    """The classes in generation order (the loader sorts them by folder name).

    The first 25 classes are the 5 x 5 combinations of the first five shapes and the textures,
    then the remaining shapes follow; each gets a palette chosen so that every palette is shared
    by several classes, and every shape and texture appears in several palettes. Default names
    are ``Shape-Texture`` (plus ``-Palette`` past 40 classes); ``class_names`` replaces them
    one for one.
    """
    limit = len(SHAPES) * len(TEXTURES) * len(PALETTES)
    if not 2 <= num_classes <= limit:
        raise ValueError(f"num_classes must be between 2 and {limit}, got {num_classes}")
    combos = [(s, t) for s in range(5) for t in range(5)]
    combos += [(s, t) for s in range(5, len(SHAPES)) for t in range(len(TEXTURES))]
    palettes = list(PALETTES)
    specs = []
    for i in range(num_classes):
        shape, texture = combos[i % len(combos)]
        palette = palettes[(shape + 2 * texture + i // len(combos)) % len(palettes)]
        name = f"{SHAPES[shape]}-{TEXTURES[texture]}"
        if num_classes > len(combos):
            name += f"-{palette}"
        specs.append(ClassSpec(name, SHAPES[shape], TEXTURES[texture], palette))
    if class_names is not None:
        names = list(class_names)
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"class_names needs {num_classes} distinct names, got {len(names)}")
        bad = [n for n in names if not _SAFE_NAME.match(n)]
        if bad:
            raise ValueError(
                f"class names must be plain folder names (letters, digits, ' _.-'): {bad}"
            )
        specs = [ClassSpec(n, s.shape, s.texture, s.palette) for n, s in zip(names, specs)]
    return specs


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (ys, xs), each (size, size)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def _colour(rng: np.random.Generator, hue: float | None) -> np.ndarray:
    """An RGB float colour in [0, 255]: near ``hue`` if given, else a mono palette grey."""
    if hue is None:
        grey = rng.choice([rng.uniform(0, 50), rng.uniform(205, 255)])
        return np.full(3, grey, np.float32)
    h = (hue + rng.uniform(-0.04, 0.04)) % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return np.asarray(rgb, np.float32) * 255


def _class_colours(rng: np.random.Generator, palette: str) -> tuple[np.ndarray, np.ndarray]:
    primary, secondary = PALETTES[palette]
    first = _colour(rng, primary)
    second = _colour(rng, secondary)
    if primary is None:  # mono: one dark, one light
        second = 255 - first
    return first, second


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.8), rng.uniform(0.2, 1.0))
    return np.asarray(rgb, np.float32) * 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (size, size): coarse noise, bilinearly upsampled."""
    coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255


def _texture(rng: np.random.Generator, texture: str, colours, size: int) -> np.ndarray:
    """A (size, size, 3) float fill in the two ``colours`` with the given pattern."""
    ys, xs = _grid(size)
    angle = rng.uniform(0, np.pi)
    u = xs * np.cos(angle) + ys * np.sin(angle)  # rotated coordinates
    v = -xs * np.sin(angle) + ys * np.cos(angle)
    period = rng.uniform(0.05, 0.09)
    if texture == "Plain":
        mix = 0.25 * u  # a gentle shading towards the second colour
    elif texture == "Stripes":
        mix = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif texture == "Dots":
        fu = (u / period) % 1.0 - 0.5
        fv = (v / period) % 1.0 - 0.5
        mix = (fu**2 + fv**2 < 0.09).astype(np.float32)
    elif texture == "Checks":
        mix = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif texture == "Noise":
        mix = (_smooth_noise(rng, size, int(rng.integers(6, 10))) > 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}; choose from {TEXTURES}")
    first, second = colours
    return first * (1 - mix[..., None]) + second * mix[..., None]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of radius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if shape == "Square":
        radii, turns = [r] * 4, np.arange(4) / 4 + 1 / 8
    elif shape == "Triangle":
        radii, turns = [r] * 3, np.arange(3) / 3
    elif shape == "Hexagon":
        radii, turns = [r] * 6, np.arange(6) / 6
    elif shape == "Diamond":
        radii, turns = [r, 0.55 * r, r, 0.55 * r], np.arange(4) / 4
    elif shape == "Star":
        radii, turns = [r, 0.42 * r] * 5, np.arange(10) / 10
    elif shape == "Cross":
        arm = 0.36  # half-width of an arm, as a fraction of r
        corner = np.hypot(1, arm)
        edge = np.hypot(arm, arm)
        radii, turns = [], []
        for k in range(4):
            base = k / 4
            offset = np.arctan2(arm, 1) / (2 * np.pi)
            radii += [r * corner, r * corner, r * edge]
            turns += [base - offset, base + offset, base + 1 / 8]
        turns = np.asarray(turns)
    else:
        raise ValueError(f"unknown polygon shape {shape!r}")
    theta = 2 * np.pi * np.asarray(turns) + angle
    return [(cx + rad * np.cos(t), cy + rad * np.sin(t)) for rad, t in zip(radii, theta)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, angle, fill) -> None:
    """Draw one filled shape of radius ``r`` centred at (cx, cy) with PIL."""
    if shape == "Circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "Ring":  # a band 45% of the radius wide
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(0.45 * r)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """A (size, size) float mask of one shape, drawn at 2x and averaged down for smooth edges."""
    canvas = Image.new("L", (size * 2, size * 2), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, cx * 2, cy * 2, r * 2, angle, 255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float background: a gradient, smooth colour noise or shape clutter."""
    ys, xs = _grid(size)
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle), 0, 1)
        return _random_colour(rng) * (1 - t[..., None]) + _random_colour(rng) * t[..., None]
    if kind == 1:
        fields = [_smooth_noise(rng, size, int(rng.integers(3, 7))) for _ in range(3)]
        low, high = _random_colour(rng), _random_colour(rng)
        return low + (high - low) * np.stack(fields, axis=-1)
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in _random_colour(rng)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 9))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        cx, cy = rng.uniform(0, size, 2)
        radius, angle = rng.uniform(0.04, 0.1) * size, rng.uniform(0, 2 * np.pi)
        _draw_shape(draw, shape, cx, cy, radius, angle, tuple(int(c) for c in _random_colour(rng)))
    return np.asarray(canvas, np.float32)


def _paste(rng, image, spec_shape, texture, colours, radius_range) -> None:
    """Draw one textured, rotated shape at a random place into ``image`` (in place)."""
    size = image.shape[0]
    r = rng.uniform(*radius_range) * size
    cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
    mask = _mask(spec_shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
    fill = _texture(rng, texture, colours, size)
    image += (fill - image) * mask[..., None]


def render_image(spec: ClassSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``spec`` drawn with ``rng``."""
    image = _background(rng, size)
    distractor_shape = SHAPES[rng.integers(len(SHAPES))]
    distractor_texture = TEXTURES[rng.integers(len(TEXTURES))]
    distractor_colours = (_random_colour(rng), _random_colour(rng))
    _paste(rng, image, distractor_shape, distractor_texture, distractor_colours, (0.09, 0.17))
    _paste(rng, image, spec.shape, spec.texture, _class_colours(rng, spec.palette), (0.18, 0.3))
    image *= rng.uniform(0.8, 1.15)  # global brightness
    image += rng.normal(0, 6, image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).round().astype(np.uint8)


def generate_image_folder(
    root: str | os.PathLike,
    num_classes: int = 25,
    train_per_class: int = 40,
    val_per_class: int = 10,
    test_per_class: int = 0,
    size: int = 256,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    image_format: str = "jpg",
) -> Path:
    """Write a synthetic ImageFolder tree ``root/{train,val[,test]}/<Class>/*``; return ``root``.

    ``test_per_class`` = 0 writes no test split (the loader then carves one from train).
    ``image_format`` is "jpg" (quality 92, like the bird photos) or "png" (lossless). When
    ``root`` already holds a tree made with the same arguments it is reused as is; any other
    existing ``root`` is refused. The tree is written to a temporary folder and renamed into
    place, so an interrupted run leaves nothing half-made.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if min(train_per_class, val_per_class) < 1 or test_per_class < 0 or size < 16:
        raise ValueError(
            "need train_per_class >= 1, val_per_class >= 1, test_per_class >= 0 and size >= 16"
        )
    specs = class_specs(num_classes, class_names)
    root = Path(root).expanduser()
    settings = {
        "num_classes": num_classes,
        "per_class": {"train": train_per_class, "val": val_per_class, "test": test_per_class},
        "size": size,
        "seed": seed,
        "image_format": image_format,
        "classes": [vars(spec) for spec in specs],
    }
    manifest = root / _MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == settings:
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a synthetic set made with these settings; "
            "choose an empty or new folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".tmp-{root.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split_id, split in enumerate(SPLITS):
            for class_id, spec in enumerate(specs):
                count = settings["per_class"][split]
                if count == 0:
                    continue
                folder = tmp / split / spec.name
                folder.mkdir(parents=True)
                for k in range(count):
                    rng = np.random.default_rng([seed, split_id, class_id, k])
                    image = Image.fromarray(render_image(spec, size, rng))
                    if image_format == "jpg":
                        image.save(folder / f"{k:05d}.jpg", quality=92)
                    else:
                        image.save(folder / f"{k:05d}.png")
        (tmp / _MANIFEST).write_text(json.dumps(settings, indent=1))
        if root.exists():
            root.rmdir()  # empty, checked above
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
