"""The ``rlhfctl`` Typer application: command groups are registered here, each defined in its own module.

This module must stay cheap to import: no torch, ray, transformers or datasets at import time.
"""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

from rlhfctl import __version__
from rlhfctl.errors import RlhfctlError


class RlhfctlGroup(TyperGroup):
    """Root command group: turns rlhfctl's errors into a clear message and an exit code, never a traceback.

    Errors are handled here (not only in :func:`main`) so ``CliRunner`` tests see the same exit codes and
    messages as a user at the terminal: 2 for user errors, 1 for runtime failures.
    """

    def invoke(self, ctx):  # type: ignore[override]
        from rlhfctl.cli.render_errors import print_error

        try:
            return super().invoke(ctx)
        except RlhfctlError as exc:
            print_error(exc)
            ctx.exit(exc.exit_code)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise  # usage errors and exits: Typer prints them and picks the exit code
        except BrokenPipeError:
            # `rlhfctl rm score ... | head`: the reader went away; stop quietly like other Unix tools
            _silence_stdout()
            ctx.exit(0)
        except Exception as exc:
            if os.environ.get("RLHFCTL_DEBUG") == "1":
                raise
            print_error(RlhfctlError(f"unexpected error: {type(exc).__name__}: {exc}",
                                     hint="Run again with RLHFCTL_DEBUG=1 to see the traceback."))
            ctx.exit(1)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rlhfctl {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """From raw preference data to an aligned model: SFT, reward modelling, PPO, DPO and GRPO on Ray Train."""


def build_app() -> typer.Typer:
    """The root app with every command group registered (one group per stage of the registry, at build time)."""
    from rlhfctl.cli import commands

    root = typer.Typer(
        cls=RlhfctlGroup,
        name="rlhfctl",
        help="From raw preference data to an aligned model: SFT, reward modelling, PPO, DPO and GRPO on Ray Train.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        epilog=(
            "Examples:\n\n"
            "  rlhfctl init --stage rm --defaults -o rm.toml\n\n"
            "  rlhfctl validate-config rm.toml training.learning_rate=2e-5\n\n"
            "  rlhfctl rm train rm.toml --resume auto"
        ),
    )
    root.callback()(_root)
    commands.register(root)
    return root


app = build_app()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not raise a second BrokenPipeError."""
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file descriptor (CliRunner): nothing to silence
        pass
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rlhfctl`` and ``python -m rlhfctl``)."""
    from rlhfctl.training import collector

    if argv is None:  # the process's entry point (console script, python -m rlhfctl), not a caller's function call
        collector.end_without_teardown()  # after the exit handlers: no teardown of ~10^6 objects one by one
    try:
        app(args=argv, prog_name="rlhfctl")
    except SystemExit as exit_:
        collector.set_exit_status(exit_.code)
        raise
    finally:
        collector.freeze_before_exit()  # a training command leaves ~10^6 objects: the exit-time collector pass skips them
