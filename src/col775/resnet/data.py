"""Image data for the ResNet study: an ImageFolder tree, decoded once into a uint8 disk cache.

Layout read (the course's and Kaggle's Birds_25 layout)::

    root/train/<Class>/*.jpg      required
    root/val/<Class>/*.jpg        required, same class folders as train
    root/test/<Class>/*.jpg       optional; without it a stratified test split is carved from train

As in torchvision's ImageFolder, images in sub-folders of a class folder belong to that class (they are
read recursively and counted in :class:`DatasetInfo`); hidden files and folders are left out. Training
needs at least two class folders.

Every image, whatever its size or mode (grayscale, RGBA, CMYK, palette, 16-bit), is decoded once,
made ``image_size x image_size`` RGB and appended to a flat uint8 file that is then read as a
``numpy.memmap`` of shape (N, H, W, 3). The cache is keyed by the split's files (path, size,
mtime) and the image size, so later epochs and later runs read pixels instead of decoding JPEGs,
and a changed tree builds a fresh cache. Unreadable images are logged with their path, left out,
and listed in :class:`DatasetInfo`.

Public API: :func:`build_loaders` (what training calls), :func:`eval_loader`, :class:`DatasetInfo`,
:class:`ImageCache`/:func:`load_split` (one split's cache), :class:`CachedImageDataset`,
:class:`BatchCollate`, :func:`train_transform`, :func:`normalize`, :func:`denormalize`,
:func:`load_image`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torchvision.transforms import v2
from tqdm.auto import tqdm

from col775.core.disk_cache import MappedArray, build_cache_dir, files_key, read_meta
from col775.core.distributed import is_distributed, shard_indices

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# ImageNet channel statistics: a fixed, well-known choice, so that a checkpoint does not depend on
# which subset of the data computed them, and Grad-CAM can undo them with the same constants.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_CACHE_ROOT = Path("~/.cache/col775/images")
LAYOUT_HELP = (
    "expected layout: <root>/train/<Class>/<image>, <root>/val/<Class>/<image> "
    "and optionally <root>/test/<Class>/<image>, with the same class folders in every split"
)
_CACHE_VERSION = 1
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Augment = Literal["sample", "batch", "none"]


@dataclass(frozen=True)
class DatasetInfo:
    """What was loaded, in the words a report needs.

    ``split_sizes`` counts the images actually used (after skipping and carving), and
    ``from_subfolders`` how many of those were read from sub-folders of a class folder;
    ``skipped`` lists the unreadable files (absolute paths) that were left out.
    """

    root: Path
    classes: list[str]
    split_sizes: dict[str, int]
    skipped: list[str]
    test_carved: bool
    test_fraction: float | None
    image_size: int
    cache_dir: Path
    from_subfolders: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        """JSON-ready form, for run folders and reports."""
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "split_sizes": dict(self.split_sizes),
            "from_subfolders": dict(self.from_subfolders),
            "skipped": list(self.skipped),
            "num_skipped": len(self.skipped),
            "test_carved": self.test_carved,
            "test_fraction": self.test_fraction,
            "image_size": self.image_size,
            "cache_dir": str(self.cache_dir),
        }


def load_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one image file into an (image_size, image_size, 3) uint8 RGB array.

    EXIF rotation is applied; 16-bit grey levels are scaled to 8 bits (PIL's own convert would
    clip them at 255); every other mode goes through PIL's ``convert("RGB")``; the result is
    resized (squashed, not cropped) with PIL's antialiased bilinear filter.
    Raises OSError/ValueError for a file PIL cannot read.
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I"):  # "I;16", "I;16B", "I" from 16-bit files
            wide = np.asarray(img, dtype=np.int64).clip(0, 65535)
            img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
        rgb = img.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.array(rgb, dtype=np.uint8)


def _decode_or_none(path: str, image_size: int) -> np.ndarray | str:
    """load_image for a worker: the pixels, or the error text for an unreadable file."""
    try:
        return load_image(path, image_size)
    except _UNREADABLE as err:
        return f"{type(err).__name__}: {err}"


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"missing folder {split_dir}; {LAYOUT_HELP}")
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(f"no class folders in {split_dir}; {LAYOUT_HELP}")
    return classes


def _image_files(class_dir: Path) -> list[Path]:
    """A class folder's images, its sub-folders' included, in torchvision ImageFolder's order."""
    files = [
        Path(folder, name)
        for folder, _, names in sorted(os.walk(class_dir, followlinks=True))
        for name in sorted(names)
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in Path(folder, name).relative_to(class_dir).parts)
    ]
    if not files:
        raise FileNotFoundError(
            f"no images in {class_dir} (extensions {sorted(IMAGE_EXTENSIONS)}); {LAYOUT_HELP}"
        )
    return files


