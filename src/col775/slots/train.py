"""Train and evaluate one Slot Attention run, with either decoder (`col775 slots train`).

`train(config, out)` is the one training loop of both decoders. An "epoch" is `steps_per_epoch`
optimiser steps of `model.loss` (or one pass over the training set); after each one the mean
training loss goes to metrics.jsonl and a checkpoint is written, and every `val_every` epochs (and
after the last) the validation set is scored: the loss (its randomness drawn from a generator
seeded by the config, so epochs compare), ARI and FG-ARI. The batches of an epoch depend only on
(seed, epoch), and the checkpoint holds every random state, so a run killed and started again
continues as if it had never stopped. The diffusion decoder first gets its frozen VAE (`--vae`,
or one trained into `<out>/vae`) and fixes its latent scale from the first training batch.

With `bf16`, each training step's forward runs under bf16 autocast and its loss in float32
(benchmarks/bench_slots_step.py measures the gain: on this project's CPU, which has bf16 arithmetic,
1.9x the steps a second for the cpu preset's SBD, 1.1x for its diffusion decoder); validation and
every reported score run in float32.

At the end the checkpoint with the lowest validation loss is scored by `evaluate_run`: ARI,
FG-ARI, mIoU and reconstruction MSE, cached per sampler in `<out>/evaluation/` and tied to the
checkpoint they came from, so asking for another sampler evaluates again without training, and a
retrained run is never scored with its predecessor's numbers.

Under `torchrun --nproc_per_node=N -m col775 slots train ...` the model's loss is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and `batch_size` is per rank: each global batch of
`batch_size` x N images is the one a single process with that batch would take, shared out by rank
(loaders.RankShares), and the update is that of its mean loss. Where the diffusion decoder draws
timesteps and noise, each image draws them from its own generator (slot_model.example_generators), so
they do not depend on the rank either. Validation and the final scores are computed on unpadded shards
gathered back in order (core/distributed.py), so every image counts once; only rank 0 writes, and every
rank resumes from rank 0's checkpoint. The VQ-VAE trains in one process: a diffusion run under torchrun
takes `--vae`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from col775.core.distributed import (barrier, from_rank0, gather_in_order, gather_shards, init_distributed,
                                     is_distributed, rank, sum_over_ranks, world_size)
from col775.core.disk_cache import file_sha256
from col775.core.runs import RunDir, atomic_write_json
from col775.core.training import (EarlyStopping, bf16_autocast, forget_compiled_code, optimise, pick_device,
                                  progress, seed_everything, single_process)
from col775.slots.build import build_model, build_vae, compile_trainable, load_vae
from col775.slots.config import SlotsConfig, run_fields
from col775.slots.evaluate import evaluate
from col775.slots.loaders import Loaders, epoch_batches, make_loaders
from col775.slots.slot_model import TRAIN_STREAM, VAL_LOSS_STREAM, SlotModel, example_generators
from col775.slots.train_vae import vae_for_run

log = logging.getLogger(__name__)


def learning_rate(config: SlotsConfig, step: int) -> float:
    """Learning rate for optimiser step `step` (0-based), as the paper's training script:
    lr * min(1, step / warmup_steps) * decay_rate ** (step / decay_steps)."""
    warmup = min(1.0, step / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    return config.lr * warmup * config.decay_rate ** (step / config.decay_steps)


def mask_entropy_weight(config: SlotsConfig, step: int) -> float:
    """The SBD's mask-entropy weight at optimiser step `step`: 0 until mask_entropy_start, then a linear ramp
    to mask_entropy_weight at mask_entropy_full. The slots first bind to objects under the reconstruction
    alone (from the start the penalty lets one slot take the whole image), then their masks sharpen."""
    if step < config.mask_entropy_start:
        return 0.0
    ramp = config.mask_entropy_full - config.mask_entropy_start
    return config.mask_entropy_weight * (min(1.0, (step - config.mask_entropy_start) / ramp) if ramp else 1.0)


def train_epoch(
    model: SlotModel,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: SlotsConfig,
    device: torch.device,
    epoch: int,
    total: int,
    net: Callable[..., Tensor] | None = None,
) -> float:
    """Optimise `model.loss` on `batches` (`total` a pass); returns the mean loss of the global batches.

    `net` computes the loss: `model.loss`, or under torchrun its DistributedDataParallel wrapper, which
    averages the ranks' gradients; each rank's mean loss is weighted by its share of the global batch,
    so the update is the one of the global batch's mean loss. Each image draws its randomness from its
    own generator, seeded by (seed, optimiser step, its index)."""
    model.train()
    net = net or model.loss
    sums = []  # per step: this rank's summed loss and image count
    params = model.trainable_parameters()
    for step, batch in enumerate(progress(batches, f"epoch {epoch + 1}/{config.epochs} train", total=total, epoch=epoch)):
        images = batch["image"].to(device)
        at = epoch * total + step  # the optimiser step
        noise = example_generators(batch["index"].tolist(), TRAIN_STREAM, config.seed, at)
        if config.decoder == "sbd":
            model.mask_entropy_weight = mask_entropy_weight(config, at)
        with bf16_autocast(device, config.bf16):
            loss = net(images, noise)  # float32: each model's loss casts its output back
        everywhere = float(sum_over_ranks(torch.tensor(len(images), device=device)))
        optimise(loss * (len(images) * world_size() / everywhere), optimizer, f"epoch {epoch + 1}, step {step + 1}",
                 config.grad_clip, params)
        scheduler.step()
        sums.append((loss.item() * len(images), len(images)))
    steps = np.sum(gather_shards(np.array(sums, dtype=np.float64).reshape(-1, 2)), axis=0)  # [steps, 2]
    return float(np.mean(steps[:, 0] / steps[:, 1]))


class LossOf(nn.Module):
    """A model's `loss` as the forward of a module: DistributedDataParallel syncs gradients only through
    its wrapped module's forward."""

    def __init__(self, model: SlotModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, noise: list[torch.Generator]) -> Tensor:
        return self.model.loss(images, noise)


