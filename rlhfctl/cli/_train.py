"""The ``<stage> train`` command every registered stage gets: load the config, dry-run or run the recipe, render.

The recipe comes from the registry (:func:`rlhfctl.recipes.registry.load_recipe`): ``plan(config) ->
TrainingPlan`` for ``--dry-run``, ``run(config, resume=, force=, progress=, config_path=) -> RunSummary``
otherwise. This module never imports torch or Ray itself (the recipe does, when it runs).

``--resume`` is a flag; ``--resume auto`` works because a bare ``auto`` can never be a ``key=value`` override:
it is taken out of the overrides here.

``--dry-run`` prints the plan with its memory rows (the estimate per worker and its breakdown, what a worker has
here and whether it fits); ``--dry-run --json`` prints the whole plan as one JSON object. A real run refuses to
start (exit 2) when its memory plan clearly cannot fit, unless ``--no-memory-check``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlhfctl.cli._overrides import ConfigArg, OverridesArg, load_with_overrides
from rlhfctl.errors import UserError
from rlhfctl.recipes.registry import load_recipe
from rlhfctl.runfiles import METRICS_FILE, RESOLVED_CONFIG_FILE

if TYPE_CHECKING:  # pragma: no cover
    from rlhfctl.recipes.registry import StageEntry
    from rlhfctl.training.memory_plan import Probe


class _Default:
    """The "not given" marker of ``memory_probe`` (None is a real value: no probe)."""


DEFAULT = _Default()

ResumeOption = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in output_dir from its latest checkpoint "
                                  "(`--resume auto`: only if there is one).", show_default=False),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Validate config and data, print the plan, start nothing.")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No live progress; only the final summary.")]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Delete an earlier run in output_dir and replace checkpoint_dir.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as one JSON object.")]
NoMemoryCheckOption = Annotated[
    bool, typer.Option("--no-memory-check", help="Start even when the memory plan says a worker's memory is too "
                                                 "small.")
]


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def add_train_command(app: typer.Typer, entry: StageEntry) -> None:
    """Register ``rlhfctl <stage> train`` on the stage's group ``app``: every stage's train command takes the same
    arguments; its help and examples come from the registry entry."""
    stage = entry.name

    def train(
        config: ConfigArg,
        overrides: OverridesArg = None,
        resume: ResumeOption = False,
        dry_run: DryRunOption = False,
        quiet: QuietOption = False,
        force: ForceOption = False,
        json_output: JsonOption = False,
        no_memory_check: NoMemoryCheckOption = False,
    ) -> None:
        run_train_command(stage, config, overrides, resume=resume, dry_run=dry_run, quiet=quiet, force=force,
                          json_output=json_output, memory_check=not no_memory_check)

    epilog = "Examples:\n\n" + "\n\n".join(f"  {example}" for example in entry.train_examples)
    app.command("train", help=entry.train_help, epilog=epilog)(train)


def split_resume_auto(overrides: list[str] | None, resume: bool) -> tuple[list[str], bool | str]:
    """``["auto", "a.b=1"]`` with ``--resume`` -> (``["a.b=1"]``, ``"auto"``)."""
    overrides = list(overrides or ())
    if resume and "auto" in overrides:
        overrides.remove("auto")
        return overrides, "auto"
    if "auto" in overrides:
        raise UserError("'auto' is only valid right after --resume (`--resume auto`)")
    return overrides, resume


def run_train_command(stage: str, config_path: Path, overrides: list[str] | None, *, resume: bool, dry_run: bool,
                      quiet: bool, force: bool, json_output: bool = False, memory_check: bool = True,
                      console: Console | None = None, progress_console: Console | None = None,
                      memory_probe: Probe | None | _Default = DEFAULT) -> None:
    """Body of ``rlhfctl <stage> train`` (``memory_probe``: what a worker has; tests inject one)."""
    if json_output and not dry_run:
        raise UserError("--json goes with --dry-run (a run prints its progress and summary)",
                        hint=f"Run `rlhfctl {stage} train CONFIG --dry-run --json`.")
    overrides, resume_mode = split_resume_auto(overrides, resume)
    config = load_with_overrides(config_path, overrides, stage)
    if config.stage != stage:
        raise UserError(f"{config_path} configures the {config.stage} stage, not {stage}",
                        hint=f"Run `rlhfctl {config.stage} train {config_path}` instead.")
    recipe = load_recipe(stage)
    console = console or _stdout()
    probe_option = {} if isinstance(memory_probe, _Default) else {"memory_probe": memory_probe}
    if dry_run:
        plan = recipe.plan(config, **probe_option)
        if json_output:  # plain text: no markup, highlighting or wrapping, so the output is valid JSON
            console.out(json.dumps(plan.to_dict(), indent=2), highlight=False)
        else:
            render_plan(plan, console)
        return
    from rlhfctl.progress.render import make_sink

    sink = make_sink(progress_console or Console(stderr=True), quiet=quiet)
    try:
        summary = recipe.run(config, resume=resume_mode, force=force, progress=sink,
                             config_path=_command_arguments(config_path, overrides), memory_check=memory_check,
                             **probe_option)
    finally:
        sink.close()
    render_summary(summary, console)


def _command_arguments(config_path: Path, overrides: list[str]) -> str:
    """The config path and overrides as they must be retyped (shell-quoted) in the printed ``--resume`` command."""
    return " ".join(shlex.quote(str(part)) for part in (config_path, *overrides))


def render_plan(plan, console: Console) -> None:
    table = Table(title=f"{plan.stage} training plan (dry run: nothing started)", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    resources = ", ".join(f"{amount:g} {name}" for name, amount in sorted(plan.resources_per_worker.items()))
    where = plan.ray_address or ("this process (no Ray start-up)" if plan.mode == "local" else "embedded local Ray")
    rows = [
        ("workers", plan.layout or f"{plan.workers} x {{{resources}}} on {where}"),
        ("training rows", _maybe(plan.train_rows)),
        ("validation rows", _maybe(plan.validation_rows)),
        ("epochs", str(plan.epochs)),
        ("steps per epoch", _maybe(plan.steps_per_epoch)),
        ("total steps", str(plan.total_steps)),
        ("samples per step", f"{plan.samples_per_step} (all workers)"),
        *plan.notes.items(),
        *(plan.memory.lines() if plan.memory is not None else ()),
        ("run directory", f"{plan.output_dir} ({METRICS_FILE}, {RESOLVED_CONFIG_FILE}, checkpoints in "
                          f"{plan.run_dir.name}/)"),
        ("final model", str(plan.checkpoint_dir)),
    ]
    for name, value in rows:
        table.add_row(escape(name), escape(str(value)))
    console.print(table)


def _maybe(value) -> str:
    return "?" if value is None else str(value)


def render_summary(summary, console: Console) -> None:
    from rlhfctl.progress.render import format_duration, format_parameters, format_value

    table = Table(title=f"{summary.stage} training finished: {summary.steps} steps in "
                        f"{format_duration(summary.wall_time_s)}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary.final_metrics.items():
        table.add_row(escape(name), format_value(value))
    console.print(table)
    if summary.resumed_from_step is not None:
        console.print(f"resumed from step {summary.resumed_from_step}")
    if summary.parameters is not None:
        console.print(format_parameters(*summary.parameters))
    for alarm in summary.alarms:
        console.print(f"[yellow]health warning[/] {escape(alarm.check)} at step {alarm.step}: {escape(alarm.message)}")
    console.print(f"model:   {escape(str(summary.checkpoint_dir))}")
    console.print(f"metrics: {escape(str(Path(summary.output_dir) / METRICS_FILE))}")
