"""One Ray Train worker's RM step, alone: what a malloc setting costs a single-threaded training process.

    /work/wt/bin/quiet python benchmarks/alloc_step_probe.py default thread 7
    /work/wt/bin/quiet python benchmarks/alloc_step_probe.py mmap1024 thread 7   # threshold fixed at 1 MiB
    MODE: default | mmapN (mmap threshold fixed at N KiB, trim threshold 2N) | trim (malloc_trim(0) after each
    optimizer step) | arenaN (M_ARENA_MAX=N); WHERE: main | thread (a non-main thread, as Ray Train runs the loop)

The ~60 M-parameter Llama of ``bench_memory.py`` (build it there first) as a sequence-classification RM with
gradient checkpointing, one torch thread (a worker with 1 CPU), 2 micro-batches of 2 pairs x 256 tokens per
step (a worker's share of the ``llama-rm-gc-2w`` case), AdamW. Prints, over the steps after the first two, the
mean step time, minor page faults, system and user CPU seconds per step, and the process's peak RSS (VmHWM).
No Ray, no memory sampler: the allocator's own cost.
"""

from __future__ import annotations

import ctypes
import resource
import sys
import threading
import time
from pathlib import Path

MODEL = Path(__file__).resolve().parent / "results" / "work" / "memory" / "models" / "llama60m"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


def configure(libc: ctypes.CDLL, mode: str) -> None:
    if mode.startswith("mmap"):
        threshold = int(mode[4:]) * 1024
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold)
    elif mode.startswith("arena"):
        libc.mallopt(M_ARENA_MAX, int(mode[5:]))
    elif mode not in ("default", "trim"):
        raise SystemExit(f"unknown mode {mode!r}")


def train(mode: str, steps: int, libc: ctypes.CDLL) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1)
    model.config.pad_token_id = 0
    model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = torch.randint(5, 8000, (4, 256))
    per_step = []
    for _ in range(steps):
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for micro in range(2):
            scores = model(input_ids=tokens[2 * micro:2 * micro + 2]).logits
            (-torch.nn.functional.logsigmoid(scores[0] - scores[1]).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mode == "trim":
            libc.malloc_trim(ctypes.c_size_t(0))
        after = resource.getrusage(resource.RUSAGE_SELF)
        per_step.append((time.perf_counter() - started, after.ru_minflt - before.ru_minflt,
                         after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime))
    steady = per_step[2:]
    mean = [sum(column) / len(steady) for column in zip(*steady)]
    peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024**2
    print(f"{mode:9} step {mean[0]:.3f} s  minflt/step {mean[1]:.0f}  sys/step {mean[2]:.3f} s  "
          f"user/step {mean[3]:.3f} s  VmHWM {peak:.2f} GiB", flush=True)


def main(argv: list[str]) -> int:
    mode, where, steps = argv[0], argv[1], int(argv[2])
    libc = ctypes.CDLL(None)
    configure(libc, mode)
    if where == "main":
        train(mode, steps, libc)
    else:
        worker = threading.Thread(target=train, args=(mode, steps, libc))
        worker.start()
        worker.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
