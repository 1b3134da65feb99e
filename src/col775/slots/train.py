"""Train and evaluate one Slot Attention run, with either decoder (`col775 slots train`).

`train(config, out)` is the one training loop of both decoders. An "epoch" is `steps_per_epoch`
optimiser steps of `model.loss` (or one pass over the training set); after each one the mean
training loss goes to metrics.jsonl and a checkpoint is written, and every `val_every` epochs (and
after the last) the validation set is scored: the loss (its randomness drawn from a generator
seeded by the config, so epochs compare), ARI and FG-ARI. The batches of an epoch depend only on
(seed, epoch), and the checkpoint holds every random state, so a run killed and started again
continues as if it had never stopped. The diffusion decoder first gets its frozen VAE (`--vae`,
or one trained into `<out>/vae`) and fixes its latent scale from the first training batch.

At the end the checkpoint with the lowest validation loss is scored by `evaluate_run`: ARI,
FG-ARI, mIoU and reconstruction MSE, cached per sampler in `<out>/evaluation/` and tied to the
checkpoint they came from, so asking for another sampler evaluates again without training, and a
retrained run is never scored with its predecessor's numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader

from col775.core.runs import RunDir, atomic_write_json
from col775.core.training import EarlyStopping, optimise, pick_device, progress, seed_everything, single_process
from col775.slots.build import build_model, build_vae, compile_trainable, load_vae
from col775.slots.config import SlotsConfig, run_fields
from col775.slots.evaluate import evaluate
from col775.slots.loaders import Loaders, epoch_batches, make_loaders
from col775.slots.slot_model import SlotModel
from col775.slots.train_vae import vae_for_run

log = logging.getLogger(__name__)


def learning_rate(config: SlotsConfig, step: int) -> float:
    """Learning rate for optimiser step `step` (0-based), as the paper's training script:
    lr * min(1, step / warmup_steps) * decay_rate ** (step / decay_steps)."""
    warmup = min(1.0, step / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    return config.lr * warmup * config.decay_rate ** (step / config.decay_steps)


def train_epoch(
    model: SlotModel,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: SlotsConfig,
    device: torch.device,
    epoch: int,
    total: int,
) -> float:
    """Optimise `model.loss` on `batches`; returns the mean loss."""
    model.train()
    losses = []
    params = model.trainable_parameters()
    for step, batch in enumerate(progress(batches, f"epoch {epoch + 1}/{config.epochs} train", total=total, epoch=epoch)):
        loss = model.loss(batch["image"].to(device))
        optimise(loss, optimizer, f"epoch {epoch + 1}, step {step + 1}", config.grad_clip, params)
        scheduler.step()
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def validate(model: SlotModel, loader: DataLoader, device: torch.device, seed: int, desc: str) -> dict[str, float]:
    """val/loss (its randomness from `seed`, the same every call), val/ari and val/fg_ari."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for batch in progress(loader, f"{desc} loss"):
        images = batch["image"].to(device)
        total += float(model.loss(images, generator)) * len(images)
        count += len(images)
    scores = evaluate(model, loader, device, desc, miou=False, max_recon_images=None)
    return {"val/loss": total / count, "val/ari": scores["ari"], "val/fg_ari": scores["fg_ari"]}


def train(config: SlotsConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one run in `out`, then score its best checkpoint with
    `config`'s sampler; returns the training numbers and those scores."""
    single_process("col775 slots train")
    out = Path(out)
    run = RunDir(out, run_fields(config), force=force)
    if not run.finished:
        _train(run, config, out, force)
    return run.final_metrics() | evaluate_run(config, out)


def _train(run: RunDir, config: SlotsConfig, out: Path, force: bool) -> None:
    vae, vae_path = vae_for_run(config, out, force) if config.decoder == "diffusion" else (None, None)
    seed_everything(config.seed)  # the same stream whether or not a VAE was trained first
    device = pick_device(config.device)
    loaders = make_loaders(config)
    model = build_model(config, vae).to(device)
    if config.compile:
        compile_trainable(model)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    # step s trains at learning_rate(s + 1), so the first step is not at lr 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(config, s + 1) / config.lr)
    best = EarlyStopping(patience=0, mode="min")  # only tracks the best val loss
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "best": best}
    start, extra = run.resume(objects)
    if start:
        log.info("resuming %s at epoch %d", run.path, start + 1)
    else:  # a resumed model brings what it prepared in its state
        first = next(iter(epoch_batches(loaders.train, config.seed, 0, 1)))["image"].to(device)
        extra = {"prepared": model.prepare(first)}
        log.info("prepared from the first batch: %s", extra["prepared"])
    seconds = float(extra.get("train_seconds", 0.0))
    steps = config.steps_per_epoch or len(loaders.train)

    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        batches = epoch_batches(loaders.train, config.seed, epoch, config.steps_per_epoch)
        loss = train_epoch(model, batches, optimizer, scheduler, config, device, epoch, steps)
        seconds += time.perf_counter() - began
        record = {"epoch": epoch, "step": (epoch + 1) * steps, "lr": optimizer.param_groups[0]["lr"], "train/loss": loss}
        improved = False
        if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
            record |= validate(model, loaders.val, device, config.seed, f"epoch {epoch + 1} val")
            improved = best.step(record["val/loss"])
        run.log_epoch(record)
        run.save_checkpoint(epoch, objects, best=improved, extra=extra | {"train_seconds": seconds})
        log.info("epoch %d: train loss %.5f%s", epoch + 1, loss,
                 f", val loss {record['val/loss']:.5f}" if "val/loss" in record else "")  # fmt: skip

    chosen = run.load_best({"model": model})
    history = run.history()
    metrics = {
        "decoder": config.decoder, "best_epoch": chosen["epoch"], "epochs_run": len(history),
        "steps": len(history) * steps, "train_seconds": seconds,
        "val_loss": min((r["val/loss"] for r in history if "val/loss" in r), default=None),
        "parameters": sum(p.numel() for p in model.trainable_parameters()), "data": loaders.info_dict(),
        **extra.get("prepared", {}),
    }  # fmt: skip
    if vae is not None:
        metrics |= {"vae_file": str(vae_path), "vae_parameters": sum(p.numel() for p in vae.parameters())}
    run.finish(metrics | evaluate_run(config, out, model, loaders))


def checkpoint_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of the run's best checkpoint file (its last where none was marked best)."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no checkpoint; train the run first")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_trained(config: SlotsConfig, run_dir: str | Path, device: torch.device | None = None) -> SlotModel:
    """The best checkpoint of a run in `run_dir`, in eval mode (a diffusion run's VAE weights come with it)."""
    vae = None
    if config.decoder == "diffusion":
        vae = load_vae(config.vae) if config.vae else build_vae(config.vae_arch, config.vae_num_codes)
    model = build_model(config, vae)
    RunDir(run_dir, run_fields(config)).load_best({"model": model})
    return model.to(device or pick_device(config.device)).eval()


def sampler_key(config: SlotsConfig) -> str:
    """The name of the evaluation a config asks for: one for the deterministic SBD, one per sampler."""
    if config.decoder == "sbd":
        return "sbd"
    return f"ddim-{config.sampler_steps}" if config.sampler == "ddim" else f"ancestral-{config.num_timesteps}"


def evaluate_run(
    config: SlotsConfig, run_dir: str | Path, model: SlotModel | None = None, loaders: Loaders | None = None
) -> dict:
    """ARI, FG-ARI, mIoU and MSE of the run's best checkpoint with `config`'s sampler, cached in
    `<run_dir>/evaluation/<sampler>.json` for that checkpoint (a retrained run is evaluated again)."""
    path = Path(run_dir) / "evaluation" / f"{sampler_key(config)}.json"
    fingerprint = checkpoint_fingerprint(run_dir)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("checkpoint") == fingerprint and cached.get("recon_max_images") == config.recon_max_images:
            return cached
    device = pick_device(config.device)
    model = model or load_trained(config, run_dir, device)
    loaders = loaders or make_loaders(config)
    if config.decoder == "diffusion":
        model.use_sampler(config.sampler, config.sampler_steps)
    model.eval()
    seed_everything(config.seed)
    began = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    scores = evaluate(model, loaders.val, device, "final val", max_recon_images=config.recon_max_images,
                      generator=generator)  # fmt: skip
    result = {
        "ari": scores["ari"], "fg_ari": scores["fg_ari"], "miou": scores["miou"], "mse": scores["mse"],
        "val_images": scores["images"], "recon_max_images": config.recon_max_images,
        "sampler": config.sampler_label() if config.decoder == "diffusion" else None,
        "eval_seconds": time.perf_counter() - began, "checkpoint": fingerprint,
    }  # fmt: skip
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(path, result)
    return result
