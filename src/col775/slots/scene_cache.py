"""Scene files decoded once into a uint8 disk cache: the crop, the resize and the mask ids.

One split is a list of (image file, mask file or None) pairs. Each pair becomes an image
(H, W, 3) and an id mask (H, W) with 0 = background and objects numbered 1..k densely,
and the split is written once into a cache folder (`col775.core.disk_cache`) read back as
memmaps: a study with both decoders, several seeds or several processes reads pixels
instead of decoding 50,000 PNGs each time, and shares one copy of them. The cache key is
the pairs' paths, sizes and mtimes with the crop, the image size and the background rule,
so a changed file or setting builds a fresh cache.

Decoding a pair: the image is read as RGB (an RGBA frame's alpha is dropped, not blended).
A mask holds one flat colour per object; colours become ids 1..k in sorted colour order and
the background colour 0. Single-channel masks (L, or P such as CLEVRTex's ``_flat.png``
palette masks, by palette index) read as grey colours (v, v, v). The background is the
most frequent colour on the mask's border (``"border"``) or a given RGB tuple. Then both
are cropped to the same box (`crop_box`) and resized to ``image_size`` (image bilinear,
mask nearest, so ids stay exact), and ids are renumbered densely, since a crop can drop
objects.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from col775.core.disk_cache import MappedArray, build_cache_dir, files_key, read_meta

log = logging.getLogger(__name__)

Background = str | tuple[int, int, int]
Pair = tuple[Path, Path | None]

_CACHE_VERSION = 1

# ----------------------------------------------------------------------------------- the crop


def check_crop(crop: str) -> None:
    """Refuse a crop setting that is not 'auto', 'none' or four integers 'left,top,right,bottom'."""
    if crop in ("auto", "none"):
        return
    parts = crop.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"crop must be 'auto', 'none' or a box 'left,top,right,bottom' in frame pixels, got {crop!r}")
    left, top, right, bottom = (int(p) for p in parts)
    if right <= left or bottom <= top:
        raise ValueError(f"crop box {crop!r} is empty: it needs left < right and top < bottom")


def crop_box(crop: str, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box `crop` keeps of a width x height frame; None keeps it all.

    ``auto`` keeps a square frame whole and takes the centre square of 4/5 of the shorter side
    from any other: the centre 192x192 of CLEVRTex's 320x240 frames, as its official loader
    does (torchvision's CenterCrop(192)). A given box must lie inside the frame.
    """
    if crop == "none" or (crop == "auto" and width == height):
        return None
    if crop == "auto":
        side = min(width, height) * 4 // 5
        left, top = round((width - side) / 2), round((height - side) / 2)
        return left, top, left + side, top + side
    left, top, right, bottom = (int(p) for p in crop.split(","))
    if right > width or bottom > height:
        raise ValueError(f"crop box {crop!r} does not fit in a {width}x{height} frame")
    return left, top, right, bottom


def describe_crop(crop: str, frame_sizes: Sequence[Sequence[int]], image_size: int) -> str:
    """What was done to the frames, for the run's data info and the report.

    E.g. "auto: 192x192 at (64, 24) of 320x240 frames, resized to 128x128".
    """
    parts = []
    for width, height in sorted({tuple(size) for size in frame_sizes}):
        box = crop_box(crop, width, height)
        if box is None:
            parts.append(f"whole {width}x{height} frames")
        else:
            left, top, right, bottom = box
            parts.append(f"{right - left}x{bottom - top} at ({left}, {top}) of {width}x{height} frames")
    return f"{crop}: {'; '.join(parts) or 'no frames'}, resized to {image_size}x{image_size}"


# ------------------------------------------------------------------------------- one file pair


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


def _crop_resize(image: Image.Image, box: tuple[int, int, int, int] | None, size: int, resample: int) -> np.ndarray:
    if box is not None:
        image = image.crop(box)
    if image.size != (size, size):
        image = image.resize((size, size), resample)
    return np.asarray(image)


