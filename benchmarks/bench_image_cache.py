"""Training images per second: the uint8 memmap cache against decoding the JPEGs every epoch.

Both pipelines feed the same DataLoader (batch size, workers, shuffling) and the same
augmentation (``col775.resnet.data.train_transform``) and normalisation; the only difference is
where the 256x256 uint8 pixels come from. The one-off cost of building the cache is printed
separately. Runs on ../shared/data/birds25 (or --data); --quick uses a subset.

Augmentation modes: "sample" and "batch" augment inside the loader on the CPU (the course's
way), so their rates include that work for both pipelines; "none" is what the loader does for
``augment: device`` training, where each batch is cropped and flipped on the GPU after the
copy (``col775.resnet.augment``), and is the ratio of reading from the cache against decoding.

    .venv/bin/python benchmarks/bench_image_cache.py [--quick] [--augment sample|batch|none|all]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from col775.resnet.data import (
    BatchCollate,
    CachedImageDataset,
    load_image,
    load_split,
    scan_split,
    train_transform,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "birds25"


class DecodingDataset(Dataset):
    """The baseline: open, decode, convert and resize each JPEG every time it is read."""

    def __init__(self, files, labels, image_size, transform):
        self.files, self.labels = [str(f) for f in files], labels
        self.image_size, self.transform = image_size, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        pixels = torch.from_numpy(load_image(self.files[index], self.image_size))  # (H, W, 3)
        image = pixels.permute(2, 0, 1)  # the same channels-last view the cache hands out
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def subset_tree(source: Path, target: Path, per_class: int) -> Path:
    """A train/ tree of symlinks to the first ``per_class`` images of each class."""
    for class_dir in sorted((source / "train").iterdir()):
        out = target / "train" / class_dir.name
        out.mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (out / image.name).symlink_to(image.resolve())
    return target


def images_per_second(loader: DataLoader, epochs: int) -> float:
    """Mean rate over ``epochs`` full passes (workers are started before the clock runs)."""
    iterator = iter(loader)
    next(iterator)  # spin up the workers
    for _ in iterator:
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="40 train images per class, 1 epoch")
    parser.add_argument(
        "--augment", choices=["sample", "batch", "none", "all"], default="all",
        help="augmentation for both pipelines; 'all' measures each mode in turn",
    )  # fmt: skip
    parser.add_argument(
        "--output", choices=["uint8", "float"], default="uint8",
        help="what batches hold: uint8 (normalised later on the GPU) or normalised float",
    )  # fmt: skip
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts to measure, both pipelines (0: read in the training process)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        print(f"skipped: no Birds_25-style data at {args.data} (pass --data)")
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if args.quick:
            root = subset_tree(args.data, Path(scratch) / "subset", per_class=40)
        split = root / "train"
        classes = sorted(p.name for p in split.iterdir() if p.is_dir())
        files, labels = scan_split(split, classes)

        start = time.perf_counter()
        cache = load_split(split, classes, args.image_size, Path(scratch) / "cache", progress=False)
        build_s = time.perf_counter() - start

        epochs = 1 if args.quick else args.epochs
        modes = ["none", "batch", "sample"] if args.augment == "all" else [args.augment]
        rates = {(workers, mode): measure(mode, workers, cache, files, labels, args, epochs)
                 for workers in args.workers for mode in modes}

    print(f"data: {split} ({len(files)} images at {args.image_size}px), "
          f"{args.output} batches of {args.batch_size}, "
          f"{epochs} epoch(s) after a warm-up pass, torch threads {torch.get_num_threads()}")
    print(f"cache build, once: {build_s:.1f} s ({len(files) / build_s:,.0f} img/s)")
    print(f"{'workers':>7} {'augment':>8} {'decode every epoch':>20} {'uint8 cache':>14} {'speed-up':>9}")
    for (workers, mode), (decode, cached) in rates.items():
        print(f"{workers:>7} {mode:>8} {decode:>14,.0f} img/s {cached:>8,.0f} img/s {cached / decode:>8.1f}x")
    return 0


def measure(mode, workers, cache, files, labels, args, epochs) -> tuple[float, float]:
    """(decoding rate, cached rate) in images per second for one augmentation mode."""
    augmentation = train_transform(args.image_size) if mode != "none" else None
    per_sample = augmentation if mode == "sample" else None
    settings = dict(
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=BatchCollate(augmentation if mode == "batch" else None, args.output == "float"),
        drop_last=False,
    )
    torch.manual_seed(0)
    decoding = DecodingDataset(files, labels, args.image_size, per_sample)
    decode_rate = images_per_second(DataLoader(decoding, **settings), epochs)
    torch.manual_seed(0)
    cached = CachedImageDataset(cache, transform=per_sample, as_float=False)
    cached_rate = images_per_second(DataLoader(cached, **settings), epochs)
    return decode_rate, cached_rate


if __name__ == "__main__":
    sys.exit(main())
