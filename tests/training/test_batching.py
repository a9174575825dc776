"""Sharding without overlap and length-bucketed batches."""

from __future__ import annotations

from rlhfctl.training.batching import length_bucketed_batches, shard_indices, steps_per_epoch


def test_shards_do_not_overlap_have_equal_sizes_and_reshuffle_per_epoch():
    shards = [shard_indices(11, rank=rank, world_size=3, seed=5, epoch=0) for rank in range(3)]
    assert [len(shard) for shard in shards] == [3, 3, 3]  # the remainder (2 rows) is left out
    flat = [row for shard in shards for row in shard]
    assert len(set(flat)) == 9 and set(flat) <= set(range(11))
    assert shard_indices(11, rank=0, world_size=3, seed=5, epoch=1) != shards[0]
    assert shard_indices(11, rank=0, world_size=3, seed=5, epoch=0) == shards[0]  # deterministic
    assert shard_indices(5, rank=1, world_size=2, seed=0, epoch=None) == [1, 3]


def test_steps_per_epoch_counts_a_last_short_accumulation_group():
    assert steps_per_epoch(100, 2, 8) == 7  # 50 rows per worker -> 7 micro-batches
    assert steps_per_epoch(100, 2, 8, gradient_accumulation_steps=2) == 4
    assert steps_per_epoch(3, 2, 8) == 1


def test_bucketed_batches_cover_every_row_once_and_group_similar_lengths():
    lengths = {row: (row * 37) % 50 + 1 for row in range(100)}
    indices = list(range(100))
    batches = length_bucketed_batches(indices, lengths, 8, seed=1, chunk_batches=100)
    assert len(batches) == 13  # ceil(100 / 8)
    assert sorted(row for batch in batches for row in batch) == indices
    padded = sum(max(lengths[r] for r in batch) * len(batch) for batch in batches)
    unsorted = sum(max(lengths[r] for r in indices[i:i + 8]) * len(indices[i:i + 8]) for i in range(0, 100, 8))
    assert padded < 0.7 * unsorted  # far less padding than batching in file order
    assert batches == length_bucketed_batches(indices, lengths, 8, seed=1, chunk_batches=100)
