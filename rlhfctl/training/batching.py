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


def balanced_shares(rows: Sequence[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Cut one global step's ``rows`` into ``parts`` shares (one per worker) whose padded costs are as even as can be.

    A share's cost is ``len(share) * max(lengths[i] for i in share)``: what a padded forward of it computes. Rows
    are sorted by length and cut into contiguous runs, so each share stays length-homogeneous; the cut minimises
    the largest share's cost (every share gets at least one row, ``len(rows) >= parts``). Which rows are in the
    step is unchanged, only who computes which: with the loss of each share weighted by its size (``len(share) *
    parts / len(rows)``), the averaged gradient is the mean over all rows, exactly as with equal shares, but no
    worker waits for one whose batch happens to be longer. Deterministic, so every worker computes the same cut.
    """
    if len(rows) < parts:
        raise ValueError(f"{len(rows)} rows cannot be shared by {parts} workers")
    if parts == 1:
        return [list(rows)]
    ordered = sorted(rows, key=lambda row: (lengths[row], row))
    sizes = [lengths[row] for row in ordered]

    def cut(limit: int) -> list[int] | None:
        """Greedy: the longest runs whose cost stays within ``limit``; their end offsets, or None past ``parts``."""
        ends, start = [], 0
        while start < len(sizes):
            end = start + 1
            while end < len(sizes) and (end + 1 - start) * sizes[end] <= limit:
                end += 1
            ends.append(end)
            if len(ends) > parts:
                return None
            start = end
        return ends

    low, high = max(sizes), len(sizes) * sizes[-1]  # the largest single row .. everything in one share
    while low < high:
        middle = (low + high) // 2
        if cut(middle) is None:
            low = middle + 1
        else:
            high = middle
    ends = cut(low)
    while len(ends) < parts:  # fewer runs than workers: split the longest run (costs only go down)
        widest = max(range(len(ends)), key=lambda i: ends[i] - (ends[i - 1] if i else 0))
        start = ends[widest - 1] if widest else 0
        ends.insert(widest, start + (ends[widest] - start) // 2)
    starts = [0] + ends[:-1]
    return [ordered[start:end] for start, end in zip(starts, ends)]


def evaluation_batches(items: Sequence, *, rank: int, world_size: int, batch_size: int) -> list[tuple[list, int]]:
    """This rank's share of ``items`` (every ``world_size``-th, nothing left out) in batches of ``batch_size``, as
    ``(batch, counted)`` pairs: every rank gets the same number of batches, so collective steps inside the loop
    (FSDP gathers) stay in step; a rank whose share runs short repeats items in batches it does not count
    (``counted`` is how many leading items of the batch are real). ``[]`` when there are no items at all."""
    if not items:
        return []
    share = list(items[rank::world_size])
    longest_share = math.ceil(len(items) / world_size)
    batches = []
    for start in range(0, longest_share, batch_size):
        real = share[start : start + batch_size]
        size = min(batch_size, longest_share - start)
        batch = real + [items[(start + i) % len(items)] for i in range(size - len(real))]
        batches.append((batch, len(real)))
    return batches
