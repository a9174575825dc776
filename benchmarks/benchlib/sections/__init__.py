"""One module per benchmark section; each exposes ``run(ctx) -> SectionResult``."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchlib import stats
from benchlib.stats import Row
from benchlib.tools import ToolRun


@dataclass
class SectionResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def median_of(runs: list[ToolRun], attribute: str) -> float | None:
    return stats.median(getattr(run, attribute) for run in runs if run.ok)


def first_error(runs: list[ToolRun]) -> str:
    return next((run.error or run.rate_note for run in runs if run.error or run.rate_note), "")


def samples_of(runs: list[ToolRun], attribute: str) -> list[float]:
    return [value for value in (getattr(run, attribute) for run in runs if run.ok) if value is not None]


def compare_rows(section: str, rlhfctl_label: str, mine: list[ToolRun], theirs: list[ToolRun], *, unit: str,
                 rate_figure: str, flops_per_item: float | None = None, peak_flops: float | None = None,
                 note: str = "", mfu_note: str = "vs fp32 matmul peak at 2 threads") -> list[Row]:
    """Rows for steady-state rate, end-to-end wall time, peak PSS and MFU of rlhfctl runs vs TRL runs."""
    problems = "; ".join(filter(None, [
        f"rlhfctl: {first_error(mine)}" if first_error(mine) else "",
        f"TRL: {first_error(theirs)}" if first_error(theirs) else "",
    ]))
    full_note = "; ".join(filter(None, [note, problems]))
    rows = [
        Row(section, f"{rate_figure} ({rlhfctl_label})", unit, median_of(mine, "steady_rate"),
            median_of(theirs, "steady_rate"), full_note,
            samples={"rlhfctl": samples_of(mine, "steady_rate"), "trl": samples_of(theirs, "steady_rate")}),
        Row(section, f"end-to-end wall time ({rlhfctl_label})", "s", median_of(mine, "wall_time_s"),
            median_of(theirs, "wall_time_s"), "process start to exit", higher_is_better=False,
            samples={"rlhfctl": samples_of(mine, "wall_time_s"), "trl": samples_of(theirs, "wall_time_s")}),
        Row(section, f"peak PSS, process tree ({rlhfctl_label})", "GB", median_of(mine, "peak_pss_gb"),
            median_of(theirs, "peak_pss_gb"), "", higher_is_better=False,
            samples={"rlhfctl": samples_of(mine, "peak_pss_gb"), "trl": samples_of(theirs, "peak_pss_gb")}),
    ]
    if flops_per_item and peak_flops:
        mine_rate, their_rate = rows[0].rlhfctl, rows[0].trl
        rows.append(Row(section, f"MFU ({rlhfctl_label})", "%",
                        stats.mfu(mine_rate * flops_per_item, peak_flops) if mine_rate else None,
                        stats.mfu(their_rate * flops_per_item, peak_flops) if their_rate else None,
                        mfu_note))
    return rows


def first_step_row(section: str, rlhfctl_label: str, mine: list[ToolRun]) -> Row:
    """rlhfctl's command start to its first optimizer step (start-up: imports, Ray, workers, model, data)."""
    return Row(section, f"command start to first optimizer step ({rlhfctl_label})", "s",
               median_of(mine, "first_step_s"), None,
               "process launch to the first train record's time in metrics.jsonl; min "
               + (f"{min(samples_of(mine, 'first_step_s')):.2f}" if samples_of(mine, "first_step_s") else "n/a"),
               higher_is_better=False, samples={"rlhfctl": samples_of(mine, "first_step_s")})


@dataclass(frozen=True)
class DefaultLayout:
    """What ``num_training_workers = "auto"`` (the templates' default) resolves to on this machine."""

    workers: int
    cpus_per_worker: float

    @property
    def label(self) -> str:
        return f"auto = {self.workers} worker{'s' if self.workers != 1 else ''} x {self.cpus_per_worker:g} CPU"


def default_layout() -> DefaultLayout:
    from rlhfctl.config.layout import MachineResources, resolve_layout
    from rlhfctl.config.schema.common import TrainingCommon

    layout = resolve_layout(TrainingCommon(), None, MachineResources.detect())  # [training] at its defaults
    return DefaultLayout(layout.workers, layout.resources_per_worker.get("CPU", 0.0))
