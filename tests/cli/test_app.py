"""The root app: help, version, completion, and how errors become messages and exit codes."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from rlhfctl import __version__
from rlhfctl.cli.app import RlhfctlGroup, app
from rlhfctl.errors import ConfigError, ConfigIssue, RuntimeFailure, UserError

runner = CliRunner()


def test_help_lists_every_group_with_examples() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=120)
    assert result.exit_code == 0
    for command in ("init", "validate-config", "config", "data", "sft", "rm", "ppo"):
        assert f" {command} " in result.stdout, command
    assert "Examples:" in result.stdout
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output and "validate-config" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rlhfctl {__version__}"


def test_every_command_of_this_issue_has_help_with_an_epilog() -> None:
    for args in (["init"], ["validate-config"], ["config"], ["config", "show"], ["config", "migrate"]):
        result = runner.invoke(app, [*args, "--help"], terminal_width=120)
        assert result.exit_code == 0, args
        assert "Examples:" in result.stdout and "rlhfctl " in result.stdout, args


def test_usage_errors_exit_2_without_traceback() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["config", "show", "x.toml", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.output
    assert "unexpected error" not in result.output and "Traceback" not in result.output


def _error_app() -> typer.Typer:
    demo = typer.Typer(cls=RlhfctlGroup)

    @demo.command()
    def fail(kind: str) -> None:
        if kind == "user":
            raise UserError("the input is wrong", hint="Fix the input.")
        if kind == "config":
            raise ConfigError([ConfigIssue("training.epochs", "must be greater than 0", 0, 4)], "c.toml")
        if kind == "runtime":
            raise RuntimeFailure("a worker died")
        raise ZeroDivisionError("boom")

    @demo.command()
    def other() -> None:
        """A second command so `fail` stays a subcommand."""

    return demo


def test_errors_become_messages_and_exit_codes(monkeypatch) -> None:
    monkeypatch.delenv("RLHFCTL_DEBUG", raising=False)
    demo = _error_app()
    result = runner.invoke(demo, ["fail", "user"])
    assert result.exit_code == 2
    assert "error: the input is wrong" in result.stderr and "Fix the input." in result.stderr
    result = runner.invoke(demo, ["fail", "config"])
    assert result.exit_code == 2 and "c.toml:4: training.epochs: must be greater than 0" in result.stderr
    result = runner.invoke(demo, ["fail", "runtime"])
    assert result.exit_code == 1 and "failed: a worker died" in result.stderr
    result = runner.invoke(demo, ["fail", "bug"])
    assert result.exit_code == 1
    assert "unexpected error: ZeroDivisionError: boom" in result.stderr
    assert "RLHFCTL_DEBUG=1" in result.stderr and "Traceback" not in result.output


def test_debug_mode_lets_the_traceback_through(monkeypatch) -> None:
    monkeypatch.setenv("RLHFCTL_DEBUG", "1")
    result = runner.invoke(_error_app(), ["fail", "bug"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ZeroDivisionError)
