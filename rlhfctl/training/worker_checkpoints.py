"""Where a worker finds the checkpoint to resume from and how it writes one, on Ray Train or in one process (what
:meth:`rlhfctl.training.worker.WorkerContext.restore` and ``save`` call; the folder format is
:mod:`rlhfctl.training.checkpoint`'s).

```python
with latest_checkpoint_folder(mode="ray", run_dir=run_dir, resume_from=None) as folder:   # Path or None
    ...
write_local_checkpoint(state, run_dir, "checkpoint_000010", rng_states=..., metrics={}, num_to_keep=2)
```
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlhfctl.runfiles import CHECKPOINT_PREFIX
from rlhfctl.training import checkpoint as ckpt
from rlhfctl.training.checkpoint import TrainState


@contextlib.contextmanager
def latest_checkpoint_folder(*, mode: str, run_dir: str, resume_from: str | None) -> Iterator[Path | None]:
    """The newest complete checkpoint among the one the driver found for ``--resume`` (``resume_from``), Ray
    Train's latest (after a worker restart; ``mode == "ray"``) and, in one process, the run directory's latest;
    None when there is none. Ray's folder is only valid inside the block."""
    candidates: list[tuple[int, Path]] = []
    if resume_from and ckpt.is_complete(Path(resume_from)):
        candidates.append((ckpt.read_step(Path(resume_from)), Path(resume_from)))
    with contextlib.ExitStack() as stack:
        if mode == "ray":
            import ray.train

            ray_checkpoint = ray.train.get_checkpoint()
            if ray_checkpoint is not None:
                folder = Path(stack.enter_context(ray_checkpoint.as_directory()))
                if ckpt.is_complete(folder):
                    candidates.append((ckpt.read_step(folder), folder))
        if mode != "ray":
            latest = ckpt.latest_checkpoint(Path(run_dir)) if resume_from else None
            if latest is not None:
                candidates.append((ckpt.read_step(latest), latest))
        yield max(candidates, key=lambda item: item[0])[1] if candidates else None


def report_ray_checkpoint(state: TrainState, name: str, *, rng_states: list[dict[str, Any]],
                          metrics: dict[str, float], is_main: bool, sharded: bool, world_size: int,
                          all_gather: Callable[[Any], list[Any]]) -> None:
    """Every rank: write this rank's part of the checkpoint into a temporary folder and report it to Ray Train
    (a barrier). Sharded (FSDP): every rank writes its shards and rank 0 the index; otherwise rank 0 writes all."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="rlhfctl-ckpt-") as tmp:
        checkpoint = None
        shard_files = None
        if sharded:  # every rank writes its shards; Ray Train merges the ranks' folders
            from rlhfctl.training.sharded_checkpoint import write_shards

            shard_files = {name: size for files in all_gather(write_shards(state, Path(tmp)))
                           for name, size in files.items()}
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        if is_main:
            ckpt.write_checkpoint(state, Path(tmp), rng_states=rng_states, metrics=metrics,
                                  shard_files=shard_files, world_size=world_size)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"step": state.step, **metrics}, checkpoint=checkpoint, checkpoint_dir_name=name)


def write_local_checkpoint(state: TrainState, run_dir: Path, name: str, *, rng_states: list[dict[str, Any]],
                           metrics: dict[str, float], num_to_keep: int) -> None:
    """One process: write ``run_dir/name`` atomically (a temporary folder renamed), then keep only the newest
    ``num_to_keep`` complete checkpoints."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt.write_checkpoint(state, tmp, rng_states=rng_states, metrics=metrics)
    final = run_dir / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    complete = sorted(
        (ckpt.read_step(child), child) for child in run_dir.iterdir()
        if child.is_dir() and child.name.startswith(CHECKPOINT_PREFIX) and ckpt.is_complete(child)
    )
    for _, old in complete[: max(0, len(complete) - num_to_keep)]:
        shutil.rmtree(old, ignore_errors=True)


def inject_fault(fault: dict[str, Any], step: int, *, rank: int, world_size: int) -> None:
    """Test hook: once (a marker file remembers), right after the checkpoint of ``after_step``, the last rank
    kills its own process (``action="kill"``) or raises (``action="raise"``, for the in-process path)."""
    if not fault or step != fault.get("after_step") or rank != world_size - 1:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"fault injected on rank {rank} after step {step}\n", encoding="utf-8")
    if fault.get("action", "kill") == "raise":
        raise RuntimeError(f"injected fault after step {step}")
    os.kill(os.getpid(), signal.SIGKILL)
