"""Registers every command group on the root app (one module per group, imported lazily by Typer at call)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from rlhfctl.cli import config_cmd, data_cmd, init_cmd, ppo_cmd, rm_cmd, sft_cmd, example_cmd
    from rlhfctl.cli import report_cmd

    init_cmd.register(app)
    config_cmd.register(app)
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(data_cmd.app, name="data")
    app.add_typer(sft_cmd.app, name="sft")
    app.add_typer(rm_cmd.app, name="rm")
    app.add_typer(ppo_cmd.app, name="ppo")
    app.add_typer(example_cmd.app, name="example")
    report_cmd.register(app)