@torch.no_grad()
def validate(model: SlotModel, loader: DataLoader, device: torch.device, seed: int, desc: str) -> dict[str, float]:
    """val/loss (each image's randomness from its own generator, seeded by `seed` and its index: the same
    every call, in any batch), val/ari and val/fg_ari over the split; `loader` reads this rank's shard."""
    model.eval()
    total, count = 0.0, 0
    for batch in progress(loader, f"{desc} loss"):
        images = batch["image"].to(device)
        noise = example_generators(batch["index"].tolist(), VAL_LOSS_STREAM, seed)
        total += float(model.loss(images, noise)) * len(images)
        count += len(images)
    total, count = np.sum(gather_shards(np.array([total, count], dtype=np.float64)), axis=0)
    scores = evaluate(model, loader, device, desc, miou=False, max_recon_images=None)
    return {"val/loss": float(total / count), "val/ari": scores["ari"], "val/fg_ari": scores["fg_ari"]}


def train(config: SlotsConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one run in `out`, then score its best checkpoint with
    `config`'s sampler; returns the training numbers and those scores. Under torchrun every rank calls it
    (see the module's docstring)."""
    if config.decoder == "diffusion" and not config.vae:
        single_process("col775 slots train --decoder diffusion without --vae",
                       "it trains its VQ-VAE first, in one process: train one with `col775 slots train-vae` "
                       "(without torchrun) and pass its vae.pt as --vae")
    device = init_distributed(config.device)
    out = Path(out)
    run = RunDir(out, run_fields(config), force=force, rank=rank())
    barrier()  # no rank reads the folder before rank 0 has cleared (--force) or claimed it
    if not run.finished:
        _train(run, config, out, force, device)
        barrier()  # rank 0 has written metrics.json
    return run.final_metrics() | evaluate_run(config, out)


def _train(run: RunDir, config: SlotsConfig, out: Path, force: bool, device: torch.device) -> None:
    vae, vae_path = vae_for_run(config, out, force) if config.decoder == "diffusion" else (None, None)
    seed_everything(config.seed)  # the same stream whether or not a VAE was trained first
    loaders = make_loaders(config)
    model = build_model(config, vae).to(device)
    if config.compile:
        forget_compiled_code()
        compile_trainable(model)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    # step s trains at learning_rate(s + 1), so the first step is not at lr 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(config, s + 1) / config.lr)
    best = EarlyStopping(patience=0, mode="min")  # only tracks the best val loss
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "best": best}
    start, extra = run.resume(objects)
    if start:
        log.info("resuming %s at epoch %d", run.path, start + 1)
    else:  # a resumed model brings what it prepared in its state; every rank prepares from the whole batch
        share = next(iter(epoch_batches(loaders.train, config.seed, 0, 1)))["image"]
        extra = {"prepared": model.prepare(torch.from_numpy(gather_in_order(share.numpy())).to(device))}
        log.info("prepared from the first batch: %s", extra["prepared"])
    seconds = float(extra.get("train_seconds", 0.0))
    steps = config.steps_per_epoch or len(loaders.train)
    net = nn.parallel.DistributedDataParallel(LossOf(model)) if is_distributed() else None

    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        batches = epoch_batches(loaders.train, config.seed, epoch, config.steps_per_epoch)
        loss = train_epoch(model, batches, optimizer, scheduler, config, device, epoch, steps, net)
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

    barrier()  # rank 0 has written the last checkpoint
    chosen = run.load_best({"model": model})
    history = run.history()
    metrics = {
        "decoder": config.decoder, "best_epoch": chosen["epoch"], "epochs_run": len(history),
        "steps": len(history) * steps, "train_seconds": seconds,
        "val_loss": min((r["val/loss"] for r in history if "val/loss" in r), default=None),
        "parameters": sum(p.numel() for p in model.trainable_parameters()), "data": loaders.info_dict(),
        **extra.get("prepared", {}), "world_size": world_size(),
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
    return file_sha256(path)


def load_trained(config: SlotsConfig, run_dir: str | Path, device: torch.device | None = None) -> SlotModel:
    """The best checkpoint of a run in `run_dir`, in eval mode (a diffusion run's VAE weights come with it)."""
    vae = None
    if config.decoder == "diffusion":
        vae = load_vae(config.vae) if config.vae else build_vae(config.vae_arch, config.vae_num_codes)
    model = build_model(config, vae)
    RunDir(run_dir, run_fields(config), rank=rank()).load_best({"model": model})
    return model.to(device or pick_device(config.device)).eval()


def sampler_key(config: SlotsConfig) -> str:
    """The name of the evaluation a config asks for: one for the deterministic SBD, one per sampler."""
    if config.decoder == "sbd":
        return "sbd"
    return f"ddim-{config.sampler_steps}" if config.sampler == "ddim" else f"ancestral-{config.num_timesteps}"


def evaluate_run(
    config: SlotsConfig, run_dir: str | Path, model: SlotModel | None = None, loaders: Loaders | None = None
) -> dict:
    """ARI, FG-ARI, mIoU and MSE of the run's best checkpoint with `config`'s sampler (and the same per number
    of objects, "by_objects"; FG-ARI over object interiors and the share of object pixels on boundaries), cached in
    `<run_dir>/evaluation/<sampler>.json` for that checkpoint (a retrained run is evaluated again).
    Under torchrun every rank calls it: rank 0's cache decides, every rank scores its shard, rank 0 writes."""
    path = Path(run_dir) / "evaluation" / f"{sampler_key(config)}.json"
    fingerprint = checkpoint_fingerprint(run_dir)
    cached = from_rank0(json.loads(path.read_text()) if rank() == 0 and path.is_file() else None)
    if (cached and cached.get("checkpoint") == fingerprint and cached.get("recon_max_images") == config.recon_max_images
            and "fg_ari_interior" in cached):  # not one cached before the boundary scores were kept
        return cached
    device = pick_device(config.device)
    model = model or load_trained(config, run_dir, device)
    loaders = loaders or make_loaders(config)
    if config.decoder == "diffusion":
        model.use_sampler(config.sampler, config.sampler_steps)
    model.eval()
    seed_everything(config.seed)
    began = time.perf_counter()
    scores = evaluate(model, loaders.val, device, "final val", max_recon_images=config.recon_max_images,
                      seed=config.seed)  # fmt: skip
    result = {
        "ari": scores["ari"], "fg_ari": scores["fg_ari"], "miou": scores["miou"], "mse": scores["mse"],
        "fg_ari_interior": scores["fg_ari_interior"], "boundary_share": scores["boundary_share"],
        "val_images": scores["images"], "by_objects": scores["by_objects"], "recon_max_images": config.recon_max_images,
        "sampler": config.sampler_label() if config.decoder == "diffusion" else None,
        "eval_seconds": time.perf_counter() - began, "checkpoint": fingerprint,
    }  # fmt: skip
    if rank() == 0:
        path.parent.mkdir(exist_ok=True)
        atomic_write_json(path, result)
    return result
