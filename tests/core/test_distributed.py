"""Sharded evaluation: every example is seen once across ranks and gathered back in order."""

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from col775.core.distributed import gather_in_order, gather_shards, shard_indices


def _rank_main(rank: int, world: int, store: str, count: int, results) -> None:
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    try:
        mine = shard_indices(count)
        squares = np.asarray(mine, dtype=np.int64) ** 2  # a per-example result, (n_rank,)
        pairs = np.stack([mine, squares], axis=1)  # rows of any width travel too, (n_rank, 2)
        results[rank] = (mine, gather_in_order(pairs), [len(s) for s in gather_shards(squares)])
    finally:
        dist.destroy_process_group()


def test_two_ranks_see_five_examples_once_and_gather_them_in_order(tmp_path):
    count, world = 5, 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(world, f"file://{tmp_path / 'store'}", count, results), nprocs=world)
        results = dict(results)
    seen = sorted(i for mine, _, _ in results.values() for i in mine)
    assert seen == list(range(count))  # no padding, no repeats
    expected = np.stack([np.arange(count), np.arange(count) ** 2], axis=1)
    for rank in range(world):
        np.testing.assert_array_equal(results[rank][1], expected)
        assert results[rank][2] == [3, 2]


def test_one_process_is_the_identity():
    values = np.arange(5.0)
    assert shard_indices(5) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(gather_in_order(values), values)
