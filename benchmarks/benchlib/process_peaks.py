"""Per-process peak PSS of a measured command: which process of the tree peaked where (the driver, each Ray Train
worker), beside :mod:`benchlib.procmon`'s whole-tree figure.

```python
measured, peaks = run_with_process_peaks(["python", "-m", "rlhfctl", "sft", "train", "cfg.toml", "--quiet"])
peaks.root_peak_bytes            # the command's own process (the worker, when one runs in the driver)
peaks.worker_peaks_bytes         # each Ray Train worker's peak (processes titled ``ray::RayTrainWorker``)
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchlib.procmon import MeasuredRun, TreePssSampler, _pss_bytes, run_measured

RAY_TRAIN_WORKER = "RayTrainWorker"


@dataclass
class ProcessPeaks:
    """Peak PSS by process, and which processes were Ray Train workers."""

    root_pid: int
    peaks: dict[int, int] = field(default_factory=dict)  # pid -> peak PSS bytes
    titles: dict[int, str] = field(default_factory=dict)  # pid -> command line (process title for Ray processes)
    at_tree_peak: dict[int, int] = field(default_factory=dict)  # pid -> PSS bytes in the sample where the tree peaked

    @property
    def root_peak_bytes(self) -> int:
        return self.peaks.get(self.root_pid, 0)

    @property
    def worker_peaks_bytes(self) -> list[int]:
        return [peak for pid, peak in sorted(self.peaks.items()) if RAY_TRAIN_WORKER in self.titles.get(pid, "")]

    def tree_peak_breakdown(self) -> dict[str, int]:
        """What the whole tree was made of when it peaked: PSS bytes by role (``driver``, ``train workers``, each
        other process by its short name, e.g. ``raylet``, ``gcs_server``, ``ray::TrainController``)."""
        roles: dict[str, int] = {}
        for pid, pss in self.at_tree_peak.items():
            role = _role(pid, self.root_pid, self.titles.get(pid, ""))
            roles[role] = roles.get(role, 0) + pss
        return dict(sorted(roles.items(), key=lambda item: -item[1]))


def _role(pid: int, root_pid: int, title: str) -> str:
    if pid == root_pid:
        return "driver"
    if RAY_TRAIN_WORKER in title:
        return "train workers"
    words = title.split()
    if not words:
        return "other"
    if words[0].startswith("ray::"):
        return words[0]
    for word in words:  # "python -m ray....dashboard.agent", ".../raylet", ".../gcs_server --flags"
        name = Path(word).name
        if name in ("raylet", "gcs_server", "log_monitor.py", "agent.py", "dashboard.py", "monitor.py",
                    "runtime_env_agent", "default_worker.py", "setup_worker.py"):
            return name
    return Path(words[0]).name


class PerProcessSampler(TreePssSampler):
    """:class:`TreePssSampler` that also keeps each process's own peak."""

    def __init__(self, root_pid: int, marker_value: str | None = None, interval_s: float = 0.2) -> None:
        super().__init__(root_pid, marker_value, interval_s)
        self.process_peaks = ProcessPeaks(root_pid)

    def sample_once(self) -> int:
        total = 0
        count = 0
        sample: dict[int, int] = {}
        for pid, process in self._tracked().items():
            pss = _pss_bytes(process)
            if pss is None:
                continue
            total += pss
            count += 1
            sample[pid] = pss
            if pss > self.process_peaks.peaks.get(pid, 0):
                self.process_peaks.peaks[pid] = pss
            if RAY_TRAIN_WORKER not in self.process_peaks.titles.get(pid, ""):  # Ray retitles a worker when an
                try:                                                                # actor moves in
                    self.process_peaks.titles[pid] = " ".join(process.cmdline()) or process.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    self.process_peaks.titles.setdefault(pid, "")  # an exiting process keeps the title it had
        self.samples += 1
        if total > self.peak_pss_bytes:
            self.process_peaks.at_tree_peak = sample
        self.peak_pss_bytes = max(self.peak_pss_bytes, total)
        self.peak_processes = max(self.peak_processes, count)
        return total


def run_with_process_peaks(command: Sequence[str], *, env: Mapping[str, str] | None = None,
                           cwd: Path | str | None = None, timeout_s: float = 900, log_file: Path | None = None,
                           sample_interval_s: float = 0.1) -> tuple[MeasuredRun, ProcessPeaks]:
    """``procmon.run_measured`` sampling the PSS of every process of the tree (and the whole tree's)."""
    measured = run_measured(command, env=env, cwd=cwd, timeout_s=timeout_s, log_file=log_file,
                            sample_interval_s=sample_interval_s, sampler_class=PerProcessSampler)
    sampler = measured.sampler
    assert isinstance(sampler, PerProcessSampler)
    return measured, sampler.process_peaks
