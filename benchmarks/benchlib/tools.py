"""How the harness runs each tool: rlhfctl through its CLI, TRL through the scripts in ``trl_scripts/``.

Each run gets a fresh folder under ``benchmarks/results/work/runs/``; the result of a run is a :class:`ToolRun`
(throughput from the step times, wall time, peak PSS) whatever the tool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlhfctl.runfiles import METRICS_FILE

from benchlib import stats
from benchlib.procmon import MeasuredRun, run_measured
from benchlib.workspace import BenchData, write_toml

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = BENCH_DIR.parent
TRL_SCRIPTS = BENCH_DIR / "trl_scripts"
TRL_PPO_DIR = BENCH_DIR / ".trl-1.12.0"      # the last TRL with PPOTrainer (trl.experimental.ppo)
TRL_CURRENT_DIR = BENCH_DIR / ".trl-current"  # current TRL: RLOO, DPO, GRPO
ACCELERATE_DIR = BENCH_DIR / ".trl-accelerate"

# Without a per-record "time" field, a step's time is when its metrics line appeared (the driver polls its
# progress channel every ~0.25 s); a rate over less than this span would be mostly polling jitter.
MIN_ARRIVAL_SPAN_S = 3.0

INSTALL_HINT = (
    "pip install --no-deps --target benchmarks/.trl-1.12.0 trl==1.12.0; "
    "pip install --no-deps --target benchmarks/.trl-current trl; "
    "pip install --no-deps --target benchmarks/.trl-accelerate accelerate"
)


@dataclass
class ToolRun:
    """One measured run of one tool."""

    tool: str                       # "rlhfctl" or "trl"
    label: str                      # e.g. "rlhfctl 2 workers x 1 CPU"
    measured: MeasuredRun | None
    steady_rate: float | None = None            # items (pairs, rows, episodes) per second after warm-up
    phase_seconds: dict[str, float] = field(default_factory=dict)  # PPO: generate/score/train per update
    error: str | None = None
    rate_note: str = ""             # why steady_rate is missing although the run succeeded
    first_step_s: float | None = None  # rlhfctl: command start to the first optimizer step's log time
    extra: dict = field(default_factory=dict)  # figures beside the timing: TRL's result file, rlhfctl's validation
    step_end_times_s: list[float] = field(default_factory=list)  # exact step end times, where the tool gives them
    items_per_step: list[float] = field(default_factory=list)
    run_dir: Path | None = None     # the run's folder: its log, rlhfctl's export/, TRL's output/

    @property
    def rate_without_stalls(self) -> float | None:
        """The steady-state rate leaving out steps of >= 3x the median step (``stats.rate_without_stalls``)."""
        return stats.rate_without_stalls(self.step_end_times_s, self.items_per_step)[0] if self.ok else None

    @property
    def stalled_steps(self) -> int | None:
        return stats.rate_without_stalls(self.step_end_times_s, self.items_per_step)[1] if self.ok else None

    @property
    def ok(self) -> bool:
        return self.error is None and self.measured is not None and self.measured.ok

    @property
    def wall_time_s(self) -> float | None:
        return self.measured.wall_time_s if self.ok else None

    @property
    def peak_pss_gb(self) -> float | None:
        return self.measured.peak_pss_gb if self.ok else None

    def summary(self) -> dict:
        return {
            "tool": self.tool, "label": self.label, "ok": self.ok, "error": self.error,
            "steady_rate": self.steady_rate, "wall_time_s": self.wall_time_s, "peak_pss_gb": self.peak_pss_gb,
            "peak_processes": self.measured.peak_processes if self.measured else None,
            "phase_seconds": self.phase_seconds, "rate_note": self.rate_note, "first_step_s": self.first_step_s,
            "rate_without_stalls": self.rate_without_stalls, "stalled_steps": self.stalled_steps,
            "step_end_times_s": self.step_end_times_s,
        }


@dataclass
class BenchContext:
    """Shared state of one harness invocation."""

    quick: bool
    repeats: int
    work: Path
    data: BenchData
    models: dict[str, Path]
    peak_gflops: dict[str, float] = field(default_factory=dict)  # "fp32@1", "fp32@2", "bf16@2" ...
    invocation: str = "latest"      # sub-folder of work/runs for this harness invocation
    ppo_tiny_only: bool = False     # PPO section: the tiny model only (--ppo-tiny-only)
    _run_counter: int = 0

    def run_dir(self, label: str) -> Path:
        self._run_counter += 1
        safe = "".join(ch if ch.isalnum() else "-" for ch in label).strip("-")
        path = self.work / "runs" / self.invocation / f"{self._run_counter:03d}-{safe}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def peak_flops(self, threads: int) -> float | None:
        value = self.peak_gflops.get(f"fp32@{threads}")
        return value * 1e9 if value else None


# ----------------------------------------------------------------------------------------------- rlhfctl


def rlhfctl_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhfctl", *args]


def rlhfctl_available(group: str, command: str) -> tuple[bool, str]:
    """Whether ``rlhfctl GROUP COMMAND`` exists in this checkout (its ``--help`` succeeds)."""
    try:
        completed = subprocess.run(rlhfctl_command(group, command, "--help"), capture_output=True, text=True,
                                   timeout=120, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return False, f"`rlhfctl {group} {command} --help` timed out"
    if completed.returncode != 0:
        first_error = (completed.stderr or completed.stdout).strip().splitlines()
        reason = next((line.strip(" │╭╰─") for line in first_error if "command" in line.lower()), "")
        return False, f"`rlhfctl {group} {command}` not available ({reason or 'exit ' + str(completed.returncode)})"
    return True, ""


def rlhfctl_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_rlhfctl_train(ctx: BenchContext, stage: str, label: str, config: dict, *, items_per_step: int,
                      timeout_s: float = 1800, pss_interval_s: float = 0.2) -> ToolRun:
    """Write ``config`` as TOML, run ``rlhfctl STAGE train CONFIG --quiet``, measure it, read its metrics.

    ``pss_interval_s``: how often the process tree's PSS is sampled. One sample of a Ray run (~14 processes)
    costs ~57 ms of CPU, so a run that reports no memory figure samples rarely: at 0.2 s the sampler takes
    ~20 % of a core, which on 2 cores comes out of the workers' time when they use both.
    """
    run_dir = ctx.run_dir(label)
    config = json.loads(json.dumps(config, default=str))
    config.setdefault("general", {})
    config["general"]["output_dir"] = str(run_dir / "output")
    config["general"]["checkpoint_dir"] = str(run_dir / "export")
    config_path = write_toml(run_dir / f"{stage}.toml", config)
    command = rlhfctl_command(stage, "train", str(config_path), "--quiet")
    measured = run_measured(command, env=rlhfctl_env(), cwd=REPO_ROOT, timeout_s=timeout_s,
                            log_file=run_dir / "log.txt", watch_metrics=run_dir / "output" / METRICS_FILE,
                            sample_interval_s=pss_interval_s)
    run = ToolRun("rlhfctl", label, measured, run_dir=run_dir)
    if not measured.ok:
        run.error = _failure_reason(measured)
        return run
    train = [record for record in measured.metrics if record.split == "train"]
    exact = bool(train) and all("time" in rec.record for rec in train)
    if exact and measured.start_time:
        run.first_step_s = float(train[0].record["time"]) - measured.start_time
        run.step_end_times_s = [float(rec.record["time"]) - measured.start_time for rec in train]
        run.items_per_step = [items_per_step] * len(train)
    run.steady_rate = stats.steady_state_rate([rec.time for rec in train], [items_per_step] * len(train),
                                              min_span_s=0.0 if exact else MIN_ARRIVAL_SPAN_S)
    if run.steady_rate is None:
        run.steady_rate = rate_from_step_metrics([rec.record for rec in train], items_per_step)
        if run.steady_rate is not None:
            run.rate_note = "run too short to time from metrics arrival: rate from rlhfctl's per-step *_per_s metric"
        else:
            run.rate_note = (f"{len(train)} steps logged; too short to time from metrics arrival "
                             f"(needs >= {MIN_ARRIVAL_SPAN_S:.0f} s after warm-up)")
    run.phase_seconds = _rlhfctl_phase_seconds([rec.record for rec in train])
    run.extra["validation"] = [rec.record for rec in measured.metrics if rec.split == "validation"]
    return run


def rate_from_step_metrics(records: list[dict], items_per_step: int) -> float | None:
    """Steady-state rate from a per-step rate metric the run logs itself (a key ending in ``_per_s``).

    Each step's duration is ``items / rate``; the warm-up steps are dropped as in ``stats.steady_state_rate``.
    """
    durations = []
    for record in records:
        rates = [value for key, value in record.items()
                 if key.endswith(("_per_s", "_per_second")) and isinstance(value, (int, float)) and value > 0]
        if not rates:
            return None
        durations.append(items_per_step / rates[0])
    ends = [sum(durations[: index + 1]) for index in range(len(durations))]
    return stats.steady_state_rate(ends, [items_per_step] * len(ends)) if ends else None


def _rlhfctl_phase_seconds(records: list[dict]) -> dict[str, float]:
    """Median seconds per update of generate / score / train from rlhfctl's ``time_*_s`` metrics.

    ``score`` gathers every gradient-free forward after generation (``time_score_s`` and ``time_forward_s``:
    old-policy, reference, value and reward passes), matching what the TRL side counts as scoring.
    """
    phase_of = {"generate": "generate", "score": "score", "forward": "score", "train": "train"}
    per_update: list[dict[str, float]] = []
    for record in records[1:]:  # the first update pays one-off costs
        phases: dict[str, float] = {}
        for key, value in record.items():
            if not (key.startswith("time_") and key.endswith("_s") and isinstance(value, (int, float))):
                continue
            phase = phase_of.get(key[len("time_"):-len("_s")])
            if phase:
                phases[phase] = phases.get(phase, 0.0) + float(value)
        if phases:
            per_update.append(phases)
    names = sorted({name for phases in per_update for name in phases})
    return {name: stats.median(phases.get(name) for phases in per_update) for name in names}


def _failure_reason(measured: MeasuredRun) -> str:
    if measured.timed_out:
        return "timed out"
    lines = [line.strip() for line in measured.output_tail.strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if "error" in line.lower() or "not available" in line.lower()]
    tail = (meaningful or lines or ["no output"])[-1]
    return f"exit {measured.returncode}: {tail[:200]}"


# ----------------------------------------------------------------------------------------------- TRL


def trl_env(trl_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(trl_dir), str(ACCELERATE_DIR), str(TRL_SCRIPTS)])
    env["TRL_EXPERIMENTAL_SILENCE"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def trl_available(trl_dir: Path) -> tuple[bool, str]:
    if not (trl_dir / "trl").is_dir() or not (ACCELERATE_DIR / "accelerate").is_dir():
        return False, f"TRL not installed in {trl_dir.name} (run: {INSTALL_HINT})"
    return True, ""


def run_trl_script(ctx: BenchContext, script: str, label: str, args: list[str], *, trl_dir: Path = TRL_PPO_DIR,
                   timeout_s: float = 1800) -> ToolRun:
    """Run ``trl_scripts/SCRIPT`` with TRL on PYTHONPATH; the script writes step times to a result file."""
    available, reason = trl_available(trl_dir)
    if not available:
        return ToolRun("trl", label, None, error=reason)
    run_dir = ctx.run_dir(label)
    result_path = run_dir / "result.json"
    command = [sys.executable, str(TRL_SCRIPTS / script), *args, "--out", str(run_dir / "output"),
               "--result", str(result_path)]
    measured = run_measured(command, env=trl_env(trl_dir), cwd=run_dir, timeout_s=timeout_s,
                            log_file=run_dir / "log.txt")
    run = ToolRun("trl", label, measured, run_dir=run_dir)
    if not measured.ok or not result_path.exists():
        run.error = _failure_reason(measured)
        return run
    result = json.loads(result_path.read_text(encoding="utf-8"))
    run.steady_rate = stats.steady_state_rate(result["step_end_times_s"], result["items_per_step"])
    run.step_end_times_s, run.items_per_step = result["step_end_times_s"], result["items_per_step"]
    run.extra = {key: value for key, value in result.items()
                 if key not in ("step_end_times_s", "items_per_step", "per_update_phase_s")}
    phases = result.get("per_update_phase_s") or []
    if len(phases) > 1:
        run.phase_seconds = {name: stats.median(p[f"{name}_s"] for p in phases[1:])
                             for name in ("generate", "score", "train")}
    return run
