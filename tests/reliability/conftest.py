"""Fixtures of the reliability suite: a workspace with good data and a config writer, Ray process inspection.

Every test here starts from a configuration that works and breaks exactly one thing, so a failure points at the
one input that was not refused cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RM_DATA = REPO_ROOT / "examples" / "data" / "rm.jsonl"

# Names of the processes an embedded Ray runs besides its workers (checked for leaks). A run's progress actor (Ray
# Train's controller on the embedded Ray) is named "rlhfctl-progress-<id>", and its process title shows that name.
RAY_DAEMONS = ("raylet", "gcs_server", "plasma_store", "dashboard", "log_monitor", "runtime_env_agent",
               "ray::IDLE", "ray::_EventQueue", "ray::RayTrainWorker", "ray::TrainController", "rlhfctl-progress-",
               "InheritedEnvironmentController")


class Workspace:
    """A temporary folder with ``rm.jsonl`` (good rows) and helpers to write configs and data files."""

    def __init__(self, root: Path, model_dir: str) -> None:
        self.root = root
        self.model_dir = model_dir
        self.data = root / "rm.jsonl"
        self.output_dir = root / "out"
        self.export_dir = root / "export"

    def rm_rows(self, count: int = 24) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in EXAMPLE_RM_DATA.read_text(encoding="utf-8").splitlines()[:count]]
        return rows

    def write_rows(self, name: str, rows: list[Any]) -> Path:
        path = self.root / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    def config_dict(self, **sections: dict[str, Any]) -> dict[str, Any]:
        """A working one-worker RM config; ``sections`` update (or, with value None, delete) keys."""
        config: dict[str, Any] = {
            "stage": "rm",
            "general": {"base_model": self.model_dir, "output_dir": str(self.output_dir),
                        "checkpoint_dir": str(self.export_dir), "seed": 0},
            "dataset": {"train_file": str(self.data), "validation_split_percentage": 10, "max_length": 64},
            "training": {"batch_size": 4, "epochs": 1, "learning_rate": 1e-3, "num_training_workers": 1,
                         "resources_per_worker": {"CPU": 1}, "optimizer": "AdamW"},
        }
        for name, updates in sections.items():
            section = config.setdefault(name, {})
            for key, value in updates.items():
                if value is None:
                    section.pop(key, None)
                else:
                    section[key] = value
        return config

    def write_config(self, config: dict[str, Any] | str, name: str = "rm.toml") -> Path:
        import tomli_w

        path = self.root / name
        text = config if isinstance(config, str) else tomli_w.dumps(config)
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def workspace(tmp_path, request) -> Workspace:
    """A workspace whose model is the session's tiny model when the test asks for it, else a placeholder."""
    model_dir = (str(request.getfixturevalue("tiny_model_dir")) if "needs_model" in request.keywords
                 else str(tmp_path / "model"))
    if "needs_model" not in request.keywords:
        (tmp_path / "model").mkdir()
    space = Workspace(tmp_path, model_dir)
    space.write_rows("rm.jsonl", space.rm_rows())
    return space


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A writable copy of the tiny model (to break its tokenizer)."""
    target = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, target)
    return target


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "needs_model: the workspace uses the session's tiny model")


# ----------------------------------------------------------------------------------------------- Ray processes


def ray_processes(descendants_of: int | None = None) -> list:
    """Live Ray daemon/worker processes (optionally only those descended from pid ``descendants_of``)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            text = " ".join(process.info["cmdline"] or []) or (process.info["name"] or "")
            if not any(name in text for name in RAY_DAEMONS):
                continue
            if descendants_of is not None and not _descends_from(process, descendants_of):
                continue
            found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _descends_from(process, ancestor_pid: int) -> bool:
    import psutil

    try:
        return any(parent.pid == ancestor_pid for parent in process.parents())
    except psutil.NoSuchProcess:
        return False


def session_dir_processes(session_dir: str) -> list:
    """Processes whose command line names a Ray session folder (how an orphaned embedded Ray is recognised)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if session_dir in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_processes(processes: list) -> None:
    """SIGKILL the given processes (only ones a test identified as its own) and wait for them."""
    import psutil

    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
