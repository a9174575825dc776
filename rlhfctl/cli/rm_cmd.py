"""`rlhfctl rm ...` commands (being built; see the issue tracker)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="rm commands.")
