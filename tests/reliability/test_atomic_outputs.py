"""Half-written checkpoints are never resumed from, and a failed export leaves the previous one intact.

The interrupted-write cases are simulated by planting, next to a real run's checkpoints, *later* checkpoint
folders in the states an interruption leaves behind (no ``state.json`` yet, a truncated weights file, a truncated
``state.json``, a temporary folder); resume must take the last complete one and end exactly like an uninterrupted
run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()


def _run(workspace, name: str, **kwargs):
    from rlhfctl.config import load_config
    from rlhfctl.recipes import rm

    config = workspace.config_dict(
        general={"output_dir": str(workspace.root / name / "out"), "checkpoint_dir": str(workspace.root / name / "export")},
        training={"save_every_steps": 2, "num_training_workers": 1},
    )
    path = workspace.write_config(config, name=f"{name}.toml")
    return path, lambda: rm.run(load_config(path), config_path=str(path), **kwargs)


def _plant_incomplete_checkpoints(run_dir: Path, complete: Path) -> list[Path]:
    """Later-step copies of ``complete`` in the states an interrupted write leaves."""
    planted = []

    def copy(step: int) -> Path:
        target = run_dir / f"checkpoint_{step:08d}"
        shutil.copytree(complete, target)
        state = json.loads((target / "state.json").read_text(encoding="utf-8"))
        state["step"] = step
        (target / "state.json").write_text(json.dumps(state), encoding="utf-8")
        planted.append(target)
        return target

    (copy(90) / "state.json").unlink()  # interrupted before the manifest (written last)
    weights = next(copy(91).glob("model.*.safetensors"))  # interrupted while copying the weights
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    manifest = copy(92) / "state.json"  # a torn manifest
    manifest.write_text(manifest.read_text(encoding="utf-8")[:40], encoding="utf-8")
    optimizer = next(copy(93).glob("optim.*.safetensors"))  # a missing file the manifest lists
    optimizer.unlink()
    temporary = run_dir / ".checkpoint_00000094.tmp"  # the single-process path's temporary folder
    shutil.copytree(complete, temporary)
    planted.append(temporary)
    return planted


@pytest.mark.slow
@pytest.mark.needs_model
def test_resume_skips_half_written_checkpoints_and_matches_an_uninterrupted_run(workspace):
    from rlhfctl.errors import RuntimeFailure
    from rlhfctl.training import checkpoint as ckpt

    _, reference = _run(workspace, "reference")
    reference_summary = reference()

    config_path, interrupted = _run(workspace, "faulty", fault_injection={
        "after_step": 2, "marker": str(workspace.root / "marker"), "action": "raise"})
    with pytest.raises(RuntimeFailure, match=r"checkpoint_00000002 \(step 2\)"):
        interrupted()
    run_dir = workspace.root / "faulty" / "out" / "rm_run"
    complete = run_dir / "checkpoint_00000002"
    planted = _plant_incomplete_checkpoints(run_dir, complete)
    assert not any(ckpt.is_complete(folder) for folder in planted[:-1])  # the .tmp folder is skipped by name
    assert ckpt.latest_checkpoint(run_dir) == complete

    result = runner.invoke(app, ["rm", "train", str(config_path), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "resumed from step 2" in result.output
    metrics = [json.loads(line) for line in (workspace.root / "faulty" / "out" / "metrics.jsonl").read_text(
        encoding="utf-8").splitlines()]
    def values(rows: list[dict]) -> list[dict]:  # what was logged, not when
        return [{key: value for key, value in row.items() if key != "time"} for row in rows]

    assert values(metrics) == values(reference_summary.history)
    from safetensors.torch import load_file

    resumed = load_file(str(workspace.root / "faulty" / "export" / "model.safetensors"))
    expected = load_file(str(workspace.root / "reference" / "export" / "model.safetensors"))
    assert all(resumed[name].equal(expected[name]) for name in expected)


def test_failed_export_keeps_the_previous_export_and_leaves_no_temporary_folder(tmp_path):
    """``checkpoint_dir`` is assembled in a temporary folder and renamed: a crash mid-export (disk full) changes
    nothing a reader can see."""
    from rlhfctl.training.export import export_hf

    target = tmp_path / "models" / "rm"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"previous export")

    class DiskFullModel:
        config = None

        def save_pretrained(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        export_hf(DiskFullModel(), None, target)
    assert (target / "model.safetensors").read_bytes() == b"previous export"
    assert sorted(path.name for path in target.parent.iterdir()) == ["rm"]


def test_checkpoint_interrupted_before_its_manifest_is_incomplete(tmp_path):
    """Unit level: a write that dies before ``state.json`` (written last, by rename) is never complete."""
    import torch

    from rlhfctl.training import checkpoint as ckpt

    model = torch.nn.Linear(2, 1)
    state = ckpt.TrainState(step=3, models={"m": model})
    folder = ckpt.write_checkpoint(state, tmp_path / "checkpoint_00000003")
    assert ckpt.is_complete(folder)

    class Exploding(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    broken = ckpt.TrainState(step=4, models={"m": model, "z": Exploding()})
    with pytest.raises(OSError):
        ckpt.write_checkpoint(broken, tmp_path / "checkpoint_00000004")
    assert not ckpt.is_complete(tmp_path / "checkpoint_00000004")
    assert ckpt.latest_checkpoint(tmp_path) == folder
