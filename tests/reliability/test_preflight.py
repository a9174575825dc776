"""Problems that must stop a run before training starts: unwritable folders and unschedulable worker groups.

Both end with exit 2, a message naming the key and the numbers, within seconds (never a wait for resources that
will not come), and no half-created run directory.
"""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

runner = CliRunner()


def _train(workspace, **sections):
    config = workspace.write_config(workspace.config_dict(**sections))
    started = time.monotonic()
    result = runner.invoke(app, ["rm", "train", str(config), "--quiet"])
    return result, time.monotonic() - started


# Tests run as root, so a read-only parent folder would still be writable: a path *under a regular file* is what
# makes mkdir fail for everyone.


def test_output_dir_that_cannot_be_created(workspace):
    blocker = workspace.root / "afile"
    blocker.write_text("I am a file\n", encoding="utf-8")
    result, seconds = _train(workspace, general={"output_dir": str(blocker / "sub")})
    assert result.exit_code == 2, result.output
    assert "general.output_dir" in result.output and str(blocker) in result.output
    assert "Traceback" not in result.output
    assert seconds < 15
    assert blocker.read_text(encoding="utf-8") == "I am a file\n"


def test_checkpoint_dir_that_cannot_be_created(workspace):
    blocker = workspace.root / "afile"
    blocker.write_text("I am a file\n", encoding="utf-8")
    result, _ = _train(workspace, general={"checkpoint_dir": str(blocker / "model")})
    assert result.exit_code == 2, result.output
    assert "general.checkpoint_dir" in result.output and str(blocker) in result.output
    assert "Traceback" not in result.output
    assert not workspace.output_dir.exists(), "the run directory was created although the run cannot finish"


# ----------------------------------------------------------------------------------------------- resources

UNSCHEDULABLE = [
    pytest.param({"num_training_workers": 8}, ["8 workers", "CPU: 8 requested", "has 2"], id="too-many-workers"),
    pytest.param({"num_training_workers": 2, "resources_per_worker": {"CPU": 64}},
                 ["CPU: 128 requested", "CPU: 64 per worker", "has 2"], id="too-many-cpus-per-worker"),
    pytest.param({"num_training_workers": 2, "resources_per_worker": {"CPU": 1, "GPU": 1}},
                 ["GPU: 2 requested", "has 0"], id="gpu-on-a-cpu-cluster"),
    pytest.param({"num_training_workers": 2, "resources_per_worker": {"CPU": 1, "TPU": 1}},
                 ["TPU: 2 requested", "has 0"], id="custom-resource-missing"),
    pytest.param({"num_training_workers": 1, "resources_per_worker": {"CPU": 1, "GPU": 1}},
                 ["GPU", "1 requested", "has 0"], id="single-process-gpu-without-gpu"),
    pytest.param({"num_training_workers": 1, "resources_per_worker": {"CPU": 64}},
                 ["CPU", "64 requested", "has 2"], id="single-process-more-cpus-than-machine"),
]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("training", "expect"), UNSCHEDULABLE)
def test_unschedulable_request_fails_fast_with_the_numbers(workspace, ray_cluster, training, expect):
    """Against the shared 2-CPU, 0-GPU Ray of the test session (the embedded Ray of a user run is the same shape)."""
    result, seconds = _train(workspace, training=training)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expect:
        assert text in result.output, f"{text!r} not in:\n{result.output}"
    assert "training.num_training_workers" in result.output or "training.resources_per_worker" in result.output
    assert seconds < 30, f"took {seconds:.1f} s"
    assert not workspace.output_dir.exists(), "a run directory was left behind"
