"""Train and evaluate one ResNet run: `col775 resnet train`.

One epoch = a pass over train with the optimiser, then two evaluations (model in eval mode, no
augmentation): a fixed seeded sample of train (`train_eval_size` images) and val. Each writes loss,
accuracy, micro F1 and macro F1 to metrics.jsonl (`train/...`, `val/...`), beside the running numbers of
the augmented training pass (`train_aug/...`), and a checkpoint follows every epoch. At the end the best
checkpoint (by val accuracy) is evaluated the same way on all of train, val and test, and the run's
train and val curves are drawn to plots/curves.png.

Under `torchrun --nproc_per_node=N -m col775 resnet train ...` the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA); every rank evaluates its unpadded shard and the
per-image results are gathered in order (core/distributed.py), so every image counts once; only rank 0
writes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from col775.core.distributed import (barrier, broadcast_from_rank0, gather_in_order, gather_shards,
                                     init_distributed, is_distributed, rank)
from col775.core.plots import line_panels
from col775.core.runs import RunDir
from col775.core.training import (EarlyStopping, NonFiniteLossError, bf16_autocast, forget_compiled_code, optimise,
                                  progress, seed_everything)
from col775.resnet.config import ResnetConfig, run_fields
from col775.resnet.augment import BatchAugment
from col775.resnet.data import Loaders, build_loaders, normalize
from col775.resnet.norms import clamp_gates
from col775.resnet.resnet import ResNet
from col775.resnet.synthetic import BIRDS25_CLASSES, generate_image_folder

log = logging.getLogger(__name__)

CURVES = (("loss", "error (cross-entropy)"), ("accuracy", "accuracy"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1"))


class RunDiverged(NonFiniteLossError):
    """The loss went NaN or inf in `epoch` (0-based); `last_finite_loss` is the epoch's last finite step
    loss (None when its first step diverged). A study records it and goes on with its other runs."""

    def __init__(self, message: str, epoch: int, last_finite_loss: float | None):
        super().__init__(message)
        self.epoch = epoch
        self.last_finite_loss = last_finite_loss


def cache_root(config: ResnetConfig) -> Path:
    return Path(config.cache_dir or "~/.cache/col775").expanduser()


def data_root(config: ResnetConfig) -> Path:
    """The user's data folder, or the synthetic set (generated once, then reused) when none is given."""
    if config.data:
        return Path(config.data).expanduser()
    name = (
        f"birds-synthetic-s{config.image_size}-{config.synthetic_train_per_class}-"
        f"{config.synthetic_val_per_class}-{config.synthetic_test_per_class}-seed{config.seed}"
    )
    root = cache_root(config) / "synthetic" / name
    if rank() == 0:
        generate_image_folder(
            root,
            train_per_class=config.synthetic_train_per_class,
            val_per_class=config.synthetic_val_per_class,
            test_per_class=config.synthetic_test_per_class,
            size=config.image_size,
            seed=config.seed,
            class_names=BIRDS25_CLASSES,
        )
    barrier()
    return root


def make_loaders(config: ResnetConfig, batch_size: int | None = None) -> Loaders:
    """The run's loaders; with ``augment: device`` they hand out the cached uint8 pixels as they are
    (``_to_device`` augments and normalises them on the device)."""
    on_device = config.augment == "device"
    return build_loaders(
        data_root(config),
        image_size=config.image_size,
        batch_size=batch_size or config.batch_size,
        eval_batch_size=config.eval_batch_size,
        augment="none" if on_device else config.augment,
        as_float=not on_device,
        num_workers=config.num_workers,
        test_fraction=config.test_fraction,
        seed=config.seed,
        cache_dir=cache_root(config) / "images",
        progress=rank() == 0,
        train_eval_size=config.train_eval_size,
    )


def build_model(config: ResnetConfig, num_classes: int) -> ResNet:
    kwargs = {"num_groups": config.gn_groups} if config.norm == "gn" else {}
    return ResNet(config.n, num_classes, config.norm, **kwargs)


