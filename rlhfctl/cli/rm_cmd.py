"""`rlhfctl rm eval` / `rlhfctl rm score`: use a trained reward model (`rm train` comes with every stage's group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlhfctl.errors import UserError

CheckpointArg = Annotated[Path, typer.Argument(help="An `rm train` export (its general.checkpoint_dir).",
                                               show_default=False)]
MaxLengthOption = Annotated[Optional[int], typer.Option(
    "--max-length", min=1, help="Token limit (default: the one the model was trained with).", show_default=False)]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Rows scored at once.")]


EVAL_EPILOG = ("Examples:\n\n"
               "  rlhfctl rm eval example-run/models/rm examples/data/rm.jsonl\n\n"
               "  rlhfctl rm eval models/rm heldout.jsonl --json")
SCORE_EPILOG = ("Examples:\n\n"
                "  rlhfctl rm score example-run/models/rm --text \"\\n\\nHuman: hi\\n\\nAssistant: Hello!\"\n\n"
                "  rlhfctl rm score models/rm responses.jsonl > rewards.jsonl")


def register(group: typer.Typer) -> None:
    """Add ``eval`` and ``score`` to the ``rm`` group."""
    group.command("eval", epilog=EVAL_EPILOG)(eval_command)
    group.command("score", epilog=SCORE_EPILOG)(score)


def eval_command(
    checkpoint: CheckpointArg,
    data: Annotated[Path, typer.Argument(help="Preference data: {instruction, chosen, rejected} rows.",
                                         show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (accuracy, margin, ..., "
                                                         "length_bias_spearman, longer_wins_accuracy).")] = False,
    max_length: MaxLengthOption = None,
    batch_size: BatchSizeOption = 16,
) -> None:
    """Accuracy, margin, loss and reward statistics of a reward model on preference data, and its length bias: the
    rank correlation of reward and reply length (length_bias_spearman) beside the accuracy of "the longer reply
    wins" (longer_wins_accuracy)."""
    from rlhfctl.models.reward_model import evaluate_file, load_checkpoint

    if not data.exists():
        raise UserError(f"data file not found: {data}")
    metrics = evaluate_file(load_checkpoint(checkpoint, max_length=max_length), data, batch_size=batch_size)
    metrics["pairs"] = int(metrics["pairs"])
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    table = Table(title=f"{escape(str(checkpoint))} on {escape(str(data))}", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(highlight=False).print(table)


def score(
    checkpoint: CheckpointArg,
    file: Annotated[Optional[Path], typer.Argument(
        help="JSONL rows with 'text', or 'prompt' + 'response', or 'chosen' + 'rejected'.", show_default=False)] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="One full text (prompt + response) to score.",
                                                show_default=False)] = None,
    max_length: MaxLengthOption = None,
    batch_size: BatchSizeOption = 16,
) -> None:
    """Reward of each text or row (one JSON object per row on stdout; a bare number for --text)."""
    from rlhfctl.models.reward_model import load_checkpoint, read_score_rows, score_texts

    if (file is None) == (text is None):
        raise UserError("give exactly one of --text TEXT or FILE")
    if file is not None and not file.exists():
        raise UserError(f"file not found: {file}")
    items = read_score_rows(file) if file is not None else None
    loaded = load_checkpoint(checkpoint, max_length=max_length)
    if text is not None:
        typer.echo(f"{score_texts(loaded, [''], [text])[0]:.6f}")
        return
    prompts, responses, slots = [], [], []
    for index, item in enumerate(items):
        for key in ("response", "chosen", "rejected"):
            if key in item:
                prompts.append(item["prompt"])
                responses.append(item[key])
                slots.append((index, key))
    rewards = score_texts(loaded, prompts, responses, batch_size=batch_size)
    results = [{"line": item["line"]} for item in items]
    for (index, key), reward in zip(slots, rewards):
        results[index]["reward" if key == "response" else f"{key}_reward"] = reward
    for result in results:
        typer.echo(json.dumps(result))