def scan_split(split_dir: Path, classes: Sequence[str]) -> tuple[list[Path], list[int]]:
    """List a split's image files (sorted) and their class indices; check its class folders.

    Raises ValueError naming the folder when its classes differ from ``classes`` (train's).
    """
    found = _class_folders(split_dir)
    if found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ValueError(
            f"class folders in {split_dir} do not match the train split's: "
            f"missing {missing}, unexpected {extra}; {LAYOUT_HELP}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        class_files = _image_files(split_dir / name)
        files += class_files
        labels += [index] * len(class_files)
    return files, labels


def _cache_key(files: Sequence[Path], labels: Sequence[int], image_size: int) -> str:
    """Hash of everything the cached pixels depend on: each file's path, size and mtime."""
    return files_key(f"v{_CACHE_VERSION} size={image_size}\n", zip(files, labels))


class ImageCache:
    """One split's decoded images on disk: ``images`` (N, H, W, 3) uint8 memmap, ``labels`` (N,).

    The memmap is opened lazily and is not pickled, so a DataLoader worker re-opens the file
    instead of receiving a copy of the pixels.
    """

    def __init__(self, directory: Path):
        meta = read_meta(directory)
        self.directory = directory
        self.shape: tuple[int, int, int, int] = tuple(meta["shape"])
        self.labels: np.ndarray = np.load(directory / "labels.npy")
        self.files: list[str] = meta["files"]
        self.skipped: list[str] = meta["skipped"]
        # Rows read from sub-folders of a class folder (caches built before they were read have none).
        self.nested_rows: np.ndarray = np.asarray(meta.get("nested_rows", []), dtype=np.int64)
        self._images = MappedArray(directory / "images.u8", self.shape)

    @property
    def images(self) -> np.ndarray:
        return self._images.array

    def __len__(self) -> int:
        return self.shape[0]


def _build_cache(
    source: str,
    files: Sequence[Path],
    labels: Sequence[int],
    nested: Sequence[bool],
    image_size: int,
    target: Path,
    workers: int,
    progress: bool,
    desc: str,
) -> None:
    """Decode ``files`` into a temporary folder beside ``target``, then rename it into place.

    ``source`` (the split folder and image size) is recorded so that caches left over from
    earlier versions of the same folder can be deleted once this one is in place; ``nested`` marks
    the files read from sub-folders of their class folder.
    """
    kept_labels: list[int] = []
    kept_files: list[str] = []
    nested_rows: list[int] = []
    skipped: list[str] = []
    paths = [str(p) for p in files]
    with build_cache_dir(target, source) as (tmp, meta):
        with open(tmp / "images.u8", "wb") as out:
            for path, label, is_nested, result in zip(
                paths, labels, nested, _decode_all(paths, image_size, workers, progress, desc)
            ):
                if isinstance(result, str):
                    logger.warning("skipping unreadable image %s (%s)", path, result)
                    skipped.append(path)
                    continue
                out.write(result.tobytes())
                if is_nested:
                    nested_rows.append(len(kept_files))
                kept_labels.append(label)
                kept_files.append(path)
        if not kept_files:
            raise ValueError(f"none of the {len(paths)} images for {desc} could be read")
        np.save(tmp / "labels.npy", np.asarray(kept_labels, dtype=np.int64))
        meta.update(
            shape=[len(kept_files), image_size, image_size, 3],
            files=kept_files,
            skipped=skipped,
            nested_rows=nested_rows,
        )


def _decode_all(
    paths: list[str], image_size: int, workers: int, progress: bool, desc: str
) -> Iterator[np.ndarray | str]:
    """Yield, in order, each file's pixels or error text, decoding in ``workers`` processes."""
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    try:
        if workers <= 1:
            for path in paths:
                yield _decode_or_none(path, image_size)
                bar.update()
            return
        with ProcessPoolExecutor(workers) as pool:
            sizes = [image_size] * len(paths)
            for result in pool.map(_decode_or_none, paths, sizes, chunksize=16):
                yield result
                bar.update()
    finally:
        bar.close()


def load_split(
    split_dir: Path,
    classes: Sequence[str],
    image_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    progress: bool = True,
) -> ImageCache:
    """The cache of one split, built on first use and reused while its files are unchanged.

    ``cache_dir`` defaults to ``~/.cache/col775/images``; ``workers`` > 1 decodes in that many
    processes while building.
    """
    files, labels = scan_split(split_dir, classes)
    nested = [path.parent.parent != split_dir for path in files]  # deeper than split/<Class>/<image>
    if any(nested):
        logger.info("%d images of %s are in sub-folders of class folders: read as that class", sum(nested), split_dir)
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_ROOT).expanduser()
    target = root / f"{split_dir.name}-{image_size}-{_cache_key(files, labels, image_size)}"
    if (target / "meta.json").is_file():
        cache = ImageCache(target)
        for path in cache.skipped:
            logger.warning("image %s was unreadable when its cache was built; left out", path)
        return cache
    root.mkdir(parents=True, exist_ok=True)
    desc = f"caching {split_dir} at {image_size}px"
    source = f"{split_dir.resolve()} @ {image_size}px"
    _build_cache(source, files, labels, nested, image_size, target, workers, progress, desc)
    return ImageCache(target)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) -> contiguous float32, scaled to [0, 1] and standardised.

    Equal to ``(images / 255 - MEAN) / STD`` per channel, done as one converting copy and an
    in-place scale and shift, whatever the input's memory layout.
    """
    std = torch.tensor(STD, device=images.device).view(3, 1, 1)
    mean = torch.tensor(MEAN, device=images.device).view(3, 1, 1)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    out.copy_(images)
    return out.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: float images back to [0, 1] (for plots and Grad-CAM)."""
    mean = torch.tensor(MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


CROP_SCALE = (0.6, 1.0)  # area fraction of the random resized crop, for every augmentation mode


def train_transform(image_size: int, crop_scale: tuple[float, float] = CROP_SCALE) -> v2.Compose:
    """Training augmentation on uint8 tensors (C, H, W) or (B, C, H, W): resized crop and flip.

    On a batch tensor v2 draws one crop and one flip for the whole batch.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    )


class CachedImageDataset(Dataset):
    """(image, label) pairs read from an :class:`ImageCache`, optionally a subset of its rows.

    The image is a (3, H, W) tensor: uint8 when ``as_float`` is False (a view of the cached
    (H, W, 3) pixels, so its strides are channels-last), otherwise normalised float32 (see
    :func:`normalize`). ``transform`` (uint8 -> uint8) runs before normalising.
    """

    def __init__(
        self,
        cache: ImageCache,
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        as_float: bool = True,
    ):
        self.cache = cache
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices, np.int64)
        self.transform = transform
        self.as_float = as_float

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.cache.labels[self.indices]

    @property
    def files(self) -> list[str]:
        return [self.cache.files[i] for i in self.indices]

    @property
    def from_subfolders(self) -> int:
        """How many of these images were read from sub-folders of a class folder."""
        return int(np.isin(self.indices, self.cache.nested_rows).sum())

    def _finish(self, pixels: torch.Tensor, row: int) -> tuple[torch.Tensor, int]:
        image = pixels.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W), a view
        if self.transform is not None:
            image = self.transform(image)
        if self.as_float:
            image = normalize(image)
        return image, int(self.cache.labels[row])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = int(self.indices[index])
        return self._finish(torch.from_numpy(np.array(self.cache.images[row])), row)

    def __getitems__(self, indices: list[int]) -> SampleBatch | list[tuple[torch.Tensor, int]]:
        """A batch in one memmap read (DataLoader calls this instead of __getitem__ per sample).

        Without a per-sample transform the batch stays one tensor (a :class:`SampleBatch`), read
        straight from the memmap into its final buffer (in shared memory inside a loader worker,
        as PyTorch's default collate does, so that handing it to the main process copies nothing).
        """
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        pixels = torch.empty((len(rows), *self.cache.shape[1:]), dtype=torch.uint8)  # (B, H, W, 3)
        if self.transform is None and get_worker_info() is not None:
            pixels.share_memory_()
        np.take(self.cache.images, rows, axis=0, out=pixels.numpy(), mode="clip")  # rows are valid
        if self.transform is not None:
            return [self._finish(image, int(row)) for image, row in zip(pixels, rows)]
        images = pixels.permute(0, 3, 1, 2)  # (B, 3, H, W) view, channels-last strides
        labels = torch.from_numpy(self.cache.labels[rows].astype(np.int64))
        return SampleBatch(normalize(images) if self.as_float else images, labels)


class SampleBatch(Sequence):
    """Samples read together: ``images`` (B, 3, H, W) and ``labels`` (B,) int64, already stacked.

    Indexing gives (image, label) pairs like any list of samples; :class:`BatchCollate` takes the
    tensors as they are instead of stacking a copy.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class BatchCollate:
    """DataLoader collate_fn: (3, H, W) samples -> (images (B, 3, H, W), labels (B,)).

    uint8 samples are stacked channels-last (for views of the cache a plain memory copy, so
    uint8 batches have channels-last strides; a :class:`SampleBatch` is already stacked),
    augmented as a whole by ``transform`` when given (one draw per batch), and normalised when
    ``as_float``; without it they stay uint8 (a quarter of the bytes to pass between processes
    and to the GPU) and the caller normalises them on the device. Float samples, already
    normalised, are just stacked.
    """

    def __init__(
        self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None, as_float: bool = True
    ):
        self.transform = transform
        self.as_float = as_float

    def __call__(
        self, samples: Sequence[tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(samples, SampleBatch):
            images, labels = samples.images, samples.labels
        else:
            labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
            if samples[0][0].is_floating_point():
                return torch.stack([image for image, _ in samples]), labels
            stacked = torch.stack([image.permute(1, 2, 0) for image, _ in samples])  # (B, H, W, 3)
            images = stacked.permute(0, 3, 1, 2)  # (B, 3, H, W) view
        if images.is_floating_point():
            return images, labels
        if self.transform is not None:
            images = self.transform(images)
        return (normalize(images) if self.as_float else images), labels


@dataclass
class Loaders:
    """DataLoaders yielding (images (B, 3, H, W), int64 labels (B,)).

    ``train`` is shuffled and augmented; the evaluation loaders ``val``, ``test``, ``train_eval``
    (every train image) and ``train_sample`` (a fixed seeded sample of them) are neither, and under
    torch.distributed each reads only its rank's :func:`~col775.core.distributed.shard_indices`.
    Images are normalised float32, or uint8 when built with ``as_float=False`` (then call
    :func:`normalize` on them once they are on the device).
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_eval: DataLoader
    train_sample: DataLoader
    info: DatasetInfo
    samplers: list[DistributedSampler] = field(default_factory=list)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle distributed samplers for a new epoch (a no-op without torch.distributed)."""
        for sampler in self.samplers:
            sampler.set_epoch(epoch)


def _carve_test(labels: np.ndarray, test_fraction: float, seed: int, where: Path):
    """Stratified (train_rows, test_rows) split of a train cache's rows."""
    try:
        train_rows, test_rows = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        raise ValueError(
            f"cannot carve a {test_fraction:.0%} stratified test split from {where}: {err}. "
            "Add a test/ folder or give each class more images."
        ) from err
    return np.sort(train_rows), np.sort(test_rows)


def eval_loader(
    dataset: CachedImageDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """An evaluation loader: the dataset in order, unaugmented, each rank reading only its
    :func:`~col775.core.distributed.shard_indices` (every image once, no padding)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=shard_indices(len(dataset)),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=BatchCollate(as_float=dataset.as_float),
    )


def build_loaders(
    root: str | os.PathLike,
    *,
    image_size: int = 256,
    batch_size: int = 32,
    eval_batch_size: int | None = None,
    augment: Augment = "sample",
    crop_scale: tuple[float, float] = CROP_SCALE,
    num_workers: int = 0,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    decode_workers: int = 0,
    as_float: bool = True,
    pin_memory: bool | None = None,
    progress: bool = True,
    train_eval_size: int = 2000,
) -> Loaders:
    """Loaders for ``root`` (the ImageFolder layout above) plus a :class:`DatasetInfo`.

    ``augment``: "sample" draws a crop/flip per image (in the loader workers), "batch" one per
    batch (cheaper), "none" turns augmentation off; val and test are never augmented.
    ``as_float=False`` yields uint8 batches for the caller to :func:`normalize` on its device,
    which takes the float conversion off the loader workers (the faster choice with a GPU).
    ``num_workers`` loader processes read batches; ``decode_workers`` processes decode images
    while a cache is first built. ``pin_memory`` defaults to whether CUDA is available.
    Without ``root/test`` a stratified ``test_fraction`` of train (fixed ``seed``) becomes the
    test split. ``train_sample`` holds ``train_eval_size`` train images drawn with ``seed`` (all of
    them when there are fewer, or when it is 0). Under torch.distributed train gets a
    DistributedSampler (call :meth:`Loaders.set_epoch` each epoch), the evaluation loaders read their
    rank's shard, and rank 0 builds the caches while the others wait.
    """
    if train_eval_size < 0:
        raise ValueError(f"train_eval_size must be 0 (every train image) or more, got {train_eval_size}")
    if augment not in ("sample", "batch", "none"):
        raise ValueError(f"augment must be 'sample', 'batch' or 'none', got {augment!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; {LAYOUT_HELP}")
    classes = _class_folders(root / "train")
    if len(classes) < 2:
        raise ValueError(
            f"{root / 'train'} has {len(classes)} class folder ({classes[0]}); a classifier needs at least "
            f"two, or every prediction is trivially right; {LAYOUT_HELP}"
        )
    has_test = (root / "test").is_dir()
    split_names = ["train", "val"] + (["test"] if has_test else [])

    def load_all() -> dict[str, ImageCache]:
        return {
            name: load_split(root / name, classes, image_size, cache_dir, decode_workers, progress)
            for name in split_names
        }

    distributed = is_distributed()
    if distributed and dist.get_rank() != 0:
        dist.barrier()  # wait for rank 0 to build the caches
    caches = load_all()
    if distributed and dist.get_rank() == 0:
        dist.barrier()

    augmentation = train_transform(image_size, crop_scale) if augment != "none" else None
    per_batch = augment == "batch"
    train_cache = caches["train"]
    if has_test:
        train_rows, test_cache, test_rows = None, caches["test"], None
    else:
        train_rows, test_rows = _carve_test(train_cache.labels, test_fraction, seed, root / "train")
        test_cache = train_cache
    per_sample = augmentation if augment == "sample" else None
    datasets = {  # batch augmentation needs uint8 samples; BatchCollate then normalises
        "train": CachedImageDataset(
            train_cache, train_rows, per_sample, as_float=as_float and not per_batch
        ),
        "val": CachedImageDataset(caches["val"], as_float=as_float),
        "test": CachedImageDataset(test_cache, test_rows, as_float=as_float),
        "train_eval": CachedImageDataset(train_cache, train_rows, as_float=as_float),
    }
    train_size = len(datasets["train"])
    sample_size = min(train_eval_size or train_size, train_size)
    sample = np.sort(np.random.default_rng(seed).choice(train_size, sample_size, replace=False))
    datasets["train_sample"] = CachedImageDataset(
        train_cache, datasets["train_eval"].indices[sample], as_float=as_float
    )

    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    # padded shards are harmless in training; the evaluation loaders count each image once
    sampler = DistributedSampler(datasets["train"], shuffle=True, seed=seed) if distributed else None
    loaders = {
        name: eval_loader(dataset, eval_batch_size or batch_size, num_workers, pin)
        for name, dataset in datasets.items()
        if name != "train"
    }
    loaders["train"] = DataLoader(
        datasets["train"],
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        drop_last=False,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=BatchCollate(augmentation if per_batch else None, as_float=as_float),
    )

    skipped = [path for name in split_names for path in caches[name].skipped]
    info = DatasetInfo(
        root=root,
        classes=classes,
        split_sizes={name: len(datasets[name]) for name in ("train", "val", "test")},
        from_subfolders={name: datasets[name].from_subfolders for name in ("train", "val", "test")},
        skipped=skipped,
        test_carved=not has_test,
        test_fraction=None if has_test else test_fraction,
        image_size=image_size,
        cache_dir=train_cache.directory.parent,
    )
    return Loaders(**loaders, info=info, samplers=[sampler] if sampler is not None else [])
