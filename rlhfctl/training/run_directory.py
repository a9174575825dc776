"""A run's folders and the rules that guard them: where a stage writes (:class:`RunPaths`), whether an earlier run
is there, and the resume/force rules applied before anything starts.

```python
paths = RunPaths("rm", config)                    # output_dir, checkpoint_dir, run_dir (Ray Train's experiment)
refuse_existing_run(paths, resume=False, force=False)   # UserError over an earlier run without --resume/--force
resume_from = prepare_run_directory(paths, resume="auto", force=False)  # the checkpoint to resume from, or None
```

A fresh run refuses to start over an earlier run's state unless ``resume`` (continue from its latest complete
checkpoint; ``"auto"`` = only if one exists) or ``force`` (wipe and start over).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.errors import UserError
from rlhfctl.runfiles import (
    EVENTS_FILE,
    METRICS_FILE,
    RAY_SNAPSHOT_GLOB,
    RESOLVED_CONFIG_FILE,
    SAMPLES_FILE,
    TENSORBOARD_DIR,
    TRACKERS_FILE,
    run_dir_name,
)
from rlhfctl.training import checkpoint as ckpt


@dataclass(frozen=True)
class RunPaths:
    """Where a stage's run writes, from its config alone (known before the job is built)."""

    stage: str
    config: Any

    @property
    def output_dir(self) -> Path:
        return Path(self.config.general.output_dir).expanduser().resolve()

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.config.general.checkpoint_dir).expanduser().resolve()

    @property
    def run_name(self) -> str:
        return run_dir_name(self.stage)

    @property
    def run_dir(self) -> Path:
        """Ray Train's experiment folder (``storage_path/name``): the checkpoints live here."""
        return self.output_dir / self.run_name


def has_previous_run(paths: RunPaths) -> bool:
    run_dir = paths.run_dir
    return run_dir.is_dir() and (ckpt.latest_checkpoint(run_dir) is not None or any(run_dir.glob(RAY_SNAPSHOT_GLOB)))


def changed_config_keys(previous_path: Path, config: Any) -> list[str]:
    """Dotted keys whose value differs between the earlier run's resolved config and ``config``."""
    from rlhfctl.config.loader import tomllib
    from rlhfctl.config.render import config_to_dict, dotted_values

    try:
        previous = tomllib.loads(previous_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    before, after = dotted_values(previous), dotted_values(config_to_dict(config))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def resume_command(stage: str, config_path: str | None = None) -> str:
    return f"rlhfctl {stage} train {config_path or '<config.toml>'} --resume"


def prepare_run_directory(paths: RunPaths, *, resume: bool | str, force: bool) -> Path | None:
    """Apply the resume/force rules; return the checkpoint to resume from (None for a fresh start)."""
    output_dir = paths.output_dir
    output_dir_existed = output_dir.exists()
    try:
        paths.checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create general.checkpoint_dir {paths.checkpoint_dir}: {exc}") from None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".rlhfctl-write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        if not output_dir_existed:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise UserError(f"cannot write to general.output_dir {output_dir}: {exc}") from None

    refuse_existing_run(paths, resume=resume, force=force)
    if resume and has_previous_run(paths):
        return ckpt.latest_checkpoint(paths.run_dir)  # None with only a Ray snapshot: Ray restores it
    if force:
        shutil.rmtree(paths.run_dir, ignore_errors=True)
        remove_run_logs(output_dir)
    return None


def refuse_existing_run(paths: RunPaths, *, resume: bool | str, force: bool) -> None:
    """The resume/force rules' refusals (UserError), reading the folders only: ``--resume`` with nothing to resume,
    an earlier run without ``--resume``/``--force``, a non-empty ``checkpoint_dir`` without ``--force``."""
    previous = has_previous_run(paths)
    if resume:
        if previous:
            return
        if resume != "auto":
            raise UserError(f"--resume: nothing to resume in {paths.run_dir} (no complete checkpoint found)",
                            hint="Run without --resume to start a new run, or use --resume auto.")
    if force:
        return
    if previous or (paths.run_dir.exists() and any(paths.run_dir.iterdir())):
        raise UserError(f"{paths.output_dir} already holds a {paths.stage} run ({paths.run_dir})",
                        hint="Pass --resume to continue it, or --force to delete it and start over.")
    if paths.checkpoint_dir.exists() and any(paths.checkpoint_dir.iterdir()):
        raise UserError(f"general.checkpoint_dir already exists and is not empty: {paths.checkpoint_dir}",
                        hint="Choose another checkpoint_dir, or pass --force to replace it at the end of the run.")


def discard_fresh_run(paths: RunPaths, *, remove_output_dir: bool) -> None:
    """Remove what a run that never wrote a checkpoint created (the whole output_dir when it made it)."""
    if remove_output_dir:
        shutil.rmtree(paths.output_dir, ignore_errors=True)
        return
    shutil.rmtree(paths.run_dir, ignore_errors=True)
    remove_run_logs(paths.output_dir)
    (paths.output_dir / RESOLVED_CONFIG_FILE).unlink(missing_ok=True)


def remove_run_logs(output_dir: Path) -> None:
    """The logs of the run in ``output_dir``, so a new run starts a new timeline and new tracker runs. The local W&B
    and MLflow stores stay: they hold each run separately (TensorBoard's folder would mix two runs' curves)."""
    for name in (METRICS_FILE, SAMPLES_FILE, EVENTS_FILE, TRACKERS_FILE):
        (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(output_dir / TENSORBOARD_DIR, ignore_errors=True)
