"""Readers for object-discovery data: the course's folder layout and official CLEVRTex.

Every sample is an image as a float tensor [3, H, W] in [-1, 1] and, where masks exist, an
integer mask [H, W] (int64) with 0 = background and objects numbered 1..k densely. Files
are decoded once into a uint8 disk cache (`col775.slots.scene_cache`: the crop, the resize,
the mask colours) and read back as memmaps, because decoding PNGs every epoch, or in every
run of a study, costs more than the model's forward pass at this size.

Layouts (`detect_layout`):

- ``course``: ``root/images/{train,val}/*.png`` with one mask per image under
  ``root/masks/{train,val}/``, found by the image's name: ``<name>_flat.png`` (CLEVRTex's
  palette masks) or ``<name>.png`` (e.g. flat RGB colours). When some image has neither,
  the masks are paired with the images in sorted file order, with a warning, if there are
  as many and no mask named after one image would go to another (`LoaderInfo.mask_pairing`
  says which rule paired each split). Which mask colour
  is the background is set by ``background``: ``"border"`` (the default) takes the most
  frequent colour on the mask's border, which holds for scenes whose objects stay inside the
  frame; an RGB tuple such as ``(0, 0, 0)`` names it outright. With no ``images/val``
  folder, ``val_fraction`` of train is held out. `col775.slots.scenes.write_scene_folder`
  writes this layout (background black).
- ``clevrtex``: official CLEVRTex, ``CLEVRTEX_<variant>_NNNNNN.png`` anywhere under
  ``root`` with ``CLEVRTEX_<variant>_NNNNNN_flat.png`` integer masks (0 = background)
  beside them. Splits follow the official loader: in index order, images in [10%, 20%) are
  val and [20%, 100%) train (the first 10% is CLEVRTex's test split and is not loaded),
  unless ``clevrtex_official_split=False``, which holds out ``val_fraction`` of all images.

Both layouts take the same ``crop`` (`scene_cache.crop_box`): ``"auto"`` is CLEVRTex's
standard preprocessing, the centre 192x192 of a 320x240 frame resized to ``image_size``
(square frames, such as the generated scenes, are kept whole); ``"none"`` resizes the whole
frame; ``"left,top,right,bottom"`` takes that box. `LoaderInfo.crop` states what was done.

Files that cannot be decoded are named in a warning and skipped (`LoaderInfo.skipped`). A
folder without masks is an error naming the expected mask files, unless
``require_masks=False`` (`--no-masks`) and the split has no masks at all, in which case
samples carry no ``"mask"`` key.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from col775.slots.scene_cache import Background, Pair, SceneArrays, SceneReader, check_crop, describe_crop, load_scenes

DEFAULT_CACHE_ROOT = Path("~/.cache/col775/scene-arrays")

_CLEVRTEX_NAME = re.compile(r"^CLEVRTEX_([A-Za-z]+)_(\d+)\.png$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class LoaderInfo:
    """What `load_dataset` found: counts, layout, crop, how masks were paired, skipped files, most objects."""

    root: Path
    layout: str  # "course" or "clevrtex"
    image_size: int
    n_train: int
    n_val: int
    has_masks: bool
    max_objects: int  # most object ids in any loaded mask (0 without masks)
    crop: str  # what was done to the frames, e.g. "auto: 192x192 at (64, 24) of 320x240 frames, resized to 128x128"
    mask_pairing: dict[str, str]  # per split: "by name", "by sorted order" (names did not match) or "none"
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded (their samples are left out)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


class SceneDataset(Dataset):
    """Samples {"image": float [3, H, W] in [-1, 1], "mask": int64 [H, W] (if any), "index": int}."""

    def __init__(self, arrays: SceneArrays):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        pixels = torch.from_numpy(np.array(self.arrays.images[index]))  # a copy: the memmap is read-only
        sample: dict[str, torch.Tensor | int] = {"image": pixels.permute(2, 0, 1).float() / 127.5 - 1.0, "index": index}
        if self.arrays.masks is not None:
            sample["mask"] = torch.from_numpy(self.arrays.masks[index].astype(np.int64))
        return sample


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


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files left out)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))


def _pair_masks(
    images: list[Path], candidates: Callable[[Path], list[Path]], mask_folder: Path | None, require_masks: bool
) -> tuple[list[Pair], str]:
    """Each image with its mask, and the rule that paired them ("by name", "by sorted order" or "none").

    `candidates(image)` are the files that would be its mask, in order of preference. When
    some image has none of them, the files of `mask_folder` (None: no such fallback) are
    paired with the images in sorted order, but only if there are as many as images and no
    mask whose name matches an image would go to another image.
    """
    by_name = {image: next((m for m in candidates(image) if m.is_file()), None) for image in images}
    if all(by_name.values()):
        return [(image, by_name[image]) for image in images], "by name"
    expected = " or ".join(str(m) for m in candidates(images[0]))
    masks = _image_files(mask_folder) if mask_folder is not None and mask_folder.is_dir() else []
    if not any(by_name.values()) and not masks:
        if not require_masks:
            return [(image, None) for image in images], "none"
        raise FileNotFoundError(
            f"no masks for the {len(images)} images in {images[0].parent}: expected {expected}, likewise for "
            "every image; pass --no-masks to train without masks (and without ARI, FG-ARI and mIoU)"
        )
    missing = next(image for image in images if by_name[image] is None)
    if len(masks) != len(images):
        count = f"; {mask_folder} holds {len(masks)} files for {len(images)} images" if mask_folder else ""
        raise FileNotFoundError(f"no mask for {missing}: expected {' or '.join(map(str, candidates(missing)))}{count}")
    pairs = list(zip(images, masks))
    for image, mask in pairs:
        if by_name[image] not in (None, mask):
            raise FileNotFoundError(
                f"no mask for {missing} by name, and sorted order would pair {image.name} with {mask.name} "
                f"although {by_name[image].name} is its mask: name every mask in {mask_folder} after its image"
            )
    warnings.warn(
        f"the mask names in {mask_folder} do not match the images' (expected {expected}); paired the "
        f"{len(images)} images with the {len(masks)} masks by sorted file order "
        f"({images[0].name} with {masks[0].name})",
        stacklevel=3,
    )
    return pairs, "by sorted order"


@dataclass
class _Split:
    """The files of one split, how their masks were paired, and which files of the folder they are."""

    pairs: list[Pair]
    pairing: str
    chosen: str  # which files, for the cache's source: e.g. "val" or "train, val of 0.1 held out with seed 0"


def _hold_out(split: _Split, val_fraction: float, seed: int) -> tuple[_Split, _Split]:
    """A seeded random `val_fraction` of the split's pairs as val, the rest as train (both in original order)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(split.pairs))
    val = set(order[: round(len(split.pairs) * val_fraction)].tolist())
    held = f"of {val_fraction:g} held out with seed {seed}"
    train = [x for i, x in enumerate(split.pairs) if i not in val]
    return (
        _Split(train, split.pairing, f"{split.chosen}, train {held}"),
        _Split([x for i, x in enumerate(split.pairs) if i in val], split.pairing, f"{split.chosen}, val {held}"),
    )


