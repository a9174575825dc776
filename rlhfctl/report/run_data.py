"""Read one run folder (a stage's ``general.output_dir``) into a :class:`RunData`, tolerating a run in progress.

What a run folder holds: ``metrics.jsonl`` (one line per logged step), ``samples.jsonl`` (PPO/GRPO sample rows),
``events.jsonl`` (the timeline), ``resolved_config.toml`` and ``<stage>_run/checkpoint_*`` folders. Any one of the
first four makes a folder a run. A line cut off by a crash (or still being written) is skipped and noted in
``RunData.notes``, so a report of a live or interrupted run shows what is there and says what is missing.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfctl.errors import UserError
from rlhfctl.runfiles import (
    CHECKPOINT_PREFIX,
    EVENTS_FILE,
    METRICS_FILE,
    RESOLVED_CONFIG_FILE,
    SAMPLES_FILE,
    run_dir_name,
)
from rlhfctl.training import checkpoint as ckpt

RUN_FILES = (METRICS_FILE, EVENTS_FILE, RESOLVED_CONFIG_FILE, SAMPLES_FILE)
RECENT_S = 15 * 60  # a run whose files changed this recently and that has not finished may still be going


@dataclass(frozen=True)
class CheckpointOnDisk:
    step: int
    path: Path
    time: float  # the folder's state.json modification time


@dataclass
class RunData:
    """Everything the report shows about one run. Metric rows keep their numbers; ``None`` stands for NaN/inf."""

    path: Path
    label: str  # short name used in legends and headings (the folder name, made unique among runs)
    stage: str | None
    config: dict[str, Any]  # resolved_config.toml parsed ({} when missing or unreadable)
    config_text: str | None
    train: list[dict[str, Any]]  # metrics.jsonl rows with split == "train", in file order
    validation: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    checkpoints: list[CheckpointOnDisk]
    notes: list[str] = field(default_factory=list)  # gaps and unreadable lines, for the person reading
    last_modified: float | None = None  # newest mtime among the run files

    @property
    def metric_rows(self) -> list[dict[str, Any]]:
        """Train and validation rows in logged order (by step; train before validation at the same step)."""
        return sorted([*self.train, *self.validation], key=lambda row: (row["step"], row["split"] != "train"))

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("kind") == kind]

    @property
    def total_steps(self) -> int | None:
        starts = [event for event in self.events_of("start") if isinstance(event.get("total_steps"), int)]
        return starts[-1]["total_steps"] if starts else None

    @property
    def samples_per_step(self) -> int | None:
        starts = [event for event in self.events_of("start") if isinstance(event.get("samples_per_step"), int)]
        return starts[-1]["samples_per_step"] if starts else None

    @property
    def last_step(self) -> int:
        return max((row["step"] for row in self.train), default=0)

    def status(self, now: float | None = None) -> str:
        """``finished``, ``failed: <reason>``, ``running or interrupted`` (recent files) or ``interrupted``."""
        ends = [event for event in self.events if event.get("kind") in ("start", "finish", "failure")]
        if ends and ends[-1]["kind"] == "finish":
            return "finished"
        if ends and ends[-1]["kind"] == "failure":
            first_line = str(ends[-1].get("message", "")).strip().splitlines()
            return "failed: " + (first_line[0] if first_line else "no message")
        if not self.events and self._model_exported():
            return "finished"
        now = time.time() if now is None else now
        if self.last_modified is not None and now - self.last_modified < RECENT_S:
            return "running or interrupted"
        return "interrupted"

    def _model_exported(self) -> bool:
        export = self.config.get("general", {}).get("checkpoint_dir")
        return bool(export) and (Path(export) / "config.json").exists()


# ---------------------------------------------------------------------------------------------- loading


def load_runs(paths: list[Path]) -> list[RunData]:
    """Load every run folder (errors for all bad folders at once) and give each a unique label."""
    problems: list[str] = []
    runs: list[RunData] = []
    for path in paths:
        try:
            runs.append(load_run(path))
        except UserError as error:
            problems.append(str(error))
    if problems:
        raise UserError("\n".join(problems))
    _make_labels_unique(runs)
    return runs


def load_run(path: Path) -> RunData:
    path = Path(path).expanduser()
    _check_is_run(path)
    notes: list[str] = []
    metrics = read_jsonl_tolerant(path / METRICS_FILE, notes)
    rows = [row for row in (_metric_row(record, index, notes) for index, record in metrics) if row is not None]
    samples = [record for _, record in read_jsonl_tolerant(path / SAMPLES_FILE, notes)
               if isinstance(record.get("step"), int)]
    events = [_event(record) for _, record in read_jsonl_tolerant(path / EVENTS_FILE, notes) if "kind" in record]
    config_text, config = _read_config(path / RESOLVED_CONFIG_FILE, notes)
    stage = config.get("stage") or next((event.get("stage") for event in events if event.get("stage")), None)
    train = [row for row in rows if row["split"] == "train"]
    validation = [row for row in rows if row["split"] == "validation"]
    if not (path / METRICS_FILE).exists():
        notes.append(f"{METRICS_FILE} is missing: no step was logged yet")
    elif not rows:
        notes.append(f"{METRICS_FILE} has no metric lines yet")
    notes.extend(step_gaps_note(sorted(row["step"] for row in train)))
    mtimes = [(path / name).stat().st_mtime for name in RUN_FILES if (path / name).exists()]
    return RunData(path=path, label=path.resolve().name or str(path), stage=stage, config=config,
                   config_text=config_text, train=train, validation=validation, samples=samples, events=events,
                   checkpoints=_checkpoints_on_disk(path, stage), notes=notes,
                   last_modified=max(mtimes) if mtimes else None)


def _check_is_run(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such folder (give a run's general.output_dir)")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run folder (give a run's general.output_dir, which holds "
                        f"{METRICS_FILE})")
    if any((path / name).exists() for name in RUN_FILES):
        return
    hint = None
    inside = sorted(child for child in path.iterdir() if child.is_dir() and (child / METRICS_FILE).exists())
    if inside:
        hint = "Runs inside it: " + ", ".join(str(child) for child in inside[:8])
    elif (path.parent / METRICS_FILE).exists():
        hint = f"Did you mean its parent folder {path.parent}?"
    raise UserError(f"{path} is not an rlhfctl run folder: it has none of {', '.join(RUN_FILES)} "
                    "(a run writes them into its general.output_dir)", hint=hint)


def read_jsonl_tolerant(path: Path, notes: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every parseable line; unreadable lines are noted (the last one as cut off)."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        notes.append(f"{path.name} could not be read: {error}")
        return []
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append((number, record))
        else:
            bad.append(number)
    if bad and bad[-1] == len(lines):
        notes.append(f"{path.name} line {bad[-1]} is incomplete (the run was cut off while writing it, or is "
                     "writing it now): skipped")
        bad.pop()
    if bad:
        shown = ", ".join(str(number) for number in bad[:5]) + (" ..." if len(bad) > 5 else "")
        notes.append(f"{path.name}: {len(bad)} line(s) are not JSON objects and were skipped (line {shown})")
    return records


def _metric_row(record: dict[str, Any], line: int, notes: list[str]) -> dict[str, Any] | None:
    step, split = record.get("step"), record.get("split", "train")
    if not isinstance(step, int) or split not in ("train", "validation"):
        notes.append(f"{METRICS_FILE} line {line}: expected an integer \"step\" and a \"split\" of train or "
                     f"validation, found step={step!r} split={split!r}: skipped")
        return None
    row = {"step": step, "split": split}
    for key, value in record.items():
        if key in row:
            continue
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            row[key] = None if value is None or not math.isfinite(value) else value
    return row


def _event(record: dict[str, Any]) -> dict[str, Any]:
    """An events.jsonl record with its ``time`` kept only when it is a finite number (``None`` otherwise)."""
    when = record.get("time")
    finite = isinstance(when, (int, float)) and not isinstance(when, bool) and math.isfinite(when)
    return {**record, "time": when if finite else None}


def step_gaps_note(steps: list[int]) -> list[str]:
    """A note for each jump in the train steps much larger than the usual logging stride."""
    strides = sorted(later - earlier for earlier, later in zip(steps, steps[1:]) if later > earlier)
    if len(strides) < 2:
        return []
    usual = strides[len(strides) // 2]
    gaps = [(earlier, later) for earlier, later in zip(steps, steps[1:]) if later - earlier > max(2 * usual, usual + 1)]
    if not gaps:
        return []
    shown = ", ".join(f"{earlier} -> {later}" for earlier, later in gaps[:5]) + (" ..." if len(gaps) > 5 else "")
    return [f"{len(gaps)} gap(s) in the logged train steps (usually every {usual}): {shown}"]


def _read_config(path: Path, notes: list[str]) -> tuple[str | None, dict[str, Any]]:
    if not path.exists():
        notes.append(f"{RESOLVED_CONFIG_FILE} is missing: the config is not shown")
        return None, {}
    from rlhfctl.config.loader import tomllib

    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return text, tomllib.loads(text)
    except ValueError as error:
        notes.append(f"{RESOLVED_CONFIG_FILE} is not valid TOML ({error}): shown as text, not compared")
        return text, {}


def _checkpoints_on_disk(path: Path, stage: str | None) -> list[CheckpointOnDisk]:
    pattern = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
    run_dirs = [path / run_dir_name(stage)] if stage else sorted(path.glob(run_dir_name("*")))
    found = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            continue
        for child in run_dir.iterdir():
            if child.is_dir() and pattern.match(child.name) and ckpt.is_complete(child):
                found.append(CheckpointOnDisk(ckpt.read_step(child), child,
                                              (child / ckpt.STATE_FILE).stat().st_mtime))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def _make_labels_unique(runs: list[RunData]) -> None:
    """``runs/a/rm`` and ``runs/b/rm`` become ``a/rm`` and ``b/rm``; exact duplicates get ``#2``."""
    names = [run.label for run in runs]
    for run, name in zip(runs, names):
        if names.count(name) > 1:
            resolved = run.path.resolve()
            run.label = f"{resolved.parent.name}/{resolved.name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"