@dataclass(frozen=True)
class SceneReader:
    """How one (image, mask) file pair becomes arrays: the output size, the background rule, the crop."""

    size: int
    background: Background
    crop: str  # "auto" | "none" | "left,top,right,bottom"

    def __call__(
        self, image_path: Path, mask_path: Path | None
    ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
        """(image (size, size, 3) uint8, ids (size, size) uint8 or None, the frame's (width, height))."""
        frame = _open(image_path).convert("RGB")
        box = crop_box(self.crop, *frame.size)
        image = _crop_resize(frame, box, self.size, Image.BILINEAR)
        if mask_path is None:
            return image, None, frame.size
        keys = _read_mask_keys(mask_path)
        if keys.shape[::-1] != frame.size:
            raise ValueError(
                f"{mask_path} is {keys.shape[1]}x{keys.shape[0]} but its image {image_path.name} is "
                f"{frame.size[0]}x{frame.size[1]}; a mask must match its image"
            )
        ids = Image.fromarray(_keys_to_ids(keys, _background_key(keys, self.background), mask_path))
        return image, _renumber(_crop_resize(ids, box, self.size, Image.NEAREST)), frame.size


# ----------------------------------------------------------------------------------- the cache


class SceneArrays:
    """One split's decoded scenes, read from its cache folder.

    ``images`` (N, H, W, 3) and ``masks`` (N, H, W) (None without masks) are uint8 memmaps;
    ``names`` are the image file names of the rows, ``skipped`` the unreadable files left out
    (``skip_reasons`` says why), ``frame_sizes`` the distinct (width, height) of the frames
    before the crop, and ``max_objects`` the most object ids in one mask.
    """

    def __init__(self, folder: Path):
        meta = read_meta(folder)
        self.folder = folder
        self.names: list[str] = meta["names"]
        self.skipped: list[str] = meta["skipped"]
        self.skip_reasons: list[str] = meta["skip_reasons"]
        self.frame_sizes: list[list[int]] = meta["frame_sizes"]
        self.max_objects: int = meta["max_objects"]
        n, size = len(self.names), meta["image_size"]
        self._images = MappedArray(folder / "images.u8", (n, size, size, 3))
        self._masks = MappedArray(folder / "masks.u8", (n, size, size)) if meta["has_masks"] else None

    @property
    def images(self) -> np.ndarray:
        return self._images.array

    @property
    def masks(self) -> np.ndarray | None:
        return None if self._masks is None else self._masks.array


def _decoded(pairs: list[Pair], reader: SceneReader, workers: int) -> Iterator[tuple | UnreadableFileError]:
    """Each pair's `reader` result (or its unreadable file), in order; decoded in threads (PIL releases the GIL)."""

    def decode(pair: Pair) -> tuple | UnreadableFileError:
        try:
            return reader(*pair)
        except UnreadableFileError as error:
            return error

    pool = ThreadPoolExecutor(max(1, workers))
    try:
        yield from pool.map(decode, pairs)
    finally:
        pool.shutdown(cancel_futures=True)  # an interrupted build stops decoding at once


def _build(pairs: list[Pair], reader: SceneReader, workers: int, target: Path, source: str) -> None:
    names, frame_sizes, max_objects = [], set(), 0
    skipped: list[str] = []  # the unreadable files
    reasons: list[str] = []  # and why, for the warnings of every later load
    has_masks = bool(pairs) and pairs[0][1] is not None
    with build_cache_dir(target, source) as (tmp, meta):
        with open(tmp / "images.u8", "wb") as images, open(tmp / "masks.u8", "wb") as masks:
            for (image_path, _), result in zip(pairs, _decoded(pairs, reader, workers)):
                if isinstance(result, UnreadableFileError):
                    skipped.append(str(result.path))
                    reasons.append(f"skipping {image_path.name}: cannot read {result}")
                    continue
                image, ids, frame_size = result
                images.write(image.tobytes())
                if ids is not None:
                    masks.write(ids.tobytes())
                    max_objects = max(max_objects, int(ids.max()))
                names.append(image_path.name)
                frame_sizes.add(frame_size)
        meta.update(
            names=names, skipped=skipped, skip_reasons=reasons, frame_sizes=sorted(frame_sizes),
            max_objects=max_objects, image_size=reader.size, has_masks=has_masks,
        )  # fmt: skip


def load_scenes(
    pairs: list[Pair], reader: SceneReader, cache_dir: Path, name: str, source: str, workers: int = 4
) -> SceneArrays:
    """The decoded split of `pairs`: read from `cache_dir` if this exact split was decoded before, else built there.

    `name` starts the cache folder's name; `source` says which files of which folder were
    chosen, without their stamps: once a fresh cache is built, older caches of the same
    source are deleted. Unreadable files are left out with a warning (repeated on every load).
    """
    header = f"v{_CACHE_VERSION} size={reader.size} crop={reader.crop} background={reader.background}\n"
    entries = [(path, role) for pair in pairs for path, role in zip(pair, ("image", "mask")) if path is not None]
    target = Path(cache_dir).expanduser() / f"{name}-{reader.size}-{files_key(header, entries)}"
    if read_meta(target) is None:
        log.info("decoding %d scenes of %s into %s", len(pairs), source, target)
        _build(pairs, reader, workers, target, f"{source} @ {header.strip()}")
    scenes = SceneArrays(target)
    for reason in scenes.skip_reasons:
        warnings.warn(reason, stacklevel=2)
    return scenes