def build_optimizer(config: ResnetConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on conv/linear weights only: decaying norm gains and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose sgd, adam or adamw")


def build_scheduler(config: ResnetConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step schedule: linear warm-up, then cosine to zero, steps of `gamma`, or constant."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(config.epochs * steps_per_epoch, 1)
    if config.schedule not in ("cosine", "step", "none"):
        raise ValueError(f"unknown schedule {config.schedule!r}; choose cosine, step or none")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress_ = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))
        if config.schedule == "step":
            return config.gamma ** (step // (config.step_size * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Evaluation:
    """Metrics of one pass and the per-image predictions and labels they came from."""

    loss: float
    accuracy: float
    micro_f1: float
    macro_f1: float
    predictions: np.ndarray
    labels: np.ndarray

    def numbers(self) -> dict[str, float]:
        return {"loss": self.loss, "accuracy": self.accuracy, "micro_f1": self.micro_f1, "macro_f1": self.macro_f1}

    def summary(self) -> dict[str, float | int]:
        """The numbers and how many images they count."""
        return self.numbers() | {"n": len(self.labels)}


def score(losses: np.ndarray, predictions: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Mean per-image cross-entropy and scikit-learn's accuracy and F1s; the F1s average over the
    classes present in the labels or predictions, so a split that lacks some classes is not penalised."""
    return Evaluation(
        loss=float(np.mean(losses, dtype=np.float64)),
        accuracy=float(accuracy_score(labels, predictions)),
        micro_f1=float(f1_score(labels, predictions, average="micro", zero_division=0)),
        macro_f1=float(f1_score(labels, predictions, average="macro", zero_division=0)),
        predictions=predictions,
        labels=labels,
    )


class _Outputs:
    """Per-image cross-entropy, prediction and label of the batches seen so far, on the CPU."""

    def __init__(self):
        self.losses: list[np.ndarray] = []
        self.predictions: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.detach().float()
        self.losses.append(F.cross_entropy(logits, targets, reduction="none").cpu().numpy())
        self.predictions.append(logits.argmax(1).cpu().numpy())
        self.labels.append(targets.cpu().numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        join = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return join(self.losses, np.float32), join(self.predictions, np.int64), join(self.labels, np.int64)


def fast_formats(config: ResnetConfig, device: torch.device) -> bool:
    """Whether `amp` and `channels_last` apply on `device`: always on CUDA, on the CPU with `cpu_bf16`."""
    return device.type == "cuda" or config.cpu_bf16


def amp_enabled(config: ResnetConfig, device: torch.device) -> bool:
    """Whether training and evaluation on `device` run under bf16 autocast."""
    return config.amp and fast_formats(config, device)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool, desc: str) -> Evaluation:
    """Score ``model`` in eval mode on ``loader`` (one of :class:`Loaders`' evaluation loaders, which
    under torch.distributed read this rank's shard); the per-image results of every rank are gathered
    in the dataset's order, so every rank returns the same whole-split Evaluation.

    Pass the bare model, not its DistributedDataParallel wrapper: shards may differ by a batch.
    """
    model.eval()
    outputs = _Outputs()
    for images, targets in progress(loader, desc):
        images, targets = _to_device(images, targets, device)
        with bf16_autocast(device, amp):
            outputs.add(model(images), targets)
    return score(*(gather_in_order(array) for array in outputs.arrays()))


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, augment: BatchAugment | None = None):
    """Move a batch to ``device``; uint8 pixels (``augment: device``) are augmented there, then normalised."""
    images = images.to(device, non_blocking=True)
    if not images.is_floating_point():
        images = normalize(augment(images) if augment is not None else images)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def train_epoch(model, loader, optimizer, scheduler, config: ResnetConfig, device, epoch: int):
    """One pass over train; returns its running metrics (train mode, augmented images, weights
    changing as it goes) and the images per second it trained at."""
    model.train()
    outputs = _Outputs()
    seen, start = 0, time.perf_counter()
    limit = config.max_steps_per_epoch or None
    total = min(len(loader), limit) if limit else len(loader)
    augment = BatchAugment(config.image_size) if config.augment == "device" else None
    last_loss = None
    for step, (images, targets) in enumerate(progress(loader, f"epoch {epoch + 1} train", total=total, epoch=epoch)):
        if limit and step >= limit:
            break
        images, targets = _to_device(images, targets, device, augment)
        with bf16_autocast(device, amp_enabled(config, device)):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets)
        try:
            optimise(loss, optimizer, f"epoch {epoch + 1}, step {step + 1}", config.grad_clip)
        except NonFiniteLossError as error:
            raise RunDiverged(str(error), epoch, last_loss) from error
        clamp_gates(model)  # BIN's rho must stay in [0, 1] after every step
        scheduler.step()
        last_loss = loss.item()
        outputs.add(logits, targets)
        seen += len(targets)
    elapsed = time.perf_counter() - start
    running = score(*(np.concatenate(gather_shards(array)) for array in outputs.arrays()))
    return running, seen / max(elapsed, 1e-9)


def plot_curves(history: list[dict], path: Path, title: str) -> Path:
    """Train (eval mode, the fixed train sample) and val curves of the four metrics, a panel each."""
    epochs = [record["epoch"] + 1 for record in history]
    panels = {
        label: {split: (epochs, [record[f"{split}/{key}"] for record in history]) for split in ("train", "val")}
        for key, label in CURVES
    }
    return line_panels(panels, path, title)


def train(config: ResnetConfig, out: str | Path, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one run in `out`; returns its metrics.json content."""
    device = init_distributed(config.device)
    seed_everything(config.seed)
    run = RunDir(out, run_fields(config), force=force, rank=rank())
    barrier()  # no rank reads the folder before rank 0 has cleared (--force) or claimed it
    if run.finished:
        log.info("%s already finished; pass --force to train it again", out)
        return run.final_metrics()

    loaders = make_loaders(config)
    num_classes = loaders.info.num_classes
    model = build_model(config, num_classes).to(device)
    if config.channels_last and fast_formats(config, device):
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        forget_compiled_code()
    compiled = torch.compile if config.compile else (lambda module: module)
    # Evaluation runs on the bare model: under DDP each rank's unpadded shard may be a batch short of another's.
    scorer = compiled(model)
    net = compiled(nn.parallel.DistributedDataParallel(model)) if is_distributed() else scorer
    amp = amp_enabled(config, device)
    optimizer = build_optimizer(config, model)
    steps = min(len(loaders.train), config.max_steps_per_epoch or len(loaders.train))
    scheduler = build_scheduler(config, optimizer, steps)
    stopper = EarlyStopping(config.patience, mode="max")
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "early_stopping": stopper}
    start, extra = run.resume(objects)
    rates = list(extra.get("images_per_second", []))
    if start:
        log.info("resuming %s at epoch %d", out, start + 1)

    for epoch in range(start, config.epochs):
        if stopper.should_stop:
            break
        began = time.perf_counter()
        loaders.set_epoch(epoch)
        if loaders.train.generator is not None:  # the shuffle order depends on the epoch alone, so a
            loaders.train.generator.manual_seed(config.seed + epoch)  # resumed run sees the same batches
        trained, rate = train_epoch(net, loaders.train, optimizer, scheduler, config, device, epoch)
        rates.append(rate)
        broadcast_from_rank0(model.buffers())  # the BN statistics each rank's last step left, made rank 0's
        sample = evaluate(scorer, loaders.train_sample, device, amp, f"epoch {epoch + 1} train sample")
        val = evaluate(scorer, loaders.val, device, amp, f"epoch {epoch + 1} val")
        improved = stopper.step(val.accuracy)
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "images_per_second": rate,
                  "epoch_seconds": time.perf_counter() - began}  # training and both evaluations
        record |= {f"train_aug/{k}": v for k, v in trained.numbers().items()}
        record |= {f"train/{k}": v for k, v in sample.numbers().items()}
        record |= {f"val/{k}": v for k, v in val.numbers().items()}
        run.log_epoch(record)
        run.save_checkpoint(epoch, objects, best=improved, extra={"images_per_second": rates})
        log.info("epoch %d: train acc %.3f (eval mode, fixed sample; augmented running %.3f), val acc %.3f",
                 epoch + 1, sample.accuracy, trained.accuracy, val.accuracy)

    best = run.load_best({"model": model}) if run.writes else {"epoch": None}
    broadcast_from_rank0(model.state_dict().values())  # every rank evaluates the best weights rank 0 loaded
    final = {
        split: evaluate(scorer, loader, device, amp, f"final {split}").summary()
        for split, loader in (("train", loaders.train_eval), ("val", loaders.val), ("test", loaders.test))
    }
    history = run.history()
    if run.writes:
        plot_curves(history, run.plots_dir / "curves.png", f"{Path(out).name}: train (eval mode) and val")
    metrics = final | {
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_early": len(history) < config.epochs,
        "images_per_second": float(np.median(rates)) if rates else None,
        "train_sample_size": len(loaders.train_sample.dataset),
        "data": loaders.info.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    run.finish(metrics)
    return metrics