def _course_mask_names(mask_folder: Path, image: Path) -> list[Path]:
    """Where an image's mask may be: CLEVRTex's ``<name>_flat.png`` first (beside a same-name copy of the
    frame it would be the mask), then ``<name>.png``."""
    return [mask_folder / f"{image.stem}_flat.png", mask_folder / f"{image.stem}.png"]


def _course_splits(root: Path, require_masks: bool, val_fraction: float, seed: int) -> dict[str, _Split]:
    splits = {}
    for split in ("train", "val"):
        folder, mask_folder = root / "images" / split, root / "masks" / split
        if not folder.is_dir():
            continue
        images = _image_files(folder)
        if not images:
            splits[split] = _Split([], "none", split)
            continue
        candidates = partial(_course_mask_names, mask_folder)
        splits[split] = _Split(*_pair_masks(images, candidates, mask_folder, require_masks), split)
    if "train" not in splits:
        raise FileNotFoundError(f"{root / 'images' / 'train'} is missing; the course layout is images/{{train,val}}/")
    if "val" not in splits:
        splits["train"], splits["val"] = _hold_out(splits["train"], val_fraction, seed)
    return splits


def _clevrtex_mask_name(image: Path) -> list[Path]:
    """An official CLEVRTex frame's mask: ``<name>_flat.png`` beside it."""
    return [image.with_name(f"{image.stem}_flat.png")]


