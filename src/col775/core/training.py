"""Small pieces every training loop shares: seeding, device choice, early stopping, NaN guards, progress
(which also keeps where training is, for the line a Ctrl-C ends with)."""

from __future__ import annotations

import math
import os
import random
import sys
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; the run stops and keeps its last good checkpoint."""


def single_process(command: str, fix: str = "run it without torchrun") -> None:
    """Refuse a `torchrun` launch of a trainer that has no distributed support: each process would train
    its own copy and write the same run folder. `fix` says why, and what to do."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ValueError(
            f"{command} trains in one process only, but WORLD_SIZE is {world_size} (a torchrun launch); {fix}"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is passed to torch.device as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available; use --device cpu")
    return device


class EarlyStopping:
    """Stop when the watched value has not improved for `patience` epochs (patience 0 never stops)."""

    def __init__(self, patience: int, mode: str = "max", best: float | None = None, bad_epochs: int = 0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience = patience
        self.mode = mode
        self.best = best
        self.bad_epochs = bad_epochs

    def step(self, value: float) -> bool:
        """Record one epoch's value; True when it is the best so far."""
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = float(value)  # a plain float, so that a checkpoint of it loads with weights_only
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.bad_epochs = state["bad_epochs"]


def bf16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast on `device`'s type (a no-op context when not `enabled`): the mixed precision every study
    trains with where the hardware has bf16 arithmetic."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def forget_compiled_code() -> None:
    """Start a run's torch.compile from an empty cache. A study worker trains several runs in one process, and
    dynamo counts the compiled variants of a `forward` for every model it has seen towards one recompile
    limit (8): past it, that forward runs eagerly, slower and without a word but a warning."""
    torch._dynamo.reset()


def check_finite(loss: torch.Tensor | float, where: str) -> None:
    """Raise NonFiniteLossError naming where the loss went NaN or inf."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} at {where}. The run stops here and keeps its last good checkpoint; "
            "lower the learning rate, enable gradient clipping, or check the input data."
        )


_position: dict[str, int] = {}  # the training epoch (1-based, as the logs count) and steps done in it


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False, epoch: int | None = None
) -> Iterable[T]:
    """A tqdm bar on stderr; silent when COL775_NO_PROGRESS=1 or on a non-zero distributed rank.
    Given `epoch` (0-based), the bar is that epoch's training pass and `position` follows its steps."""
    disabled = os.environ.get("COL775_NO_PROGRESS") == "1" or os.environ.get("RANK", "0") != "0"
    bar = tqdm(iterable, desc=desc, total=total, leave=leave, disable=disabled, file=sys.stderr, dynamic_ncols=True)
    return bar if epoch is None else _tracked(bar, epoch)


def _tracked(items: Iterable[T], epoch: int) -> Iterator[T]:
    _position.update(epoch=epoch + 1, step=0)
    for item in items:
        yield item
        _position["step"] += 1  # the loop came back for the next batch: one more step is done


def position() -> tuple[int, int] | None:
    """(epoch, steps done in it) of the last training epoch this process began, counting epochs from 1
    as the logs do; None before any."""
    return (_position["epoch"], _position["step"]) if _position else None


def optimise(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    where: str,
    grad_clip: float = 0.0,
    parameters: Iterable[torch.nn.Parameter] | None = None,
) -> None:
    """One guarded update: refuse a NaN/inf loss (before it reaches the weights), backward,
    clip the gradient norm of `parameters` (all the optimiser's when None) if `grad_clip` > 0, step."""
    check_finite(loss, where)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = parameters if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
