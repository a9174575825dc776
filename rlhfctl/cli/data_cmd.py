"""``rlhfctl data ...``: convert public datasets to the standard formats, list the formats, inspect a file.

Thin layer: parse the flags, call :mod:`rlhfctl.data.convert` / :mod:`rlhfctl.data.inspect`, render the result
(a Rich table on a terminal, plain text otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True,
    help="Convert, list and inspect datasets (preference pairs, prompts, SFT rows).",
)

CONVERT_EPILOG = (
    "Examples:\n\n"
    "  rlhfctl data convert hh_train.jsonl --to rm -o rm.jsonl --report report.json\n\n"
    "  rlhfctl data convert alpaca.json --to sft -o sft.jsonl --val-split 5 --seed 1\n\n"
    "  rlhfctl data convert prompts.csv --to ppo -o ppo.jsonl --field prompt=query"
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@app.command("convert", epilog=CONVERT_EPILOG)
def convert_command(
    input: Annotated[str, typer.Argument(help="Input file (JSONL, JSON, CSV/TSV, Parquet), datasets folder or hub id.",
                                         show_default=False)],
    to: Annotated[str, typer.Option("--to", help="Target standard format: rm, ppo or sft.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL file.", show_default=False)],
    source_format: Annotated[str, typer.Option("--from", help="Source format (see `rlhfctl data formats`).")] = "auto",
    field: Annotated[Optional[list[str]], typer.Option(
        "--field", help="Use column SOURCE as key TARGET: TARGET=SOURCE (repeatable).", show_default=False)] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Skip rows identical to an earlier output row.")] = False,
    val_split: Annotated[Optional[float], typer.Option(
        "--val-split", help="Percent of rows written to a second file OUTPUT-stem.validation.jsonl.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --val-split draw.")] = 0,
    max_rows: Annotated[Optional[int], typer.Option(
        "--max-rows", help="Stop after writing this many rows.", show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first row that would be skipped.")] = False,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write the summary as JSON to this file.", show_default=False)] = None,
    preference: Annotated[str, typer.Option(
        "--preference", help="PKU-SafeRLHF: which label picks chosen: better or safer.")] = "better",
    min_score_ratio: Annotated[Optional[float], typer.Option(
        "--min-score-ratio", help="SHP: keep pairs whose score_A/score_B ratio is at least this.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT (and --report) if they exist.")] = False,
) -> None:
    """Convert a dataset to rlhfctl's standard JSONL (rm, ppo or sft rows), reporting every skipped row."""
    from rlhfctl.data.convert import ConvertRequest, convert_file, parse_field_mappings
    from rlhfctl.data.formats import ConvertOptions
    from rlhfctl.data.report import write_report
    from rlhfctl.errors import UserError
    from rlhfctl.fileio import refuse_to_clobber

    if report is not None:
        refuse_to_clobber(report, force=force, what="report file")
        if report.resolve() == output.resolve():
            raise UserError("--report and --output name the same file")
    request = ConvertRequest(
        input=input, output=output, target=to, source_format=source_format,
        fields=parse_field_mappings(field or []), dedupe=dedupe, validation_percentage=val_split, seed=seed,
        max_rows=max_rows, strict=strict, force=force,
        options=ConvertOptions(preference=preference, min_score_ratio=min_score_ratio),
    )
    result = convert_file(request)
    if report is not None:
        write_report(result, report)
    console = _console()
    if console.is_terminal:
        console.print(_convert_table(result))
    else:
        typer.echo(result.to_text())


def _convert_table(result) -> Table:
    how = "detected" if result.format_detected else "--from"
    table = Table(title=f"{escape(result.input)} -> {escape(result.output)}", show_header=True, title_justify="left")
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_column("first input lines / notes")
    table.add_row("format", "", f"{result.source_format} ({how}), {result.layout}, to {result.target}")
    table.add_row("read", str(result.rows_read), "")
    table.add_row("written", str(result.train_rows), escape(result.output))
    if result.validation_output:
        table.add_row("validation", str(result.validation_rows), escape(result.validation_output))
    for reason, tally in sorted(result.skipped.items(), key=lambda item: -item[1].count):
        lines = ", ".join(str(line) for line in tally.first_lines)
        note = f"{lines}  ({escape(tally.example)})" if tally.example else lines
        table.add_row(f"[yellow]skipped {reason}[/]", str(tally.count), note)
    table.caption = f"{result.seconds:.2f} s"
    return table


