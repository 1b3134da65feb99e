"""Readers for object-discovery data: the course's folder layout and official CLEVRTex.

Every sample is an image as a float tensor [3, H, W] in [-1, 1] and, where masks exist, an
integer mask [H, W] (int64) with 0 = background and objects numbered 1..k densely. Files
are decoded once, at load, and kept in memory as uint8 arrays, because decoding PNGs every
epoch costs more than the model's forward pass at this size.

Layouts (`detect_layout`):

- ``course``: ``root/images/{train,val}/*.png`` with masks of the same file name under
  ``root/masks/{train,val}/``. A mask holds one flat RGB colour per object; colours become
  ids 1..k in sorted colour order and the background colour becomes 0. Which colour is the
  background is set by ``background``: ``"border"`` (the default) takes the most frequent
  colour on the image border, which holds for scenes whose objects stay inside the frame;
  an RGB tuple such as ``(0, 0, 0)`` names it outright. Single-channel masks (L, or P by
  palette index) are read as grey colours (v, v, v). Images of another size are resized
  (bilinear; masks nearest). With no ``images/val`` folder, ``val_fraction`` of train is
  held out. `col775.slots.scenes.write_scene_folder` writes this layout (background black).
- ``clevrtex``: official CLEVRTex, ``CLEVRTEX_<variant>_NNNNNN.png`` anywhere under
  ``root`` with ``CLEVRTEX_<variant>_NNNNNN_flat.png`` integer masks (0 = background)
  beside them. Images are centre-cropped to ``clevrtex_crop`` (192) and resized to
  ``image_size`` (bilinear; masks nearest), and ids are renumbered densely after the crop.
  Splits follow the official loader: in index order, images in [10%, 20%) are val and
  [20%, 100%) train (the first 10% is CLEVRTex's test split and is not loaded), unless
  ``clevrtex_official_split=False``, which holds out ``val_fraction`` of all images instead.

RGBA files are read as RGB (alpha dropped). Files that cannot be decoded are named in a
warning and skipped (`LoaderInfo.skipped`). An image without its mask is an error naming
both paths, unless ``require_masks=False`` and the split has no masks at all, in which case
samples carry no ``"mask"`` key.
"""

from __future__ import annotations

import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

Background = str | tuple[int, int, int]

