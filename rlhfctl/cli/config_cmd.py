"""`rlhfctl validate-config` and the `rlhfctl config ...` group (show, migrate).

Thin layer: parse arguments, call :mod:`rlhfctl.config`, render with Rich. Errors are raised, never printed here
(the root group prints them and sets the exit code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlhfctl.cli._overrides import ConfigArg, OverridesArg, StageOption, load_with_overrides
from rlhfctl.errors import ConfigError, UserError

app = typer.Typer(
    name="config",
    help="Show resolved configs and migrate llm-on-ray configs to TOML.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    epilog=(
        "Examples:\n\n"
        "  rlhfctl config show rm.toml training.epochs=3\n\n"
        "  rlhfctl config migrate reward.conf -o rm.toml\n\n"
        "  rlhfctl config migrate finetune.yaml -o sft.toml --stage sft --force"
    ),
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------ validate-config


def validate_config(
    config: ConfigArg,
    overrides: OverridesArg = None,
    stage: StageOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
) -> None:
    """Check a config (every problem at once, exit 2) and print the resolved values."""
    from rlhfctl.config.resources import check_resources

    try:
        resolved = load_with_overrides(config, overrides, stage)
    except ConfigError as exc:
        if json_output:
            typer.echo(json.dumps({"valid": False, "path": str(config), "problems": [
                {"key": issue.key, "message": issue.message, "line": issue.line} for issue in exc.issues]}))
        raise
    notes = check_resources(resolved)
    if json_output:
        typer.echo(json.dumps({
            "valid": True,
            "path": str(config),
            "stage": resolved.stage,
            "config": resolved.model_dump(mode="json"),
            "warnings": [note.message for note in notes if note.level == "warning"],
            "notes": [note.message for note in notes if note.level == "info"],
        }, indent=2))
        return
    console = _console()
    console.print(f"[bold green]valid[/]: {escape(str(config))} configures the [bold]{resolved.stage}[/] stage")
    for section_name, section in _sections(resolved):
        console.print(_section_table(section_name, section))
    for note in notes:
        style = "[bold yellow]warning:[/]" if note.level == "warning" else "[dim]note:[/]"
        console.print(f"{style} {escape(note.message)}")


def _sections(config: Any) -> list[tuple[str, Any]]:
    """Every section of the config, in file order; an optional section left out (``[lora]``) is not shown."""
    return [(name, getattr(config, name)) for name in type(config).sections() if getattr(config, name) is not None]


def _section_table(name: str, section: Any) -> Table:
    table = Table(title=escape(f"[{name}]"), title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("value")
    table.add_column("source", style="dim")
    for key in type(section).model_fields:
        value = getattr(section, key)
        shown = "(unset)" if value is None else _format_value(value)
        table.add_row(key, escape(shown), "" if key in section.model_fields_set else "default")
    return table


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_format_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def register(root: typer.Typer) -> None:
    """Add the top-level ``validate-config`` command (the ``config`` group is added by commands.py)."""
    root.command(
        "validate-config",
        help="Validate a config (every problem at once) and print the resolved values.",
        epilog=(
            "Examples:\n\n"
            "  rlhfctl validate-config rm.toml\n\n"
            "  rlhfctl validate-config rm.toml training.learning_rate=2e-5 general.seed=3\n\n"
            "  rlhfctl validate-config ppo.toml --json"
        ),
    )(validate_config)


# ------------------------------------------------------------------------------------------------ config show


@app.command("show", epilog="Examples:\n\n  rlhfctl config show rm.toml\n\n"
                            "  rlhfctl config show ppo.toml generation.max_new_tokens=64")
def show(
    config: ConfigArg,
    overrides: OverridesArg = None,
    stage: StageOption = None,
    skip_file_checks: Annotated[
        bool, typer.Option("--skip-file-checks", help="Do not require the data files and local models to exist.")
    ] = False,
) -> None:
    """Print the resolved config (overrides applied, defaults filled in, paths absolute) as TOML."""
    from rlhfctl.config.render import config_to_toml

    resolved = load_with_overrides(config, overrides, stage, check_files=not skip_file_checks)
    typer.echo(config_to_toml(resolved), nl=False)


# ------------------------------------------------------------------------------------------------ config migrate


@app.command("migrate", epilog="Examples:\n\n  rlhfctl config migrate rlhf/reward.conf -o rm.toml\n\n"
                               "  rlhfctl config migrate rlhf/ppo.conf -o ppo.toml --force")
def migrate(
    source: Annotated[Path, typer.Argument(help="llm-on-ray config: a .conf Python dict, JSON or YAML.",
                                           show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The new TOML config to write.",
                                         show_default=False)],
    stage: Annotated[Optional[Literal["sft", "rm", "ppo"]], typer.Option(
        "--stage", help="Stage of the new config (inferred from the keys or file name when left out).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert an llm-on-ray config (read as data, never executed) into an rlhfctl TOML config."""
    from rlhfctl.config.migrate import migrate_config
    from rlhfctl.fileio import atomic_write_text, refuse_to_clobber

    if output.expanduser().absolute().resolve() == source.expanduser().absolute().resolve():
        raise UserError(f"the output {output} is the input file: choose another -o")
    refuse_to_clobber(output, force=force, what="output config")
    result = migrate_config(source, stage=stage)
    atomic_write_text(output, result.to_toml())
    console = _console()
    console.print(f"[bold green]wrote[/] {escape(str(output))} ([bold]{result.stage}[/] stage) from "
                  f"{escape(str(source))}")
    if result.notes:
        console.print("Notes on the original keys (also at the top of the new file):")
        for note in result.notes:
            console.print(f"  - [cyan]{escape(note.key)}[/]: [bold]{note.kind}[/] - {escape(note.message)}")
    console.print(f"Next: rlhfctl validate-config {escape(str(output))}")
