"""Run by test_faults.py in a subprocess: a real multi-node Ray cluster on this machine, an ``rm train`` across it,
and a node lost mid-run.

Usage: ``python multinode_driver.py CONFIG.toml RESULT.json [replace|no-replacement]``. The config's
``general.ray_address`` is replaced by the new cluster's address. The cluster: a head with no CPUs (it hosts only
Ray Train's controller and the progress actor) and two 1-CPU nodes, so the 2 workers must sit on different nodes.
After the first checkpoint one worker node is removed (its raylet and worker die, as when a machine is lost) and,
with ``replace`` (the default), a replacement node joins, as an autoscaler would provide; Ray Train restarts the
worker group from the latest checkpoint. With ``no-replacement`` nothing joins: the run must stop with an error
once ``training.resource_wait_minutes`` is spent.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def _worker_nodes(nodes: dict) -> dict[str, int]:
    """Ray Train worker processes per node name (a worker process is a child of its node's raylet)."""
    import psutil

    raylets = {node.all_processes["raylet"][0].process.pid: name for name, node in nodes.items()}
    counts = {name: 0 for name in nodes}
    for process in psutil.process_iter(["cmdline", "ppid"]):
        if "ray::RayTrainWorker" in " ".join(process.info["cmdline"] or []) and process.info["ppid"] in raylets:
            counts[raylets[process.info["ppid"]]] += 1
    return counts


def main(config_path: str, result_path: str, mode: str = "replace") -> None:
    from ray.cluster_utils import Cluster

    from rlhfctl.config import load_config
    from rlhfctl.recipes import rm

    report: dict = {"events": []}
    started = time.monotonic()

    def note(what: str) -> None:
        report["events"].append(f"{time.monotonic() - started:6.1f} s  {what}")
        Path(result_path).write_text(json.dumps(report, indent=2), encoding="utf-8")  # readable even after a kill

    # Cluster start-up and node changes install signal handlers: they stay on the main thread; training runs
    # on a second thread (as a notebook would run it).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = {"a": cluster.add_node(num_cpus=1), "b": cluster.add_node(num_cpus=1)}
        cluster.wait_for_nodes()
        note(f"cluster up: head (0 CPU) + 2 x 1-CPU nodes at {cluster.address}")
        config = load_config(Path(config_path), overrides=[f"general.ray_address={cluster.address}"])
        run_dir = Path(config.general.output_dir).resolve() / "rm_run"

        def train() -> None:
            try:
                summary = rm.run(config, config_path=config_path)
                report.update(steps=summary.steps, final_metrics=summary.final_metrics)
                note(f"finished: {summary.steps} steps")
            except BaseException as exc:  # reported to the test
                report["error"] = f"{type(exc).__name__}: {exc}"
                note("training failed")

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        while not (run_dir.is_dir() and any(run_dir.glob("checkpoint_*"))) and trainer.is_alive():
            time.sleep(0.05)
        report["workers_per_node_before"] = _worker_nodes(nodes)
        note(f"first checkpoint; workers per node {report['workers_per_node_before']}; removing node b")
        cluster.remove_node(nodes.pop("b"))
        if mode == "replace":
            nodes["c"] = cluster.add_node(num_cpus=1)
            note("node b removed, replacement node c added")
        else:
            note("node b removed, nothing replaces it")
        while trainer.is_alive():
            counts = _worker_nodes(nodes)
            if sum(counts.values()) == 2 and "workers_per_node_after" not in report:
                report["workers_per_node_after"] = counts
                note(f"worker group restarted: {counts}")
            time.sleep(0.1)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        note("shutting the cluster down")
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