_CLEVRTEX_NAME = re.compile(r"^CLEVRTEX_([A-Za-z]+)_(\d+)\.png$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class LoaderInfo:
    """What `build_loaders` found: counts, layout, skipped files and the most objects in one mask."""

    root: Path
    layout: str  # "course" or "clevrtex"
    image_size: int
    n_train: int
    n_val: int
    has_masks: bool
    max_objects: int  # most object ids in any loaded mask (0 without masks)
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded (their samples are left out)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


@dataclass
class SceneArrays:
    """Decoded split held in memory: images (N, H, W, 3) uint8, masks (N, H, W) uint8 or None."""

    images: np.ndarray
    masks: np.ndarray | None
    names: list[str]
    skipped: list[str]


class SceneDataset(Dataset):
    """Samples {"image": float [3, H, W] in [-1, 1], "mask": int64 [H, W] (if any), "index": int}."""

    def __init__(self, arrays: SceneArrays):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = torch.from_numpy(self.arrays.images[index]).permute(2, 0, 1).float() / 127.5 - 1.0
        sample: dict[str, torch.Tensor | int] = {"image": image, "index": index}
        if self.arrays.masks is not None:
            sample["mask"] = torch.from_numpy(self.arrays.masks[index]).long()
        return sample


# ----------------------------------------------------------------------------- decoding


class UnreadableFileError(OSError):
    """A file PIL cannot decode (corrupt, truncated, not an image); `path` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not later
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for corrupt or truncated files
        raise UnreadableFileError(path, str(error)) from error
    return image


def _read_rgb(path: Path) -> np.ndarray:
    return np.asarray(_open(path).convert("RGB"))


def _read_mask_keys(path: Path) -> np.ndarray:
    """One int64 per pixel identifying its colour: r << 16 | g << 8 | b; single-channel v reads as (v, v, v)."""
    image = _open(path)
    if image.mode in ("P", "L", "I", "I;16", "1", "LA", "PA"):
        values = np.asarray(image if image.mode in ("P", "L", "I", "I;16") else image.convert("L"))
        return values.astype(np.int64) * 0x010101
    rgb = np.asarray(image.convert("RGB")).astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _background_key(keys: np.ndarray, background: Background) -> int:
    if background == "border":
        border = np.concatenate([keys[0], keys[-1], keys[:, 0], keys[:, -1]])
        values, counts = np.unique(border, return_counts=True)
        return int(values[counts.argmax()])
    if isinstance(background, str):
        raise ValueError(f"background must be 'border' or an RGB tuple like (0, 0, 0), got {background!r}")
    r, g, b = (int(c) for c in background)
    return (r << 16) | (g << 8) | b


def _keys_to_ids(keys: np.ndarray, background_key: int, path: Path) -> np.ndarray:
    """Background colour -> 0, every other colour -> 1..k in sorted colour order (uint8)."""
    values, inverse = np.unique(keys, return_inverse=True)
    objects = values != background_key
    if objects.sum() > 255:
        raise ValueError(
            f"{path}: {objects.sum()} distinct mask colours; masks must use one flat colour per object "
            "(no anti-aliasing, no JPEG)"
        )
    ids_of_values = np.where(objects, np.cumsum(objects), 0).astype(np.uint8)
    return ids_of_values[inverse.reshape(keys.shape)]


def _renumber(ids: np.ndarray) -> np.ndarray:
    """Ids made dense (1..k in order), 0 kept as background; needed after a crop or resize drops objects."""
    present = np.unique(ids)
    lookup = np.zeros(256, dtype=np.uint8)
    objects = present[present != 0]
    lookup[objects] = np.arange(1, len(objects) + 1)
    return lookup[ids]


def _centre_crop(array: np.ndarray, crop: int) -> np.ndarray:
    h, w = array.shape[:2]
    side = min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top : top + side, left : left + side]


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _resize_mask(ids: np.ndarray, size: int) -> np.ndarray:
    if ids.shape == (size, size):
        return ids
    return np.asarray(Image.fromarray(ids).resize((size, size), Image.NEAREST))


@dataclass(frozen=True)
class _Reader:
    """How to turn one (image, mask) file pair into arrays for a layout."""

    size: int
    background: Background
    crop: int | None  # centre crop before resizing (CLEVRTex), None for none

    def __call__(self, image_path: Path, mask_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
        raw = _read_rgb(image_path)
        image = _resize_image(raw if self.crop is None else _centre_crop(raw, self.crop), self.size)
        if mask_path is None:
            return image, None
        keys = _read_mask_keys(mask_path)
        if keys.shape != raw.shape[:2]:
            raise ValueError(
                f"{mask_path} is {keys.shape[1]}x{keys.shape[0]} but its image {image_path.name} is "
                f"{raw.shape[1]}x{raw.shape[0]}; a mask must match its image"
            )
        ids = _keys_to_ids(keys, _background_key(keys, self.background), mask_path)
        if self.crop is not None:
            ids = _centre_crop(ids, self.crop)
        return image, _renumber(_resize_mask(ids, self.size))


def _decode_all(
    pairs: list[tuple[Path, Path | None]], reader: _Reader, workers: int
) -> SceneArrays:
    """Decode every pair (in threads; PIL releases the GIL while decoding), skipping unreadable files."""

    def decode(pair: tuple[Path, Path | None]) -> tuple[np.ndarray, np.ndarray | None] | UnreadableFileError:
        try:
            return reader(*pair)
        except UnreadableFileError as error:
            return error

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(decode, pairs))
    images, masks, names, skipped = [], [], [], []
    for (image_path, _), result in zip(pairs, results):
        if isinstance(result, UnreadableFileError):
            warnings.warn(f"skipping {image_path.name}: cannot read {result}", stacklevel=2)
            skipped.append(str(result.path))
            continue
        images.append(result[0])
        masks.append(result[1])
        names.append(image_path.name)
    size = reader.size
    has_masks = bool(pairs) and pairs[0][1] is not None
    return SceneArrays(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        masks=(np.stack(masks) if masks else np.zeros((0, size, size), np.uint8)) if has_masks else None,
        names=names,
        skipped=skipped,
    )


# ------------------------------------------------------------------------------ layouts


def detect_layout(root: str | Path) -> str:
    """'course' if root/images exists, 'clevrtex' if CLEVRTEX_*.png files lie under root; else an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if (root / "images").is_dir():
        return "course"
    if any(_CLEVRTEX_NAME.match(p.name) for p in root.rglob("CLEVRTEX_*.png")):
        return "clevrtex"
    raise FileNotFoundError(
        f"{root} holds neither images/{{train,val}}/ (course layout) nor CLEVRTEX_*_NNNNNN.png files; "
        "write a synthetic set with `col775 slots make-scenes --out DIR`"
    )


def _with_masks(
    images: list[Path], mask_for: dict[Path, Path], require_masks: bool, where: str
) -> list[tuple[Path, Path | None]]:
    found = [image for image in images if mask_for[image].is_file()]
    if not require_masks and not found:
        return [(image, None) for image in images]
    for image in images:
        if not mask_for[image].is_file():
            raise FileNotFoundError(
                f"no mask for {image}: expected {mask_for[image]}"
                + ("" if require_masks else f" ({len(found)} other images in {where} have masks)")
            )
    return [(image, mask_for[image]) for image in images]


def _hold_out(items: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random `val_fraction` of `items` as val, the rest as train (both in original order)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(items))
    val = set(order[: round(len(items) * val_fraction)].tolist())
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


def _course_pairs(
    root: Path, require_masks: bool, val_fraction: float, seed: int
) -> dict[str, list[tuple[Path, Path | None]]]:
    splits = {}
    for split in ("train", "val"):
        folder = root / "images" / split
        if not folder.is_dir():
            continue
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        mask_for = {image: root / "masks" / split / (image.stem + ".png") for image in images}
        splits[split] = _with_masks(images, mask_for, require_masks, f"masks/{split}")
    if "train" not in splits:
        raise FileNotFoundError(f"{root / 'images' / 'train'} is missing; the course layout is images/{{train,val}}/")
    if "val" not in splits:
        splits["train"], splits["val"] = _hold_out(splits["train"], val_fraction, seed)
    return splits


def _clevrtex_pairs(
    root: Path, require_masks: bool, val_fraction: float, seed: int, official_split: bool
) -> dict[str, list[tuple[Path, Path | None]]]:
    found = []
    for path in root.rglob("CLEVRTEX_*.png"):
        match = _CLEVRTEX_NAME.match(path.name)
        if match:
            found.append(((match.group(1), int(match.group(2))), path))
    images = [path for _, path in sorted(found)]
    mask_for = {image: image.with_name(image.stem + "_flat.png") for image in images}
    pairs = _with_masks(images, mask_for, require_masks, str(root))
    if not official_split:
        train, val = _hold_out(pairs, val_fraction, seed)
        return {"train": train, "val": val}
    n = len(pairs)
    return {"val": pairs[int(0.1 * n) : int(0.2 * n)], "train": pairs[int(0.2 * n) :]}


def load_dataset(
    root: str | Path,
    image_size: int = 128,
    background: Background = "border",
    require_masks: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    clevrtex_crop: int = 192,
    clevrtex_official_split: bool = True,
    decode_workers: int = 4,
) -> tuple[SceneDataset, SceneDataset, LoaderInfo]:
    """Decode the train and val splits under `root` into memory (see the module docstring for layouts).

    `max_train` / `max_val` keep the first N files of a split (in name order) for quick runs.
    """
    root = Path(root)
    layout = detect_layout(root)
    if layout == "course":
        pairs = _course_pairs(root, require_masks, val_fraction, seed)
        reader = _Reader(image_size, background, crop=None)
    else:
        pairs = _clevrtex_pairs(root, require_masks, val_fraction, seed, clevrtex_official_split)
        reader = _Reader(image_size, (0, 0, 0), crop=clevrtex_crop)
    limits = {"train": max_train, "val": max_val}
    arrays = {split: _decode_all(pairs[split][: limits[split]], reader, decode_workers) for split in ("train", "val")}
    if len(arrays["train"].images) == 0:
        raise FileNotFoundError(f"no readable training images under {root} (layout {layout})")
    has_masks = arrays["train"].masks is not None
    if has_masks != (arrays["val"].masks is not None) and len(arrays["val"].images):
        raise FileNotFoundError(f"{root}: one split has masks and the other has none; give masks to both or neither")
    max_objects = max((int(a.masks.max()) for a in arrays.values() if a.masks is not None and a.masks.size), default=0)
    info = LoaderInfo(
        root=root, layout=layout, image_size=image_size,
        n_train=len(arrays["train"].images), n_val=len(arrays["val"].images),
        has_masks=has_masks, max_objects=max_objects,
        skipped=arrays["train"].skipped + arrays["val"].skipped,
    )
    return SceneDataset(arrays["train"]), SceneDataset(arrays["val"]), info


def build_loaders(
    root: str | Path,
    batch_size: int,
    image_size: int = 128,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    **load_options,
) -> tuple[DataLoader, DataLoader, LoaderInfo]:
    """Train (shuffled, seeded) and val (in order) DataLoaders over `load_dataset(root, ...)`, plus its info.

    `load_options` go to `load_dataset` (background, require_masks, val_fraction, max_train, ...).
    """
    train, val, info = load_dataset(root, image_size=image_size, seed=seed, **load_options)
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0)
    train_loader = DataLoader(train, shuffle=True, generator=generator, drop_last=drop_last, **common)
    val_loader = DataLoader(val, shuffle=False, **common)
    return train_loader, val_loader, info
