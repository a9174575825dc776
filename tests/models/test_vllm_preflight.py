"""generation.backend = "vllm" checked before any worker starts (models/vllm_preflight.py): through the CLI, exit 2
with the key named, for vLLM missing, no GPU per worker and FSDP; "builtin" (the default) checks nothing."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app
from rlhfctl.config.loader import load_config
from rlhfctl.errors import ConfigError
from rlhfctl.models.vllm_preflight import (
    INSTALL_HINT,
    check_vllm_settings,
    vllm_importable,
    vllm_issues,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ON_A_GPU = "training.resources_per_worker={ CPU = 1, GPU = 1 }"


def stand_in_vllm(monkeypatch) -> None:
    """An importable ``vllm`` (the driver only looks it up)."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", module)


def no_vllm(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` fails on, whatever is installed


def stage_args(stage: str, tmp_path: Path, model: Path, *overrides: str) -> list[str]:
    return [stage, "train", str(REPO_ROOT / "examples" / "configs" / f"{stage}.toml"), *paths(tmp_path, model),
            *overrides, "--dry-run"]


def paths(tmp_path: Path, model: Path) -> list[str]:
    return [f"general.model_name={model}", f"general.rm_name={model}", f"general.model_pretrain={model}",
            f"general.rm_pretrain={model}", f"general.output_dir={tmp_path / 'run'}",
            f"general.checkpoint_dir={tmp_path / 'export'}"]


def config(stage: str, tmp_path: Path, model: Path, *overrides: str):
    return load_config(REPO_ROOT / "examples" / "configs" / f"{stage}.toml",
                       overrides=[*paths(tmp_path, model), *overrides])


def test_vllm_is_looked_up_not_imported(monkeypatch):
    no_vllm(monkeypatch)
    assert not vllm_importable()
    stand_in_vllm(monkeypatch)
    assert vllm_importable()


def test_the_builtin_backend_is_the_default_and_needs_nothing(monkeypatch, tmp_path, tiny_model_dir):
    no_vllm(monkeypatch)
    ppo = config("ppo", tmp_path, tiny_model_dir)
    assert ppo.generation.backend == "builtin"
    assert vllm_issues(ppo) == []
    check_vllm_settings(ppo)  # nothing raised


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_vllm_not_installed_is_exit_2_with_the_install_command(monkeypatch, tmp_path, tiny_model_dir, stage):
    no_vllm(monkeypatch)
    result = runner.invoke(app, stage_args(stage, tmp_path, tiny_model_dir, "generation.backend=vllm", ON_A_GPU))
    assert result.exit_code == 2, result.output
    assert "generation.backend" in result.output and "vLLM is not installed" in result.output
    assert INSTALL_HINT in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("resources", ["{ CPU = 1 }", "{ CPU = 1, GPU = 0.5 }"])
def test_vllm_without_a_whole_gpu_per_worker_is_exit_2(monkeypatch, tmp_path, tiny_model_dir, resources):
    stand_in_vllm(monkeypatch)
    result = runner.invoke(app, stage_args("ppo", tmp_path, tiny_model_dir, "generation.backend=vllm",
                                           f"training.resources_per_worker={resources}"))
    assert result.exit_code == 2, result.output
    assert "generation.backend" in result.output and "needs a whole GPU per worker" in result.output
    assert "GPU = 1" in result.output


def test_vllm_with_fsdp_is_exit_2_saying_why(monkeypatch, tmp_path, tiny_model_dir):
    stand_in_vllm(monkeypatch)
    result = runner.invoke(app, stage_args("grpo", tmp_path, tiny_model_dir, "generation.backend=vllm", ON_A_GPU,
                                           "training.strategy=fsdp", "training.num_training_workers=2"))
    assert result.exit_code == 2, result.output
    assert "training.strategy" in result.output and "whole copy" in result.output


def test_every_problem_is_named_at_once(monkeypatch, tmp_path, tiny_model_dir):
    no_vllm(monkeypatch)
    ppo = config("ppo", tmp_path, tiny_model_dir, "generation.backend=vllm", "training.strategy=fsdp",
                 "training.num_training_workers=2")
    with pytest.raises(ConfigError) as raised:
        check_vllm_settings(ppo)
    assert [issue.key for issue in raised.value.issues] == [
        "generation.backend", "generation.backend", "training.strategy"]


def test_vllm_on_gpus_plans_and_the_builtin_dry_run_is_unchanged(monkeypatch, tmp_path, tiny_model_dir):
    stand_in_vllm(monkeypatch)
    planned = runner.invoke(app, stage_args("ppo", tmp_path, tiny_model_dir, "generation.backend=vllm", ON_A_GPU))
    assert planned.exit_code == 0, planned.output
    assert "vLLM engine reserves 0.3 of its GPU" in " ".join(planned.output.split())
    no_vllm(monkeypatch)
    builtin = runner.invoke(app, stage_args("ppo", tmp_path, tiny_model_dir))
    assert builtin.exit_code == 0, builtin.output
    assert "vLLM engine" not in " ".join(builtin.output.split())
