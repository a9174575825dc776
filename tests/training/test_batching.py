"""Sharding without overlap and length-bucketed batches."""

from __future__ import annotations

import itertools
import random

import pytest

from rlhfctl.training.batching import balanced_shares, length_bucketed_batches, shard_indices, steps_per_epoch


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


def _cost(share, lengths):
    return len(share) * max(lengths[row] for row in share)


def test_balanced_shares_even_out_padded_cost():
    lengths = {0: 10, 1: 10, 2: 50, 3: 50, 4: 12, 5: 11, 6: 48, 7: 49}  # a short and a long worker batch
    shares = balanced_shares([0, 1, 4, 5, 2, 3, 6, 7], lengths, 2)
    assert shares == [[0, 1, 5, 4], [6, 7, 2, 3]]  # 4 x 12 and 4 x 50: sorted, cut where the max is least
    uneven = {0: 10, 1: 10, 2: 10, 3: 10, 4: 10, 5: 10, 6: 80, 7: 80}
    shares = balanced_shares(list(uneven), uneven, 2)
    assert shares == [[0, 1, 2, 3, 4, 5], [6, 7]]  # 6 x 10 vs 2 x 80 instead of 4 x 10 vs 4 x 80
    assert balanced_shares([3, 1, 2], {1: 5, 2: 1, 3: 9}, 1) == [[3, 1, 2]]  # one worker: untouched


def test_balanced_shares_is_the_best_contiguous_cut_and_keeps_every_row_once():
    rng = random.Random(0)
    for _ in range(500):
        rows = rng.sample(range(100), rng.randint(2, 14))
        lengths = {row: rng.randint(1, 128) for row in rows}
        parts = rng.randint(2, min(len(rows), 4))
        shares = balanced_shares(rows, lengths, parts)
        assert len(shares) == parts and all(shares)
        assert sorted(row for share in shares for row in share) == sorted(rows)
        ordered = sorted(rows, key=lambda row: (lengths[row], row))
        best = min(max(_cost(ordered[a:b], lengths) for a, b in zip((0, *cuts), (*cuts, len(rows))))
                   for cuts in itertools.combinations(range(1, len(rows)), parts - 1))
        assert max(_cost(share, lengths) for share in shares) == best


def test_balanced_shares_needs_a_row_per_worker():
    with pytest.raises(ValueError, match="2 rows cannot be shared by 3 workers"):
        balanced_shares([0, 1], [5, 5], 3)


def test_evaluation_batches_keep_every_worker_in_step_and_count_each_item_once():
    from rlhfctl.training.batching import evaluation_batches

    items = list(range(17))
    rank0 = evaluation_batches(items, rank=0, world_size=2, batch_size=8)
    rank1 = evaluation_batches(items, rank=1, world_size=2, batch_size=8)
    assert rank0 == [([0, 2, 4, 6, 8, 10, 12, 14], 8), ([16], 1)]
    assert rank1 == [([1, 3, 5, 7, 9, 11, 13, 15], 8), ([8], 0)]  # a padding batch of the same size, not counted
    counted = [item for batches in (rank0, rank1) for batch, real in batches for item in batch[:real]]
    assert sorted(counted) == items
    # fewer items than workers: the rank without any still runs the batch
    assert evaluation_batches([5], rank=1, world_size=2, batch_size=8) == [([5], 0)]
    assert evaluation_batches([], rank=0, world_size=2, batch_size=8) == []
    assert evaluation_batches(items, rank=0, world_size=1, batch_size=8) == [
        (items[:8], 8), (items[8:16], 8), (items[16:], 1)]
