"""Registers every command group on the root app (one module per group; the stage groups come from the registry)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from rlhfctl.cli import config_cmd, data_cmd, init_cmd, stages, example_cmd
    from rlhfctl.cli import report_cmd

    init_cmd.register(app)
    config_cmd.register(app)
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(data_cmd.app, name="data")
    stages.register(app)  # sft, rm, ppo, ...: `<stage> train` for each (+ rm eval/score, ppo sample)
    app.add_typer(example_cmd.app, name="example")
    report_cmd.register(app)
