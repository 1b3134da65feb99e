"""Train and evaluate one Slot Attention autoencoder with the spatial broadcast decoder.

`col775 slots train --decoder sbd` runs `train_sbd`. An "epoch" is `steps_per_epoch` optimiser
steps (or one pass over the training set); after each one the mean training loss goes to
metrics.jsonl and a checkpoint is written, and every `val_every` epochs (and after the last)
the validation set is scored: reconstruction MSE (the val loss), ARI and FG-ARI. The batches
of an epoch depend only on (seed, epoch), and the checkpoint holds every random state, so a
run killed and started again continues as if it had never stopped. At the end the checkpoint
with the lowest validation loss is scored once more, with mIoU, into metrics.json.

The data helpers here (`scene_root`, `make_loaders`) are shared with the other decoders.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from col775.core.runs import RunDir
from col775.core.training import EarlyStopping, optimise, pick_device, progress, seed_everything, single_process
from col775.slots.autoencoder import SlotAutoencoder, TrainRecipe, reconstruction_loss
from col775.slots.config import SlotsConfig, run_fields
from col775.slots.data import LoaderInfo, SceneDataset, load_dataset
from col775.slots.evaluate import evaluate_segmentation
from col775.slots.scenes import write_scene_folder

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------- data


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
        f"scenes-s{config.image_size}-n{config.n_train}-{config.n_val}-"
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


# ---------------------------------------------------------------------------------------- model


class SbdSlotModel:
    """A trained autoencoder as the study sees any slot model: encode, decode, explain, predict."""

    label = "spatial broadcast decoder"

    def __init__(self, model: SlotAutoencoder):
        self.model = model

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> slots [B, K, D]."""
        return self.model.encode(images)[0]

    @torch.no_grad()
    def decode(self, slots: Tensor) -> Tensor:
        """slots [B, K', D] -> images [B, 3, H, W] in [-1, 1] (any number of slots)."""
        return self.model.decode(slots)["recon"]

    @torch.no_grad()
    def explain(self, images: Tensor) -> dict[str, Tensor]:
        """recon [B, 3, H, W], masks [B, K, H, W] (sum to 1 over K), slot_images [B, K, 3, H, W]."""
        out = self.model(images)
        return {"recon": out["recon"], "masks": out["masks"][:, :, 0], "slot_images": out["slot_recons"]}

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(labels [B, H, W]: argmax over slots of the masks, recon [B, 3, H, W])."""
        out = self.model(images)
        return out["masks"][:, :, 0].argmax(dim=1), out["recon"]


def build_model(config: SlotsConfig) -> SlotAutoencoder:
    return SlotAutoencoder(config.model_config())


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule per step; step s trains at lr_at(s + 1) so the first step is not at lr 0."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: recipe.lr_at(step + 1) / recipe.lr)


def load_sbd(config: SlotsConfig, run_dir: str | Path, device: torch.device | None = None) -> SbdSlotModel:
    """The best checkpoint of a finished (or partial) run in `run_dir`."""
    model = build_model(config)
    RunDir(run_dir, run_fields(config)).load_best({"model": model})
    return SbdSlotModel(model.to(device or pick_device(config.device)).eval())


# ------------------------------------------------------------------------------------- training


def train_epoch(
    model: SlotAutoencoder,
    batches: Iterator[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: SlotsConfig,
    device: torch.device,
    epoch: int,
    total: int,
) -> float:
    """Optimise on `batches`; returns the mean reconstruction loss."""
    model.train()
    losses = []
    for step, batch in enumerate(progress(batches, f"epoch {epoch + 1}/{config.epochs} train", total=total, epoch=epoch)):
        images = batch["image"].to(device)
        loss = reconstruction_loss(model(images)["recon"], images)
        optimise(loss, optimizer, f"epoch {epoch + 1}, step {step + 1}", config.grad_clip, model.parameters())
        scheduler.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def start_training(run: RunDir, config: SlotsConfig, model: torch.nn.Module, parameters: Iterable) -> tuple[dict, int, float]:
    """Adam over `parameters`, the paper's schedule and a best-val-loss tracker, restored from the
    run's last checkpoint if it has one. Returns (what to checkpoint, first epoch, training seconds)."""
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    scheduler = build_scheduler(optimizer, config.recipe())
    best = EarlyStopping(patience=0, mode="min")  # only tracks the best val loss
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "best": best}
    start, extra = run.resume(objects)
    if start:
        log.info("resuming %s at epoch %d", run.path, start + 1)
    return objects, start, float(extra.get("train_seconds", 0.0))


