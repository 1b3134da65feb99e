"""The scenes a run trains on, as data loaders: the user's folder or generated scenes (cached once),
and the seeded batches of each epoch, the same for both decoders and for the VAE.
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
from torch.utils.data import DataLoader

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
    train: DataLoader  # shuffled, for training
    val: DataLoader  # in order
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


def make_loaders(config: SlotsConfig) -> Loaders:
    train, val, info = load_data(config)
    if len(val) < 2:
        raise ValueError(f"{info.root}: the validation split has {len(val)} images; it needs at least 2")
    common = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0)
    return Loaders(
        train=DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=torch.Generator(),
                         drop_last=len(train) > config.batch_size, **common),
        val=DataLoader(val, batch_size=config.eval_batch_size, shuffle=False, **common),
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
