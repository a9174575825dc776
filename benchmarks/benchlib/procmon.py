"""Run a command as a subprocess and measure its wall time and the peak PSS of its whole process tree.

PSS (proportional set size) splits shared pages between the processes sharing them, so summing it over a tree
does not count the shared libraries of Ray's many processes several times (RSS would).

Which processes count: the command's process and all its descendants (Ray's GCS, raylet and workers started by an
embedded ``ray.init`` are children of the driver), plus any process that carries this run's marker in its
environment (``RLHFCTL_BENCH_RUN=<id>``; Ray passes the driver's environment to the processes it starts, so a
process re-parented away from the tree is still found). Other jobs' Ray processes on a shared machine carry no
marker and are not counted.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchlib.metrics_watch import MetricsWatcher, StampedRecord

RUN_MARKER = "RLHFCTL_BENCH_RUN"


@dataclass
class MeasuredRun:
    """What one measured subprocess did."""

    command: list[str]
    returncode: int
    wall_time_s: float          # process start to exit, as seen by the harness
    peak_pss_bytes: int         # max over samples of the summed PSS of the tracked processes
    peak_processes: int         # most processes tracked at one sample
    output_tail: str            # last characters of stdout+stderr (for error messages)
    timed_out: bool = False
    start_time: float = 0.0     # time.time() at launch (to relate metrics arrival times to the start)
    metrics: list[StampedRecord] = field(default_factory=list)  # the watched metrics.jsonl, stamped
    sampler: "TreePssSampler | None" = None  # the sampler after the run (a subclass may keep more, per process)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def peak_pss_gb(self) -> float:
        return self.peak_pss_bytes / 1e9


def _pss_bytes(process: psutil.Process) -> int | None:
    try:
        info = process.memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
        return None
    return int(getattr(info, "pss", info.rss))


def _carries_marker(process: psutil.Process, marker_value: str) -> bool:
    try:
        return process.environ().get(RUN_MARKER) == marker_value
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


class TreePssSampler:
    """Samples the summed PSS of a process, its descendants and marker-carrying processes every ``interval_s``."""

    def __init__(self, root_pid: int, marker_value: str | None = None, interval_s: float = 0.2) -> None:
        self.root_pid = root_pid
        self.marker_value = marker_value
        self.interval_s = interval_s
        # Processes older than the root cannot belong to the run. Compared on psutil's own clock (boot time +
        # ticks, whole-second boot time), which can lag time.time() by up to a second.
        try:
            self.started_after = psutil.Process(root_pid).create_time() - 0.05
        except psutil.NoSuchProcess:
            self.started_after = time.time() - 2.0
        self.peak_pss_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._marked: dict[int, psutil.Process] = {}
        self._seen_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)

    def __enter__(self) -> "TreePssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _tracked(self) -> dict[int, psutil.Process]:
        tracked: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.root_pid)
            tracked[root.pid] = root
            for child in root.children(recursive=True):
                tracked[child.pid] = child
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
        if self.marker_value is not None:
            for pid in psutil.pids():
                if pid in self._seen_pids:
                    continue
                self._seen_pids.add(pid)
                try:
                    process = psutil.Process(pid)
                    if process.create_time() < self.started_after:
                        continue
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if _carries_marker(process, self.marker_value):
                    self._marked[pid] = process
            tracked.update({pid: proc for pid, proc in self._marked.items() if proc.is_running()})
        return tracked

    def sample_once(self) -> int:
        """Take one sample now; returns the summed PSS in bytes (also folded into the peak)."""
        total = 0
        count = 0
        for process in self._tracked().values():
            pss = _pss_bytes(process)
            if pss is not None:
                total += pss
                count += 1
        self.samples += 1
        self.peak_pss_bytes = max(self.peak_pss_bytes, total)
        self.peak_processes = max(self.peak_processes, count)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)


def run_measured(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout_s: float = 1800,
    log_file: Path | None = None,
    sample_interval_s: float = 0.2,
    watch_metrics: Path | None = None,
    sampler_class: type[TreePssSampler] = TreePssSampler,
) -> MeasuredRun:
    """Run ``command`` to completion, timing it and sampling the PSS of its process tree.

    With ``watch_metrics``, that ``metrics.jsonl`` is followed while the command runs (see ``metrics_watch``).
    ``sampler_class``: a :class:`TreePssSampler` subclass that records more (``MeasuredRun.sampler``).
    """
    marker_value = uuid.uuid4().hex
    full_env = dict(os.environ if env is None else env)
    full_env[RUN_MARKER] = marker_value
    output_path = log_file
    if output_path is None:
        output_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rlhfctl-bench-{marker_value}.log"
    output_path.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    watcher = MetricsWatcher(watch_metrics) if watch_metrics is not None else None
    with open(output_path, "w", encoding="utf-8") as output, (watcher or nullcontext()):
        start_time = time.time()
        start = time.perf_counter()
        process = subprocess.Popen(list(command), env=full_env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        with sampler_class(process.pid, marker_value, sample_interval_s) as sampler:
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process)
                returncode = process.wait()
        wall_time_s = time.perf_counter() - start
    _reap_marked(sampler)
    text = output_path.read_text(encoding="utf-8", errors="replace")
    if log_file is None:
        output_path.unlink(missing_ok=True)
    return MeasuredRun(list(command), returncode, wall_time_s, sampler.peak_pss_bytes, sampler.peak_processes,
                       text[-4000:], timed_out, start_time, watcher.records() if watcher else [], sampler)


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the timed-out command and everything in its session (only what this harness started)."""
    try:
        os.killpg(process.pid, 9)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _reap_marked(sampler: TreePssSampler) -> None:
    """Kill processes of this run still alive 10 s after the command exited (leaked Ray processes)."""
    deadline = time.time() + 10
    survivors = [proc for proc in sampler._marked.values() if proc.is_running()]
    while survivors and time.time() < deadline:
        time.sleep(0.5)
        survivors = [proc for proc in survivors if proc.is_running()]
    for proc in survivors:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def run_quiet(command: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 120,
              cwd: Path | str | None = None) -> tuple[int, float, str]:
    """Run a short command without sampling; returns (returncode, wall seconds, combined output)."""
    start = time.perf_counter()
    completed = subprocess.run(list(command), env=None if env is None else dict(env), cwd=cwd,
                               capture_output=True, text=True, timeout=timeout_s)
    return completed.returncode, time.perf_counter() - start, completed.stdout + completed.stderr
