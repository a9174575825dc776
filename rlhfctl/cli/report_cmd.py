"""`rlhfctl report RUN_DIR [RUN_DIR ...]`: see what a run did (HTML page, PNG images or a terminal summary).

Thin layer: parse arguments, call :mod:`rlhfctl.report`, print what was written. The report modules (and their
plotting libraries) are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from rlhfctl.errors import UserError

EPILOG = (
    "Examples:\n\n"
    "  rlhfctl report runs/ppo\n\n"
    "  rlhfctl report runs/ppo -o ppo-report.html --png ppo-images\n\n"
    "  rlhfctl report runs/ppo-lr1e-5 runs/ppo-lr3e-5 -o compare.html --force"
)


def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run folders: a stage's general.output_dir (metrics.jsonl, events.jsonl, resolved_config.toml). "
             "Several runs are overlaid and their configs compared.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write one self-contained HTML page here (interactive plots, opens offline). "
                               "Without it a summary is printed.", show_default=False)] = None,
    png: Annotated[Optional[Path], typer.Option(
        "--png", help="Also write the main charts as PNG images into this folder.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing report or images.")] = False,
) -> None:
    """Report on training runs: curves, throughput, timeline, health alarms, samples and config (live runs too)."""
    from rlhfctl.fileio import atomic_write_text, refuse_to_clobber
    from rlhfctl.report.run_data import load_runs

    console = Console(highlight=False)
    if output is not None:
        if output.is_dir():
            raise UserError(f"-o {output} is a folder: give the HTML file to write, e.g. {output / 'report.html'}")
        refuse_to_clobber(output, force=force, what="report")
    runs = load_runs(run_dirs)
    images = None
    if png is not None:  # checked before anything is written
        from rlhfctl.report.png import plan_pngs

        images = plan_pngs(runs, png, force=force)
    if output is not None:
        from rlhfctl.report.html import render_html

        page = render_html(runs)
        atomic_write_text(output, page)
        console.print(f"[bold green]wrote[/] {escape(str(output))} ({len(runs)} run(s), "
                      f"{len(page.encode()) / 1e6:.1f} MB, opens offline in any browser)", soft_wrap=True)
        for run in runs:
            for note in run.notes:
                console.print(f"[yellow]note[/] {escape(run.label)}: {escape(note)}", soft_wrap=True)
    else:
        from rlhfctl.report.terminal import print_summary

        print_summary(runs, console)
    if png is not None and images is not None:
        from rlhfctl.report.png import write_pngs

        written = write_pngs(images, png)
        console.print(f"[bold green]wrote[/] {len(written)} image(s) into {escape(str(png))}: "
                      f"{escape(', '.join(path.name for path in written))}", soft_wrap=True)


def register(root: typer.Typer) -> None:
    """Add the top-level ``report`` command."""
    root.command("report", help="Report on training runs: an HTML page (-o), PNG images (--png) or a terminal "
                                "summary.", epilog=EPILOG, no_args_is_help=True)(report)
