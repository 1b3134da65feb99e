"""Train the VQ-VAE that the slot-diffusion decoder works in (`col775 slots train-vae`).

Where the course's pretrained `vae_checkpoint.pth` is not at hand, the same network (or the
narrow `VQVAE.small()` for CPU demos) is trained on the scene images with Adam: loss = pixel
MSE of the reconstruction + the VQ loss (codebook + 0.25 x commitment). LPIPS, which SlotDiffusion
adds, needs downloaded VGG weights and is left out. A fresh codebook tends to collapse onto a few
codes, so every `vae_restart_every` optimiser steps the codes that no batch chose since
the last restart are re-initialised to random encoder outputs; codebook perplexity, the used
fraction and the restart count go to metrics.jsonl.

The run folder resumes like any other; when it finishes, the weights with the lowest val MSE
are written as a plain state_dict, `<out>/vae.pt`, which `VQVAE` of the same settings loads
with strict=True and `--vae PATH` accepts (as it does the course file). `vae_for_run` gives a
diffusion run its frozen VAE: the `--vae` file, or this training run in `<out>/vae` first.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from col775.core.runs import RunDir, atomic_write_bytes
from col775.core.training import EarlyStopping, optimise, pick_device, progress, seed_everything, single_process
from col775.slots.build import build_vae, load_vae
from col775.slots.config import SlotsConfig, vae_run_fields
from col775.slots.diffusion.vae import VQVAE, codebook_usage, restart_dead_codes
from col775.slots.loaders import epoch_batches, make_loaders

log = logging.getLogger(__name__)

VAE_FILE = "vae.pt"
# Adam's betas of taming-transformers' VQGAN autoencoder: on the demo's scenes they reach about half
# the val MSE of the default (0.9, 0.999) in 600 steps.
ADAM_BETAS = (0.5, 0.9)


def vae_file(out: str | Path) -> Path:
    """Where a finished VAE run keeps its weights."""
    return Path(out) / VAE_FILE


class CodeCounter:
    """Code usage counts and optimiser steps since the last dead-code restart (a stateful object,
    so a resumed run restarts codes at the same steps as an uninterrupted one)."""

    def __init__(self, num_codes: int):
        self.counts = torch.zeros(num_codes, dtype=torch.long)
        self.steps = 0

    def add(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.flatten().cpu(), minlength=len(self.counts))
        self.steps += 1

    def reset(self) -> None:
        self.counts.zero_()
        self.steps = 0

    def state_dict(self) -> dict:
        return {"counts": self.counts.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].clone()
        self.steps = int(state["steps"])


def vae_loss(vae: VQVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss, reconstruction MSE, VQ loss, code indices [B,h,w]) of one batch."""
    recon, vq_loss, indices = vae(images)
    mse = F.mse_loss(recon, images)
    return mse + vq_loss, mse, vq_loss, indices


def train_vae_epoch(
    vae: VQVAE,
    batches: Iterator[dict],
    optimizer: torch.optim.Optimizer,
    counter: CodeCounter,
    config: SlotsConfig,
    device: torch.device,
    epoch: int,
    total: int,
) -> dict[str, float]:
    """One epoch of VQ-VAE training with dead-code restarts; returns the epoch's mean numbers."""
    vae.train()
    sums = {"loss": 0.0, "recon_mse": 0.0, "vq_loss": 0.0}
    epoch_counts = torch.zeros(config.vae_num_codes, dtype=torch.long)
    restarted, steps = 0, 0
    for batch in progress(batches, f"vae epoch {epoch + 1}/{config.vae_epochs}", total=total, epoch=epoch):
        images = batch["image"].to(device)
        loss, mse, vq, indices = vae_loss(vae, images)
        optimise(loss, optimizer, f"VAE epoch {epoch + 1}, step {steps + 1}")
        counter.add(indices)
        epoch_counts += torch.bincount(indices.flatten().cpu(), minlength=config.vae_num_codes)
        for name, value in zip(sums, (loss, mse, vq)):
            sums[name] += value.item()
        steps += 1
        if config.vae_restart_every and counter.steps >= config.vae_restart_every:
            restarted += _restart(vae, images, counter)
    if steps == 0:
        raise ValueError("the VAE's training loader gave no batches")
    usage = codebook_usage(torch.repeat_interleave(torch.arange(len(epoch_counts)), epoch_counts), len(epoch_counts))
    return {name: value / steps for name, value in sums.items()} | {
        "perplexity": usage.perplexity, "codes_used": usage.used_fraction, "codes_restarted": restarted,
    }  # fmt: skip


def _restart(vae: VQVAE, images: torch.Tensor, counter: CodeCounter) -> int:
    """Restart the codes unused since the last restart from this batch's latents; reset the counts."""
    with torch.no_grad():
        latents = vae.encode(images)
    count = restart_dead_codes(vae, latents, counter.counts)
    counter.reset()
    return count


