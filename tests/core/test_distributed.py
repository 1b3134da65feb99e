"""Sharded evaluation: every example is seen once across ranks and gathered back in order."""

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from col775.core.distributed import gather_in_order, gather_shards, shard_indices


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


def test_one_process_is_the_identity():
    values = np.arange(5.0)
    assert shard_indices(5) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(gather_in_order(values), values)
