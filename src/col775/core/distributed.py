"""Evaluation under torch.distributed that counts every example exactly once.

`DistributedSampler` pads each rank's shard with repeated examples so that every rank gets the same
count; fine for training, wrong for a metric. Here each rank evaluates ``range(rank, n, world)`` (no
padding, shards differ in length by at most one) and its per-example results are gathered back into
the original order, so a metric computed from them equals the one-process metric. Without an
initialised process group every function is the one-process identity.

A trainer joins the process group with :func:`init_distributed` (under `torchrun`, WORLD_SIZE > 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from col775.core.training import pick_device

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1: NCCL on CUDA, gloo on CPU) and return
    this rank's device; otherwise ``pick_device(device)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    return pick_device(device)


def shard_indices(count: int) -> list[int]:
    """This rank's share of ``range(count)``: every ``world_size()``-th index from ``rank()``.

    Pass it to a DataLoader as ``sampler``; :func:`gather_in_order` undoes the split.
    """
    return list(range(rank(), count, world_size()))


def gather_shards(values: np.ndarray) -> list[np.ndarray]:
    """Every rank's ``values`` (arrays of any lengths), indexed by rank; ``[values]`` alone."""
    if not is_distributed():
        return [values]
    gathered: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(gathered, values)
    return gathered


def gather_in_order(values: np.ndarray) -> np.ndarray:
    """Per-example ``values`` of this rank's :func:`shard_indices`, gathered from every rank and put
    back in the original order (rows along the first axis); every rank gets the whole array."""
    shards = gather_shards(values)
    total = sum(len(shard) for shard in shards)
    whole = np.empty((total, *values.shape[1:]), dtype=values.dtype)
    for index, shard in enumerate(shards):
        whole[index :: len(shards)] = shard
    return whole


def broadcast_from_rank0(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` (e.g. a model's state) on every rank with rank 0's values, in place."""
    if is_distributed():
        for tensor in tensors:
            dist.broadcast(tensor, 0)


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written what the others read)."""
    if is_distributed():
        dist.barrier()


def from_rank0(value: T) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank: for decisions every rank must share."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank (on this rank's device, as NCCL needs), in place; returned."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor
