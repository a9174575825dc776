"""The CPU pool FSDP's collective buffers come from: a buffer is handed out again only once nothing else uses it."""

from __future__ import annotations

import torch
from torch import nn

from rlhfctl.training.fsdp_buffers import BufferPool, pool_collective_buffers

CPU = torch.device("cpu")


def test_a_released_buffer_is_handed_out_again_with_the_shape_asked_for():
    pool = BufferPool()
    first = pool.take((4, 6), torch.float32, CPU)
    pointer = first.data_ptr()
    del first
    again = pool.take((24,), torch.float32, CPU)
    assert again.data_ptr() == pointer and again.shape == (24,)
    assert pool.held_bytes == 24 * 4


def test_a_buffer_still_used_through_a_view_or_a_gradient_made_of_it_is_not_reused():
    pool = BufferPool()
    gathered = pool.take((16,), torch.float32, CPU)
    shard_view = gathered.narrow(0, 8, 8)  # what all_gather_copy_in keeps of the output
    del gathered
    second = pool.take((16,), torch.float32, CPU)
    assert second.data_ptr() != shard_view.data_ptr() - 8 * 4
    grad = torch.as_strided(second, (2, 2), (2, 1), 4)  # a sharded gradient is such a view of the reduced output
    del second, shard_view
    third = pool.take((16,), torch.float32, CPU)  # the first buffer is free again, the second is the gradient's
    assert third.data_ptr() != grad.data_ptr() - 4 * 4
    assert pool.held_bytes == 2 * 16 * 4


def test_other_sizes_and_dtypes_get_their_own_buffers():
    pool = BufferPool()
    pointers = {pool.take((8,), dtype, CPU).data_ptr() for dtype in (torch.float32, torch.bfloat16)}
    pointers.add(pool.take((9,), torch.float32, CPU).data_ptr())
    assert len(pointers) == 3


def test_blocks_glibc_would_map_are_not_kept():
    pool = BufferPool(largest_bytes=64)
    big = pool.take((16,), torch.float32, CPU)  # 64 bytes: mapped by malloc and given back when freed
    assert big.shape == (16,) and pool.held_bytes == 0


def test_nothing_is_installed_off_the_cpu_or_on_an_unsharded_model():
    with torch.device("meta"):
        on_meta = nn.Linear(2, 2)
    assert not pool_collective_buffers(on_meta)
    plain = nn.Linear(2, 2)
    assert pool_collective_buffers(plain)  # installed on its FSDP units: it has none, nothing changes
    assert not hasattr(plain, "_get_fsdp_state")