@app.command("formats", epilog="Examples:\n\n  rlhfctl data formats\n\n  rlhfctl data formats --json")
def formats_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the source formats `data convert --from` accepts, their keys and the targets they convert to."""
    from rlhfctl.data.formats import FORMATS, SKIP_REASONS

    if as_json:
        typer.echo(json.dumps({
            "formats": [{"name": f.name, "targets": list(f.targets), "keys": list(f.keys), "summary": f.summary}
                        for f in FORMATS],
            "skip_reasons": SKIP_REASONS,
        }, indent=2))
        return
    console = _console()
    if console.is_terminal:
        table = Table(title="Source formats (--from auto detects them)", title_justify="left")
        for column in ("name", "--to", "what it looks like"):
            table.add_column(column)
        for source_format in FORMATS:
            table.add_row(source_format.name, ", ".join(source_format.targets), escape(source_format.summary))
        console.print(table)
        return
    for source_format in FORMATS:
        typer.echo(f"{source_format.name:<20} {','.join(source_format.targets):<11} {source_format.summary}")


@app.command("inspect", epilog=(
    "Examples:\n\n  rlhfctl data inspect rm.jsonl\n\n"
    "  rlhfctl data inspect hh_train.jsonl --tokenizer ./my-model --max-length 512\n\n"
    "  rlhfctl data inspect sft.jsonl --json"))
def inspect_command(
    file: Annotated[str, typer.Argument(help="Data file, datasets folder or hub id.", show_default=False)],
    tokenizer: Annotated[Optional[str], typer.Option(
        "--tokenizer", help="Tokenizer folder or hub id: adds token lengths.", show_default=False)] = None,
    max_length: Annotated[int, typer.Option("--max-length", help="Count rows longer than this (tokens).")] = 512,
    examples: Annotated[int, typer.Option("--examples", help="Example rows to show.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show a data file's format, row count, field lengths, duplicates, identical pairs and example rows."""
    from rlhfctl.data.inspect import inspect_file, load_tokenizer

    loaded = load_tokenizer(tokenizer) if tokenizer else None
    result = inspect_file(file, tokenizer=loaded, max_length=max_length, example_count=examples)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    console = _console()
    console.print(f"[bold]{escape(result.path)}[/]: {result.layout}, format {result.source_format or 'unknown'}, "
                  f"{result.rows} rows")
    table = Table(show_header=True, box=None)
    for column in ("field", "chars mean", "median", "p95", "max", "empty"):
        table.add_column(column, justify="left" if column == "field" else "right")
    if result.token_lengths:
        for column in ("tokens mean", "p95", "max"):
            table.add_column(column, justify="right")
    for key, stats in result.char_lengths.items():
        cells = [escape(key), f"{stats.mean:.0f}", f"{stats.median:.0f}", str(stats.p95), str(stats.max),
                 str(result.empty_fields.get(key, 0))]
        if result.token_lengths:
            tokens = result.token_lengths.get(key)
            cells += [f"{tokens.mean:.0f}", str(tokens.p95), str(tokens.max)] if tokens else ["", "", ""]
        table.add_row(*cells)
    console.print(table)
    console.print(f"duplicate rows: {result.duplicate_rows}   identical pairs: {result.identical_pairs}")
    if result.rows_over_max_length is not None:
        console.print(f"rows longer than {result.max_length} tokens: {result.rows_over_max_length}")
    for line, record in result.examples:
        console.print(f"[dim]line {line}:[/] {escape(_shorten(record))}")


def _shorten(record: object, limit: int = 300) -> str:
    text = json.dumps(record, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + " ..."
