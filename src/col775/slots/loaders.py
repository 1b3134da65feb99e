"""The scenes a run trains on, as data loaders: the user's folder or generated scenes (cached once),
and the seeded batches of each epoch, the same for both decoders and for the VAE.

Under torch.distributed (`torchrun`) `batch_size` is per rank: every rank shuffles the same global
batches of `batch_size` x world size (those a single process with that batch would take) and reads its
share of each (`RankShares`); validation is split into unpadded shards (core.distributed.shard_indices).
Rank 0 generates the scenes and builds their disk cache while the other ranks wait, then they read it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, Subset

from col775.core.distributed import barrier, rank, shard_indices, world_size
from col775.slots.config import SlotsConfig
from col775.slots.data import LoaderInfo, SceneDataset, load_dataset
from col775.slots.scenes import write_scene_folder

log = logging.getLogger(__name__)


def cache_root(config: SlotsConfig) -> Path:
    return Path(config.cache_dir or "~/.cache/col775").expanduser()


def scene_root(config: SlotsConfig) -> Path:
    """The user's data folder, or generated scenes (written once into the cache, then reused)."""
    if config.data:
        root = Path(config.data).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist; pass --data DIR, or leave it out to generate scenes")
        return root
    name = (
        f"scenes-{config.scene_style}-s{config.image_size}-n{config.n_train}-{config.n_val}-"
        f"obj{config.min_objects}-{config.max_objects}-seed{config.seed}"
    )
    root = cache_root(config) / "scenes" / name
    if (root / "scenes.json").is_file():  # written last, so its presence means the folder is complete
        return root
    log.info("generating %d + %d scenes into %s", config.n_train, config.n_val, root)
    tmp = root.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_scene_folder(
        tmp, config.n_train, config.n_val, size=config.image_size, seed=config.seed,
        min_objects=config.min_objects, max_objects=config.max_objects, workers=min(os.cpu_count() or 1, 8),
        style=config.scene_style,
    )  # fmt: skip
    if (root / "scenes.json").is_file():  # another process finished the same scenes first
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(root, ignore_errors=True)  # a partial folder left by a killed run
        os.replace(tmp, root)
    return root


@dataclass
class Loaders:
    train: DataLoader  # shuffled, for training (this rank's share of each global batch)
    val: DataLoader  # in order (this rank's shard)
    library: DataLoader  # the training set in order, for slot libraries
    info: LoaderInfo

    def info_dict(self) -> dict:
        info = dataclasses.asdict(self.info)
        return info | {"root": str(self.info.root), "n_skipped": self.info.n_skipped}


def load_data(config: SlotsConfig) -> tuple[SceneDataset, SceneDataset, LoaderInfo]:
    root = scene_root(config)
    return load_dataset(
        root, image_size=config.image_size, background=(0, 0, 0) if not config.data else config.background(),
        require_masks=config.masks, seed=config.seed, max_train=config.max_train or None, max_val=config.max_val or None,
        crop=config.crop, cache_dir=cache_root(config) / "scene-arrays",
    )  # fmt: skip


class RankShares(Sampler[list[int]]):
    """This rank's share of each global batch: every world-size-th index from the rank's position (all
    of it in one process). Ranks hold equal shares of a full batch; a short one may differ by one."""

    def __init__(self, batches: BatchSampler):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[rank() :: world_size()]

    def __len__(self) -> int:
        return len(self.batches)


def own_shard(dataset: SceneDataset) -> SceneDataset | Subset:
    """This rank's unpadded shard of `dataset` (core.distributed.shard_indices); in one process, `dataset`."""
    return dataset if world_size() == 1 else Subset(dataset, shard_indices(len(dataset)))


def make_loaders(config: SlotsConfig) -> Loaders:
    if rank() != 0:
        barrier()  # rank 0 generates the scenes and decodes them into the cache first
    train, val, info = load_data(config)
    if rank() == 0:
        barrier()
    if len(val) < max(2, world_size()):
        raise ValueError(f"{info.root}: the validation split has {len(val)} images; it needs at least "
                         f"{max(2, world_size())} (2, and one per rank)")
    if len(train) < world_size():
        raise ValueError(f"{info.root}: the training split has {len(train)} images, fewer than the "
                         f"{world_size()} ranks")
    common = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0)
    shuffle = torch.Generator()  # seeded for each epoch by epoch_batches
    whole = config.batch_size * world_size()
    batches = BatchSampler(RandomSampler(train, generator=shuffle), whole, drop_last=len(train) > whole)
    return Loaders(
        train=DataLoader(train, batch_sampler=RankShares(batches), generator=shuffle, **common),
        val=DataLoader(own_shard(val), batch_size=config.eval_batch_size, shuffle=False, **common),
        library=DataLoader(train, batch_size=config.eval_batch_size, shuffle=False, **common),
        info=info,
    )  # fmt: skip


def epoch_batches(loader: DataLoader, seed: int, epoch: int, steps: int) -> Iterator[dict]:
    """The batches of one epoch: `steps` of them (cycling over the data), or one pass when steps is 0.

    The shuffle is seeded by (seed, epoch, pass), so a resumed run sees the batches it would have seen.
    """
    taken, data_pass = 0, 0
    while True:
        loader.generator.manual_seed(seed * 1_000_003 + epoch * 1_009 + data_pass)
        for batch in loader:
            yield batch
            taken += 1
            if steps and taken >= steps:
                return
        if not steps or taken == 0:
            return
        data_pass += 1


def data_image_size(root: Path) -> int | None:
    """The side of the square images of a data folder: scenes.json's size for `make-scenes` output, else
    the first training image's where it is square; None where the frames are not square (they are cropped)."""
    settings = root / "scenes.json"
    if settings.is_file():
        return int(json.loads(settings.read_text())["size"])
    first = next(iter(sorted((root / "images" / "train").glob("*.png"))), None)
    if first is None:
        return None
    with Image.open(first) as image:
        width, height = image.size
    return width if width == height else None
