"""Sharded evaluation: every example is seen once across ranks and gathered back in order."""

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from col775.core.distributed import from_rank0, gather_in_order, gather_shards, shard_indices, sum_over_ranks


def _rank_main(rank: int, world: int, folder: str, count: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        mine = np.asarray(shard_indices(count), dtype=np.int64)
        squares = mine**2  # a per-example result, (n_rank,)
        pairs = np.stack([mine, squares], axis=1)  # rows of any width travel too, (n_rank, 2)
        sizes = [len(shard) for shard in gather_shards(squares)]
        np.savez(f"{folder}/rank{rank}.npz", mine=mine, whole=gather_in_order(pairs), sizes=sizes)
    finally:
        dist.destroy_process_group()


def test_two_ranks_see_five_examples_once_and_gather_them_in_order(tmp_path):
    count, world = 5, 2
    # fork: the children inherit the imported torch, where spawn would import it again (seconds each)
    mp.start_processes(_rank_main, args=(world, str(tmp_path), count), nprocs=world, start_method="fork")
    results = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(world)]
    assert sorted(np.concatenate([r["mine"] for r in results]).tolist()) == list(range(count))  # no padding
    expected = np.stack([np.arange(count), np.arange(count) ** 2], axis=1)
    for result in results:
        np.testing.assert_array_equal(result["whole"], expected)
        assert result["sizes"].tolist() == [3, 2]


def _shared_main(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        texts = np.array([f"program {i}" for i in shard_indices(5)], dtype=object)  # what decoding gathers
        result = {"texts": gather_in_order(texts).tolist(), "decision": from_rank0({"epochs": 10 + rank}),
                  "tokens": sum_over_ranks(torch.tensor([rank + 1, 10 * rank])).tolist()}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_three_ranks_share_rank0s_decision_sum_their_counts_and_gather_strings_in_order(tmp_path):
    mp.start_processes(_shared_main, args=(3, str(tmp_path)), nprocs=3, start_method="fork")
    for rank in range(3):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "texts": [f"program {i}" for i in range(5)], "decision": {"epochs": 10}, "tokens": [6, 30]}


def test_one_process_is_the_identity():
    values = np.arange(5.0)
    assert shard_indices(5) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(gather_in_order(values), values)
