"""Two FSDP workers' RM steps, alone: what stays in glibc's heap, with and without the pooled collective buffers.

    /work/wt/bin/shared python benchmarks/fsdp_heap_probe.py pool 6      # rlhfctl's sharding (buffers pooled)
    /work/wt/bin/shared python benchmarks/fsdp_heap_probe.py nopool 6    # FSDP2's own allocation
    MODE: pool | nopool, optionally +keep (units keep their full parameters from the forward to the backward:
    ``set_reshard_after_forward(False)``), +trim (``malloc_trim(0)`` after every optimizer step), +eager (Adam's
    moments and the sharded gradients created before the first forward: a zero-gradient step at learning rate 0,
    its step count reset) and +keepgrad (``zero_grad(set_to_none=False)``: the sharded gradients kept across
    steps); STEPS: optimizer steps (the first two are not counted)

The ~60 M-parameter Llama of ``bench_memory.py`` (build it there first) as a sequence-classification RM with
gradient checkpointing, sharded by :func:`rlhfctl.training.fsdp.shard_model` over 2 gloo processes (one torch
thread each, the loop in a non-main thread as Ray Train runs it), 2 micro-batches of 2 pairs x 256 tokens per
step (a worker's share of ``llama-rm-fsdp-gc-2w``), AdamW. Rank 0 prints the mean step time over the steps after
the first two, its peak RSS (VmHWM), and glibc's ``mallinfo2()`` after the last step: bytes in use, free bytes the
heaps keep, bytes mmapped. No Ray, no memory sampler.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
import time
from pathlib import Path

MODEL = Path(__file__).resolve().parent / "results" / "work" / "memory" / "models" / "llama60m"


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_line() -> str:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    status = Path("/proc/self/status").read_text()
    rss, hwm = (int(status.split(f"{key}:")[1].split()[0]) / 1024**2 for key in ("VmRSS", "VmHWM"))
    return (f"heap in use {info.uordblks / 1e9:.3f} GB  heap free {info.fordblks / 1e9:.3f} GB  "
            f"mmapped {info.hblkhd / 1e9:.3f} GB  RSS {rss:.2f} GiB  VmHWM {hwm:.2f} GiB")


def train(rank: int, mode: str, steps: int) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhfctl.training import fsdp, fsdp_buffers

    torch.set_num_threads(1)
    if "nopool" in mode:
        fsdp.pool_collective_buffers = lambda model: False
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1)
    model.config.pad_token_id = 0
    model.gradient_checkpointing_enable()
    model.train()
    model = fsdp.shard_model(model)
    if "keep" in mode:
        for unit in fsdp.fsdp_units(model):
            unit.set_reshard_after_forward(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if "eager" in mode:
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.param_groups[0]["lr"] = 0.0
        optimizer.step()
        optimizer.param_groups[0]["lr"] = lr
        for state in optimizer.state.values():
            state["step"].zero_()
    tokens = torch.randint(5, 8000, (4, 256), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        for micro in range(2):
            scores = model(input_ids=tokens[2 * micro:2 * micro + 2]).logits
            (-torch.nn.functional.logsigmoid(scores[0] - scores[1]).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none="keepgrad" not in mode)
        if "trim" in mode:
            ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(0))
        times.append(time.perf_counter() - started)
    if rank == 0:
        steady = times[2:]
        print(f"{mode:12} step {sum(steady) / len(steady):.3f} s  {heap_line()}  "
              f"pool {fsdp_buffers._POOL.held_bytes / 1e9:.3f} GB", flush=True)


def worker(rank: int, mode: str, steps: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    loop = threading.Thread(target=train, args=(rank, mode, steps))
    loop.start()
    loop.join()
    dist.destroy_process_group()


def main(argv: list[str]) -> int:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(argv[0], int(argv[1]), port), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
