"""Faults really injected into tiny RM runs on Ray (CPU): a worker killed, the driver interrupted or killed.

Every faulty run is compared with one uninterrupted reference run of the same config (module fixture): the
same step count, bit-identical final metrics and exported weights (the RNG states travel in the checkpoints).
Runs use the session's shared 2-CPU Ray, except the signal tests, whose ``rlhfctl`` subprocess starts its own
embedded Ray exactly as a user's does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

from .conftest import EXAMPLE_RM_DATA, REPO_ROOT, kill_processes, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
runner = CliRunner()

ROWS = 64  # 58 training pairs: 2 workers x batch 4 -> 8 steps per epoch, 16 in all (checkpoint every 2)
TRAINING = {"batch_size": 4, "epochs": 2, "learning_rate": 1e-3, "num_training_workers": 2,
            "resources_per_worker": {"CPU": 1}, "save_every_steps": 2, "max_failures": 1}


class Run(NamedTuple):
    config: Path
    output_dir: Path
    export_dir: Path


def make_run(root: Path, model_dir: Path, **training) -> Run:
    """A 2-worker RM config over the first ROWS example pairs, in its own folder under ``root``."""
    import tomli_w

    root.mkdir(parents=True, exist_ok=True)
    data = root / "rm.jsonl"
    data.write_text("".join(EXAMPLE_RM_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:ROWS]),
                    encoding="utf-8")
    run = Run(root / "rm.toml", root / "out", root / "export")
    run.config.write_text(tomli_w.dumps({
        "stage": "rm",
        "general": {"base_model": str(model_dir), "output_dir": str(run.output_dir),
                    "checkpoint_dir": str(run.export_dir), "seed": 0},
        "dataset": {"train_file": str(data), "validation_split_percentage": 10, "max_length": 64},
        "training": {**TRAINING, **training},
    }), encoding="utf-8")
    return run


def run_in_process(run: Run, **kwargs):
    from rlhfctl.config import load_config
    from rlhfctl.recipes import rm

    return rm.run(load_config(run.config), config_path=str(run.config), **kwargs)


def train_steps(output_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row["step"] for row in rows if row["split"] == "train"]


def last_validation(output_dir: Path) -> dict:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    last = [row for row in rows if row["split"] == "validation"][-1]
    return {key: value for key, value in last.items() if key != "time"}  # values, not when they were logged


def assert_same_weights(export_a: Path, export_b: Path) -> None:
    from safetensors.torch import load_file

    weights_a, weights_b = load_file(str(export_a / "model.safetensors")), load_file(str(export_b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert weights_a[name].equal(weights_b[name]), f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory, ray_cluster):
    run = make_run(tmp_path_factory.mktemp("reference"), tiny_model_dir)
    summary = run_in_process(run)
    assert summary.steps == 16
    return run, summary


# ----------------------------------------------------------------------------------------------- worker dies


def test_killed_worker_is_restarted_from_the_checkpoint_and_finishes_identically(reference, tiny_model_dir,
                                                                                 tmp_path, ray_cluster):
    reference_run, reference_summary = reference
    run = make_run(tmp_path, tiny_model_dir, max_failures=1)
    marker = tmp_path / "fault-marker"
    summary = run_in_process(run, fault_injection={"after_step": 4, "marker": str(marker), "action": "kill"})
    assert marker.read_text(encoding="utf-8").startswith("fault injected on rank 1 after step 4")
    assert summary.steps == reference_summary.steps
    assert summary.final_metrics == reference_summary.final_metrics
    assert train_steps(run.output_dir) == list(range(1, 17)), "replayed steps must not be duplicated"
    assert_same_weights(run.export_dir, reference_run.export_dir)


def test_killed_worker_without_retries_names_the_worker_and_the_checkpoint(tiny_model_dir, tmp_path, ray_cluster):
    from rlhfctl.errors import RuntimeFailure

    run = make_run(tmp_path, tiny_model_dir, max_failures=0)
    with pytest.raises(RuntimeFailure) as failure:
        run_in_process(run, fault_injection={"after_step": 4, "marker": str(tmp_path / "marker"), "action": "kill"})
    message = failure.value.message
    assert failure.value.exit_code == 1
    assert "worker rank 1" in message, message
    assert "checkpoint_00000004 (step 4)" in message, message
    assert failure.value.hint == f"Continue with: rlhfctl rm train {run.config} --resume"
    assert not run.export_dir.exists()


# ----------------------------------------------------------------------------------------------- driver signals


def _start_cli(run: Run, *extra: str) -> subprocess.Popen:
    """``python -m rlhfctl rm train CONFIG ... --quiet`` in a new session (its own process group, like a shell job)."""
    return subprocess.Popen([sys.executable, "-m", "rlhfctl", "rm", "train", str(run.config), *extra, "--quiet"],
                            cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for_first_checkpoint(process: subprocess.Popen, run: Run, timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    run_dir = run.output_dir / "rm_run"
    while time.monotonic() < deadline:
        if run_dir.is_dir() and any(run_dir.glob("checkpoint_*")):
            return
        if process.poll() is not None:
            pytest.fail(f"rlhfctl exited ({process.returncode}) before its first checkpoint:\n{process.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within the time limit")


def _process_tree(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _survivors(processes: list, grace_s: float) -> list:
    import psutil

    def still_running(process) -> bool:
        try:  # a process can exit between any two psutil calls
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + grace_s
    while True:
        alive = [p for p in processes if still_running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _describe(processes: list) -> list[str]:
    described = []
    for process in processes:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:60]}")
        except Exception:  # gone meanwhile
            pass
    return described


def _resume_in_process(command: str) -> str:
    """Run a printed ``rlhfctl ...`` command through the CLI in this process (on the shared Ray)."""
    argv = shlex.split(command)
    assert argv[0] == "rlhfctl"
    result = runner.invoke(app, argv[1:] + ["--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def test_sigint_stops_within_seconds_prints_the_resume_command_and_resume_matches(reference, tiny_model_dir,
                                                                                  tmp_path, ray_cluster):
    reference_run, _ = reference
    run = make_run(tmp_path / "with space", tiny_model_dir)
    process = _start_cli(run, "general.seed=0")
    tree: list = []
    try:
        _wait_for_first_checkpoint(process, run)
        tree = _process_tree(process.pid)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree), "expected an embedded Ray under rlhfctl"
        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
        output, _ = process.communicate(timeout=60)
        stop_seconds = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
        leftovers = _survivors(tree, grace_s=15)
        kill_processes(leftovers)
    assert process.returncode == 1, output
    assert stop_seconds < 20, f"took {stop_seconds:.1f} s to stop"
    assert "interrupted" in output and "Traceback" not in output, output
    assert "The latest complete checkpoint is" in output and "checkpoint_0000" in output, output
    expected = f"rlhfctl rm train {shlex.quote(str(run.config))} general.seed=0 --resume"
    assert expected in output, output
    assert not leftovers, f"Ray processes left after SIGINT: {_describe(leftovers)}"

    resumed = _resume_in_process(expected)
    assert "resumed from step" in resumed
    assert train_steps(run.output_dir) == list(range(1, 17))
    assert last_validation(run.output_dir) == last_validation(reference_run.output_dir)
    assert_same_weights(run.export_dir, reference_run.export_dir)


def test_sigkill_of_the_driver_then_resume_matches(reference, tiny_model_dir, tmp_path, ray_cluster):
    """SIGKILL leaves rlhfctl no chance to clean up: the checkpoints on disk must still be enough to resume.

    Ray ties its head daemons (gcs_server, raylet, workers) to the driver's life; its per-node agents are
    orphaned and are killed here (only the processes of this test's own rlhfctl process tree).
    """
    reference_run, _ = reference
    run = make_run(tmp_path, tiny_model_dir)
    process = _start_cli(run)
    tree: list = []
    try:
        _wait_for_first_checkpoint(process, run)
        time.sleep(0.3)
        tree = _process_tree(process.pid)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        leftovers = _survivors(tree, grace_s=10)
        orphans = _describe(leftovers)
        kill_processes(leftovers)
    print(f"orphaned by SIGKILL (killed by this test): {orphans}")
    names = " ".join(orphans)
    assert "raylet" not in names and "gcs_server" not in names and "RayTrainWorker" not in names, names

    output = _resume_in_process(f"rlhfctl rm train {shlex.quote(str(run.config))} --resume")
    resumed_from = int(re.search(r"resumed from step (\d+)", output).group(1))
    steps = train_steps(run.output_dir)
    # Workers can outlive a SIGKILLed driver by a few seconds and checkpoint further; the metrics of the steps
    # they ran meanwhile never reached the driver (metrics.jsonl has a gap), but nothing is counted twice.
    assert steps == sorted(set(steps)) and [s for s in steps if s > resumed_from] == list(range(resumed_from + 1, 17))
    print(f"SIGKILL: resumed from step {resumed_from}; metrics.jsonl train steps {steps}")
    assert last_validation(run.output_dir) == last_validation(reference_run.output_dir)
    assert_same_weights(run.export_dir, reference_run.export_dir)


# ----------------------------------------------------------------------------------------------- multi-node


def test_two_nodes_one_lost_mid_run_recovers_to_the_same_result(reference, tiny_model_dir, tmp_path):
    """A head with no CPUs + two 1-CPU nodes (ray.cluster_utils.Cluster, in a subprocess: one Ray per process);
    the 2 workers land on different nodes; one node is removed after the first checkpoint and a replacement joins;
    the run restarts from the checkpoint and ends exactly like the single-node reference."""
    _, reference_summary = reference
    run = make_run(tmp_path, tiny_model_dir, max_failures=2)
    report = _run_on_two_nodes(run, tmp_path, "replace")
    assert "error" not in report, report
    assert report["workers_per_node_before"] == {"a": 1, "b": 1}
    assert report["workers_per_node_after"] == {"a": 1, "c": 1}
    assert report["steps"] == reference_summary.steps
    assert report["final_metrics"] == reference_summary.final_metrics
    assert train_steps(run.output_dir) == list(range(1, 17))


def test_two_nodes_one_lost_mid_run_under_fsdp_resumes_from_the_sharded_checkpoint(tiny_model_dir, tmp_path,
                                                                                    ray_cluster):
    """The same lost node with training.strategy = "fsdp": each node's worker wrote its shard of the checkpoint;
    the restarted group (on nodes a and c) reads them back and ends exactly like an uninterrupted FSDP run."""
    fsdp_reference = run_in_process(make_run(tmp_path / "reference", tiny_model_dir, strategy="fsdp"))
    run = make_run(tmp_path / "nodes", tiny_model_dir, max_failures=2, strategy="fsdp")
    report = _run_on_two_nodes(run, tmp_path, "replace")
    assert "error" not in report, report
    assert report["workers_per_node_before"] == {"a": 1, "b": 1}
    assert report["workers_per_node_after"] == {"a": 1, "c": 1}
    assert report["final_metrics"] == fsdp_reference.final_metrics
    assert train_steps(run.output_dir) == list(range(1, 17))
    checkpoint = sorted((run.output_dir / "rm_run").glob("checkpoint_0*"))[-1]
    assert json.loads((checkpoint / "state.json").read_text())["strategy"] == "fsdp"


def test_a_lost_node_that_nothing_replaces_stops_the_run_after_the_wait(tiny_model_dir, tmp_path):
    """As above, but no node joins: instead of waiting forever (Ray Train's default), the run stops once
    training.resource_wait_minutes is spent (here 6 s in 2-s start attempts) and names what it could not get."""
    run = make_run(tmp_path, tiny_model_dir, max_failures=2, resource_wait_minutes=0.1)
    report = _run_on_two_nodes(run, tmp_path, "no-replacement", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="2")
    assert report["workers_per_node_before"] == {"a": 1, "b": 1}
    error = report.get("error", "")
    assert error.startswith("RuntimeFailure: rm training failed: Ray could not start the 2 workers x {1 CPU} within "
                            "training.resource_wait_minutes = 0.1"), report
    assert "The latest complete checkpoint is" in error
    seconds = {what: float(when) for when, what in (event.split(" s  ", 1) for event in report["events"])}
    waited = seconds["training failed"] - seconds["node b removed, nothing replaces it"]
    assert waited < 90, report  # the wait, one failed restart and Ray's teardown; never the open-ended default


def _run_on_two_nodes(run: Run, tmp_path: Path, mode: str, **env: str) -> dict:
    """``multinode_driver.py`` in a subprocess (one Ray per process); returns its report, after a hang too."""
    result_path = tmp_path / "multinode.json"
    log_path = tmp_path / "multinode.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("multinode_driver.py")), str(run.config), str(result_path),
             mode], cwd=REPO_ROOT, env=subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT)
    tree: dict = {}
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the cluster's processes, to clean up after a hang
                tree.update((child.pid, child) for child in _process_tree(process.pid))
            time.sleep(1)
        timed_out = process.poll() is None
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        kill_processes(_survivors(list(tree.values()), grace_s=5))
    output = log_path.read_text(encoding="utf-8", errors="replace")
    assert result_path.exists(), output[-3000:]
    assert not timed_out, f"hung:\n{result_path.read_text(encoding='utf-8')}\n{output[-3000:]}"
    report = json.loads(result_path.read_text(encoding="utf-8"))
    print("\n".join(report["events"]))
    return report
