"""Train and evaluate one Slot Attention model with the latent diffusion decoder (assignment 2, part 2).

`col775 slots train-diffusion` runs `train_diffusion`. The VAE comes from `--vae PATH` (the
course's checkpoint or a `vae.pt` of `train-vae`), or, without one, is trained first into
`<out>/vae`. It is frozen; the slot encoder and the UNet train jointly on the DDPM loss. An
"epoch" is `steps_per_epoch` steps (0 = one pass), as for the spatial-broadcast decoder; after
each one the train loss goes to metrics.jsonl and a checkpoint is written, and every `val_every`
epochs the val loss (at timesteps and noise fixed by the seed, so epochs compare) and the ARI of
the attention masks are logged too. A run killed and started again continues where it stopped.

At the end, the checkpoint with the lowest val loss is scored into metrics.json:
- ari, fg_ari, miou: the last Slot Attention iteration's attention maps, resized to the image,
  argmax over slots (the assignment's proxy for masks), against the true masks of val;
- mse: val images reconstructed by sampling a latent from their slots (`sampler`, DDIM with
  `sampler_steps` by default, or ancestral with all T) and decoding it with the VAE;
- fid: compositional generation (K-means slot library of the training set, one slot per
  cluster) decoded the same way, against the val images, through clean-fid.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from col775.core.config import to_dict
from col775.core.runs import RunDir
from col775.core.training import optimise, pick_device, progress, seed_everything, single_process
from col775.slots.evaluate import evaluate_segmentation
from col775.slots.fid import fid_folders, write_png_folder
from col775.slots.generation import compositional_generation, to_uint8
from col775.slots.slot_diffusion import (
    DIFFUSION_STUDY_FIELDS, SlotDiffusion, SlotDiffusionConfig, build_model, build_vae, load_vae,
)  # fmt: skip
from col775.slots.train import epoch_batches, make_loaders, run_epochs, start_training
from col775.slots.train_vae import train_vae, vae_file
from col775.slots.vae import VQVAE

log = logging.getLogger(__name__)

GENERATED_DIR = "generated"  # compositional scenes, as PNG (the FID's first folder)
REFERENCE_DIR = "fid-reference"  # the val images, as PNG (the FID's second folder)


def diffusion_run_fields(config: SlotDiffusionConfig) -> dict:
    """The settings one run depends on (the evaluation-only fields left out)."""
    return {k: v for k, v in to_dict(config).items() if k not in DIFFUSION_STUDY_FIELDS}


class DiffusionSlotModel:
    """A trained slot-diffusion model as the study sees any slot model: encode, decode, explain, predict.

    Sampling uses the config's sampler; its noise comes from one generator seeded with `seed` and
    advanced by every call, so a fixed sequence of calls gives the same images every time while
    successive batches still start from different noise.
    """

    label = "latent diffusion decoder"

    def __init__(self, model: SlotDiffusion, sampler: str = "ddim", steps: int = 50, seed: int = 0):
        self.model = model
        self.sampler = sampler
        self.steps = steps
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _noise(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> slots [B, K, D]."""
        return self.model.encode(images)[0]

    @torch.no_grad()
    def decode(self, slots: Tensor) -> Tensor:
        """slots [B, K', D] -> sampled images [B, 3, H, W] in [-1, 1]."""
        return self.model.generate(slots, self.sampler, self.steps, self._noise(slots.device))

    @torch.no_grad()
    def masks(self, images: Tensor) -> Tensor:
        """Attention masks [B, K, H, W] (sum to 1 over K)."""
        return self.model.attention_masks(images)

    @torch.no_grad()
    def explain(self, images: Tensor) -> dict[str, Tensor]:
        """recon [B, 3, H, W] (sampled) and masks [B, K, H, W] (attention maps, sum to 1 over K)."""
        return {"recon": self.decode(self.encode(images)), "masks": self.masks(images)}

    @torch.no_grad()
    def labels(self, images: Tensor) -> Tensor:
        """The slot each pixel belongs to [B, H, W]: argmax over slots of the attention masks."""
        return self.masks(images).argmax(dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(labels [B, H, W], sampled reconstruction [B, 3, H, W]); sampling makes this the slow one."""
        return self.labels(images), self.decode(self.encode(images))


def prepare_vae(config: SlotDiffusionConfig, out: str | Path, force: bool = False) -> tuple[VQVAE, Path]:
    """The frozen VAE: loaded from `config.vae`, or trained into `<out>/vae` (resumed or reused) first."""
    if config.vae:
        return load_vae(config.vae, config.vae_arch, config.vae_num_codes), Path(config.vae)
    vae_out = Path(out) / "vae"
    log.info("no --vae given: training a '%s' VQ-VAE into %s first", config.vae_arch, vae_out)
    train_vae(config, vae_out, force=force)
    return load_vae(vae_file(vae_out), config.vae_arch, config.vae_num_codes), vae_file(vae_out)


def load_diffusion(config: SlotDiffusionConfig, run_dir: str | Path, device: torch.device | None = None) -> DiffusionSlotModel:
    """The best checkpoint of a run in `run_dir` (its VAE weights come with it)."""
    model = build_model(config, build_vae(config.vae_arch, config.vae_num_codes))
    RunDir(run_dir, diffusion_run_fields(config)).load_best({"model": model})
    model = model.to(device or pick_device(config.device)).eval()
    return DiffusionSlotModel(model, config.sampler, config.sampler_steps, config.seed)


# ------------------------------------------------------------------------------------- training


def train_epoch(
    model: SlotDiffusion,
    batches: Iterator[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: SlotDiffusionConfig,
    device: torch.device,
    epoch: int,
    total: int,
) -> float:
    """Optimise the slot encoder and UNet on `batches`; returns the mean diffusion loss."""
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
def validation_loss(model: SlotDiffusion, loader: DataLoader, device: torch.device, seed: int) -> float:
    """Mean diffusion loss over `loader` at timesteps and noise drawn from `seed` (the same every call)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for batch in progress(loader, "val loss"):
        images = batch["image"].to(device)
        t = torch.randint(0, model.diffusion.num_steps, (len(images),), generator=generator).to(device)
        noise = torch.randn((len(images), *model.latent_shape), generator=generator).to(device)
        total += float(model.loss(images, t, noise)) * len(images)
        count += len(images)
    return total / count


@torch.no_grad()
def reconstruction_mse(predictor: DiffusionSlotModel, loader: DataLoader, device: torch.device, max_images: int = 0) -> float:
    """Mean squared error (pixels and channels, images in [-1, 1]) of sampled reconstructions of
    the loader's first `max_images` images (0 = all)."""
    squared, pixels, seen = 0.0, 0, 0
    for batch in progress(loader, f"reconstruct ({predictor.sampler})"):
        images = batch["image"]
        if max_images:
            images = images[: max_images - seen]
        images = images.to(device)
        recon = predictor.decode(predictor.encode(images))
        squared += float(((recon.float() - images) ** 2).sum())
        pixels += images.numel()
        seen += len(images)
        if max_images and seen >= max_images:
            break
    return squared / pixels


def compositional_fid(
    predictor: DiffusionSlotModel, loaders, config: SlotDiffusionConfig, out: Path, device: torch.device
) -> tuple[float, int]:
    """Generate as many compositional scenes as there are val images (or `fid_max_images`), write
    them and the val images as PNG under `out`, and return (clean-fid FID, images generated)."""
    reference = np.concatenate([to_uint8(batch["image"]) for batch in loaders.val])
    count = config.fid_max_images or len(reference)
    images, _ = compositional_generation(
        predictor.encode, predictor.decode, loaders.library, count, config.num_slots, device,
        seed=config.seed, batch_size=config.fid_batch_size, max_library_images=config.library_max_images,
    )  # fmt: skip
    generated = write_png_folder(images, out / GENERATED_DIR)
    real = write_png_folder(reference, out / REFERENCE_DIR)
    fid = fid_folders(generated, real, device=device, batch_size=config.fid_batch_size, method=config.fid_method)
    return fid, len(images)


def final_scores(
    predictor: DiffusionSlotModel, loaders, config: SlotDiffusionConfig, out: Path, device: torch.device
) -> dict:
    """ARI/FG-ARI/mIoU of the attention masks, MSE of sampled reconstructions, FID of compositions."""
    segmentation = evaluate_segmentation(lambda x: (predictor.labels(x), None), loaders.val, device, "final val")
    scores = {"ari": segmentation["ari"], "fg_ari": segmentation["fg_ari"], "miou": segmentation["miou"],
              "val_images": segmentation["images"]}
    scores["mse"] = reconstruction_mse(predictor, loaders.val, device, config.recon_max_images)
    scores["fid"], scores["fid_images"] = (None, 0)
    if config.fid:
        scores["fid"], scores["fid_images"] = compositional_fid(predictor, loaders, config, out, device)
    return scores


def train_diffusion(config: SlotDiffusionConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one slot-diffusion run in `out`; returns metrics.json's content."""
    single_process("col775 slots train-diffusion")
    seed_everything(config.seed)
    device = pick_device(config.device)
    out = Path(out)
    run = RunDir(out, diffusion_run_fields(config), force=force)
    if run.finished:
        log.info("%s already finished; pass --force to train it again", out)
        return run.final_metrics()

    vae, vae_path = prepare_vae(config, out, force)
    seed_everything(config.seed)  # the same stream whether or not a VAE was trained first
    loaders = make_loaders(config)
    model = build_model(config, vae).to(device)
    objects, start, seconds = start_training(run, config, model, model.trainable_parameters())
    optimizer, scheduler = objects["optimizer"], objects["scheduler"]
    if not start:  # a resumed model brings its latent scale in its state
        first = next(iter(epoch_batches(loaders.train, config.seed, 0, 1)))["image"].to(device)
        log.info("latent scale %.4f", model.set_latent_scale(first))
    steps = config.steps_per_epoch or len(loaders.train)
    predictor = DiffusionSlotModel(model, config.sampler, config.sampler_steps, config.seed)

    def validate(epoch: int) -> dict[str, float]:
        loss = validation_loss(model, loaders.val, device, config.seed)
        seg = evaluate_segmentation(lambda x: (predictor.labels(x), None), loaders.val, device,
                                    f"epoch {epoch + 1} val", miou=False)  # fmt: skip
        return {"val/loss": loss, "val/ari": seg["ari"], "val/fg_ari": seg["fg_ari"]}

    def one_epoch(batches, epoch: int) -> float:
        return train_epoch(model, batches, optimizer, scheduler, config, device, epoch, steps)

    seconds = run_epochs(run, config, objects, loaders.train, start, seconds, steps, one_epoch, validate)

    chosen = run.load_best({"model": model})
    model.eval()
    began = time.perf_counter()
    scores = final_scores(predictor, loaders, config, out, device)
    history = run.history()
    metrics = scores | {
        "val_loss": min((r["val/loss"] for r in history if "val/loss" in r), default=None),
        "sampler": config.sampler, "sampler_steps": config.sampler_steps if config.sampler == "ddim" else config.num_timesteps,
        "best_epoch": chosen["epoch"], "epochs_run": len(history), "steps": len(history) * steps,
        "train_seconds": seconds, "eval_seconds": time.perf_counter() - began,
        "parameters": sum(p.numel() for p in model.trainable_parameters()),
        "vae_parameters": sum(p.numel() for p in model.vae.parameters()), "vae_file": str(vae_path),
        "latent_scale": float(model.latent_scale), "data": loaders.info_dict(),
    }  # fmt: skip
    run.finish(metrics)
    return metrics
