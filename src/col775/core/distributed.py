"""Evaluation under torch.distributed that counts every example exactly once.

`DistributedSampler` pads each rank's shard with repeated examples so that every rank gets the same
count; fine for training, wrong for a metric. Here each rank evaluates ``range(rank, n, world)`` (no
padding, shards differ in length by at most one) and its per-example results are gathered back into
the original order, so a metric computed from them equals the one-process metric. Without an
initialised process group every function is the one-process identity.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


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