@torch.no_grad()
def evaluate_vae(vae: VQVAE, loader, device: torch.device, num_codes: int) -> dict[str, float]:
    """Val reconstruction MSE (through the codebook), VQ loss and codebook usage."""
    vae.eval()
    squared, pixels, vq_sum, batches = 0.0, 0, 0.0, 0
    counts = torch.zeros(num_codes, dtype=torch.long)
    for batch in progress(loader, "vae val"):
        images = batch["image"].to(device)
        recon, vq_loss, indices = vae(images)
        squared += float(((recon - images) ** 2).sum())
        pixels += images.numel()
        vq_sum += float(vq_loss)
        batches += 1
        counts += torch.bincount(indices.flatten().cpu(), minlength=num_codes)
    usage = codebook_usage(torch.repeat_interleave(torch.arange(num_codes), counts), num_codes)
    return {"recon_mse": squared / max(pixels, 1), "vq_loss": vq_sum / max(batches, 1),
            "perplexity": usage.perplexity, "codes_used": usage.used_fraction}


def save_state_dict(module: nn.Module, path: Path) -> Path:
    """Write `module.state_dict()` (tensors only, on the CPU) atomically to `path`."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def train_vae(config: SlotsConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) a VQ-VAE in `out`; returns its metrics.json content."""
    single_process("col775 slots train-vae", "its dead-code restarts count code use and draw new codes in one "
                   "process; run it without torchrun, then give its vae.pt to a torchrun `slots train` as --vae")
    seed_everything(config.seed)
    device = pick_device(config.device)
    run = RunDir(out, vae_run_fields(config), force=force)
    if run.finished and vae_file(out).is_file():
        log.info("%s already finished; pass --force to train it again", out)
        return run.final_metrics()

    loaders = make_loaders(dataclasses.replace(config, batch_size=config.vae_batch_size))
    vae = build_vae(config.vae_arch, config.vae_num_codes).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.vae_lr, betas=ADAM_BETAS)
    counter = CodeCounter(config.vae_num_codes)
    best = EarlyStopping(patience=0, mode="min")
    objects = {"vae": vae, "optimizer": optimizer, "codes": counter, "best": best}
    start, extra = run.resume(objects)
    seconds = float(extra.get("train_seconds", 0.0))
    steps = config.vae_steps_per_epoch or len(loaders.train)

    for epoch in range(start, config.vae_epochs):
        began = time.perf_counter()
        batches = epoch_batches(loaders.train, config.seed, epoch, config.vae_steps_per_epoch)
        train = train_vae_epoch(vae, batches, optimizer, counter, config, device, epoch, steps)
        val = evaluate_vae(vae, loaders.val, device, config.vae_num_codes)
        seconds += time.perf_counter() - began
        record = {"epoch": epoch, "step": (epoch + 1) * steps}
        record |= {f"train/{k}": v for k, v in train.items()} | {f"val/{k}": v for k, v in val.items()}
        run.log_epoch(record)
        improved = best.step(val["recon_mse"])
        run.save_checkpoint(epoch, objects, best=improved, extra={"train_seconds": seconds})
        log.info("VAE epoch %d: train loss %.5f, val MSE %.5f, perplexity %.1f, %d codes restarted",
                 epoch + 1, train["loss"], val["recon_mse"], val["perplexity"], train["codes_restarted"])

    chosen = run.load_best({"vae": vae})
    final = evaluate_vae(vae, loaders.val, device, config.vae_num_codes)
    save_state_dict(vae, vae_file(out))
    metrics = {
        "recon_mse": final["recon_mse"], "vq_loss": final["vq_loss"], "perplexity": final["perplexity"],
        "codes_used": final["codes_used"], "best_epoch": chosen["epoch"], "epochs_run": len(run.history()),
        "train_seconds": seconds, "parameters": sum(p.numel() for p in vae.parameters()),
        "vae_file": str(vae_file(out)), "data": loaders.info_dict(),
    }  # fmt: skip
    run.finish(metrics)
    return metrics


def vae_for_run(config: SlotsConfig, out: str | Path, force: bool = False) -> tuple[VQVAE, Path]:
    """The frozen VAE of a diffusion run in `out`: `config.vae` when given (no VAE is trained), else
    one trained into `<out>/vae` first (resumed, or reused when finished)."""
    if config.vae:
        return load_vae(config.vae), Path(config.vae)
    vae_out = Path(out) / "vae"
    log.info("no --vae given: training a '%s' VQ-VAE into %s first", config.vae_arch, vae_out)
    train_vae(config, vae_out, force=force)
    return load_vae(vae_file(vae_out)), vae_file(vae_out)