def run_epochs(
    run: RunDir,
    config: SlotsConfig,
    objects: dict,
    train_loader: DataLoader,
    start: int,
    seconds: float,
    steps: int,
    one_epoch: Callable[[Iterable[dict], int], float],
    validate: Callable[[int], dict[str, float]],
) -> float:
    """The epoch loop both decoders share: train `steps` batches, validate every `val_every` epochs
    (and at the last; `validate` returns "val/loss" and friends), log, checkpoint (best = lowest val
    loss, tracked by `objects["best"]`). Returns the training seconds so far, resumed ones included."""
    optimizer, best = objects["optimizer"], objects["best"]
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        loss = one_epoch(epoch_batches(train_loader, config.seed, epoch, config.steps_per_epoch), epoch)
        seconds += time.perf_counter() - began
        record = {"epoch": epoch, "step": (epoch + 1) * steps, "lr": optimizer.param_groups[0]["lr"], "train/loss": loss}
        improved = False
        if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
            record |= validate(epoch)
            improved = best.step(record["val/loss"])
        run.log_epoch(record)
        run.save_checkpoint(epoch, objects, best=improved, extra={"train_seconds": seconds})
        log.info("epoch %d: train loss %.5f%s", epoch + 1, loss,
                 f", val loss {record['val/loss']:.5f}" if "val/loss" in record else "")  # fmt: skip
    return seconds


def train_sbd(config: SlotsConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one SBD run in `out`; returns its metrics.json content."""
    if config.decoder != "sbd":
        raise ValueError(f"train_sbd trains the spatial broadcast decoder, but decoder is {config.decoder!r}")
    single_process("col775 slots train")
    seed_everything(config.seed)
    device = pick_device(config.device)
    run = RunDir(out, run_fields(config), force=force)
    if run.finished:
        log.info("%s already finished; pass --force to train it again", out)
        return run.final_metrics()

    loaders = make_loaders(config)
    model = build_model(config).to(device)
    objects, start, seconds = start_training(run, config, model, model.parameters())
    optimizer, scheduler = objects["optimizer"], objects["scheduler"]
    steps = config.steps_per_epoch or len(loaders.train)
    predictor = SbdSlotModel(model)

    def validate(epoch: int) -> dict[str, float]:
        model.eval()
        val = evaluate_segmentation(predictor.predict, loaders.val, device, f"epoch {epoch + 1} val", miou=False)
        return {"val/loss": val["mse"], "val/ari": val["ari"], "val/fg_ari": val["fg_ari"]}

    def one_epoch(batches: Iterable[dict], epoch: int) -> float:
        return train_epoch(model, batches, optimizer, scheduler, config, device, epoch, steps)

    seconds = run_epochs(run, config, objects, loaders.train, start, seconds, steps, one_epoch, validate)

    chosen = run.load_best({"model": model})
    model.eval()
    final = evaluate_segmentation(predictor.predict, loaders.val, device, "final val")
    history = run.history()
    metrics = {
        "ari": final["ari"], "fg_ari": final["fg_ari"], "miou": final["miou"], "mse": final["mse"],
        "val_images": final["images"], "best_epoch": chosen["epoch"], "epochs_run": len(history),
        "steps": len(history) * steps, "train_seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()), "data": loaders.info_dict(),
    }  # fmt: skip
    run.finish(metrics)
    return metrics
