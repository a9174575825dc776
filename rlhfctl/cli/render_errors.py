"""How errors look at the terminal: one red line per problem on stderr, no traceback."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from rlhfctl.errors import RlhfctlError, UserError


def print_error(exc: RlhfctlError, console: Console | None = None) -> None:
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    label = "error" if isinstance(exc, UserError) else "failed"
    console.print(f"[bold red]{label}:[/] {escape(exc.message)}")
    if exc.hint:
        console.print(f"[dim]{escape(exc.hint)}[/]")
