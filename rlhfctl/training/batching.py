"""Step arithmetic and length-bucketed batching (pure Python: the driver plans with it, workers batch with it)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def rows_per_worker(num_rows: int, world_size: int) -> int:
    """Rows each worker gets per epoch: an equal share (the remainder is left out so every worker steps together)."""
    return num_rows // world_size


def micro_batches_per_epoch(num_rows: int, world_size: int, batch_size: int) -> int:
    return math.ceil(rows_per_worker(num_rows, world_size) / batch_size)


def steps_per_epoch(num_rows: int, world_size: int, batch_size: int, gradient_accumulation_steps: int = 1) -> int:
    """Optimizer steps per epoch (a last, shorter accumulation group still makes a step)."""
    return math.ceil(micro_batches_per_epoch(num_rows, world_size, batch_size) / gradient_accumulation_steps)


def shard_indices(num_rows: int, *, rank: int, world_size: int, seed: int, epoch: int | None) -> list[int]:
    """This rank's row indices: a seeded permutation per epoch (``epoch=None``: no shuffle), split without overlap.

    Every rank computes the same permutation and takes every ``world_size``-th row from its own offset; the
    remainder ``num_rows % world_size`` is left out so that all ranks have the same number of rows.
    """
    order = list(range(num_rows))
    if epoch is not None:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    usable = num_rows - num_rows % world_size
    return order[:usable][rank::world_size]


def length_bucketed_batches(
    indices: Sequence[int],
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    chunk_batches: int = 16,
) -> list[list[int]]:
    """Cut ``indices`` (already shuffled) into batches of similar length, in shuffled batch order.

    Rows are taken in chunks of ``batch_size * chunk_batches``; each chunk is sorted by length (``lengths[i]`` is
    row ``i``'s token count) and cut into batches, so padding waste stays small while the data order stays random
    at the chunk level. The number of batches equals ``ceil(len(indices) / batch_size)`` whatever the lengths.
    """
    chunk_size = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(indices), chunk_size):
        chunk = sorted(indices[start:start + chunk_size], key=lambda row: lengths[row], reverse=True)
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    random.Random(seed).shuffle(batches)
    return batches
