"""The ``<stage> train`` command every registered stage gets: load the config, dry-run or run the recipe, render.

The recipe comes from the registry (:func:`rlhfctl.recipes.registry.load_recipe`): ``plan(config) ->
TrainingPlan`` for ``--dry-run``, ``run(config, resume=, force=, progress=, config_path=) -> RunSummary``
otherwise. This module never imports torch or Ray itself (the recipe does, when it runs).

``--resume`` is a flag; ``--resume auto`` works because a bare ``auto`` can never be a ``key=value`` override:
it is taken out of the overrides here.
"""

from __future__ import annotations

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
    ) -> None:
        run_train_command(stage, config, overrides, resume=resume, dry_run=dry_run, quiet=quiet, force=force)

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
                      quiet: bool, force: bool, console: Console | None = None,
                      progress_console: Console | None = None) -> None:
    """Body of ``rlhfctl <stage> train``."""
    overrides, resume_mode = split_resume_auto(overrides, resume)
    config = load_with_overrides(config_path, overrides, stage)
    if config.stage != stage:
        raise UserError(f"{config_path} configures the {config.stage} stage, not {stage}",
                        hint=f"Run `rlhfctl {config.stage} train {config_path}` instead.")
    recipe = load_recipe(stage)
    console = console or _stdout()
    if dry_run:
        render_plan(recipe.plan(config), console)
        return
    from rlhfctl.progress.render import make_sink

    sink = make_sink(progress_console or Console(stderr=True), quiet=quiet)
    try:
        summary = recipe.run(config, resume=resume_mode, force=force, progress=sink,
                             config_path=_command_arguments(config_path, overrides))
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
        ("workers", f"{plan.workers} x {{{resources}}} on {where}"),
        ("training rows", _maybe(plan.train_rows)),
        ("validation rows", _maybe(plan.validation_rows)),
        ("epochs", str(plan.epochs)),
        ("steps per epoch", _maybe(plan.steps_per_epoch)),
        ("total steps", str(plan.total_steps)),
        ("samples per step", f"{plan.samples_per_step} (all workers)"),
        *plan.notes.items(),
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
    console.print(f"model:   {escape(str(summary.checkpoint_dir))}")
    console.print(f"metrics: {escape(str(Path(summary.output_dir) / METRICS_FILE))}")