def _clevrtex_splits(
    root: Path, require_masks: bool, val_fraction: float, seed: int, official_split: bool
) -> dict[str, _Split]:
    found = []
    for path in root.rglob("CLEVRTEX_*.png"):
        match = _CLEVRTEX_NAME.match(path.name)
        if match:
            found.append(((match.group(1), int(match.group(2))), path))
    images = [path for _, path in sorted(found)]
    every = _Split(*_pair_masks(images, _clevrtex_mask_name, None, require_masks), "all")
    if not official_split:
        train, val = _hold_out(every, val_fraction, seed)
        return {"train": train, "val": val}
    n = len(every.pairs)
    return {
        "val": _Split(every.pairs[int(0.1 * n) : int(0.2 * n)], every.pairing, "official val"),
        "train": _Split(every.pairs[int(0.2 * n) :], every.pairing, "official train"),
    }


def load_dataset(
    root: str | Path,
    image_size: int = 128,
    background: Background = "border",
    require_masks: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    crop: str = "auto",
    clevrtex_official_split: bool = True,
    decode_workers: int = 4,
    cache_dir: str | Path | None = None,
) -> tuple[SceneDataset, SceneDataset, LoaderInfo]:
    """The train and val splits under `root`, decoded once into `cache_dir` (see the module docstring).

    `max_train` / `max_val` keep the first N files of a split (in name order) for quick runs;
    `cache_dir` defaults to ``~/.cache/col775/scene-arrays``.
    """
    root = Path(root)
    check_crop(crop)
    layout = detect_layout(root)
    if layout == "course":
        splits = _course_splits(root, require_masks, val_fraction, seed)
    else:
        splits = _clevrtex_splits(root, require_masks, val_fraction, seed, clevrtex_official_split)
        background = (0, 0, 0)
    reader = SceneReader(image_size, background, crop)
    cache = Path(cache_dir or DEFAULT_CACHE_ROOT)
    arrays = {}
    for name, limit in (("train", max_train), ("val", max_val)):
        split = splits[name]
        chosen = f"{root.resolve()} {layout} {split.chosen}" + (f", first {limit}" if limit else "")
        arrays[name] = load_scenes(split.pairs[:limit], reader, cache, name, chosen, decode_workers)
    if len(arrays["train"].images) == 0:
        raise FileNotFoundError(f"no readable training images under {root} (layout {layout})")
    has_masks = arrays["train"].masks is not None
    if has_masks != (arrays["val"].masks is not None) and len(arrays["val"].images):
        raise FileNotFoundError(f"{root}: one split has masks and the other has none; give masks to both or neither")
    info = LoaderInfo(
        root=root, layout=layout, image_size=image_size,
        n_train=len(arrays["train"].images), n_val=len(arrays["val"].images),
        has_masks=has_masks, max_objects=max(a.max_objects for a in arrays.values()),
        crop=describe_crop(crop, arrays["train"].frame_sizes + arrays["val"].frame_sizes, image_size),
        mask_pairing={name: split.pairing for name, split in splits.items()},
        skipped=arrays["train"].skipped + arrays["val"].skipped,
    )  # fmt: skip
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

    `load_options` go to `load_dataset` (background, require_masks, crop, cache_dir, max_train, ...).
    """
    train, val, info = load_dataset(root, image_size=image_size, seed=seed, **load_options)
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0)
    train_loader = DataLoader(train, shuffle=True, generator=generator, drop_last=drop_last, **common)
    val_loader = DataLoader(val, shuffle=False, **common)
    return train_loader, val_loader, info
