"""`rlhfctl ppo sample`: responses of a policy export, scored by a reward model (`ppo train` comes with every stage's
group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlhfctl.errors import UserError

SAMPLE_EPILOG = ("Examples:\n\n"
                 "  rlhfctl ppo sample example-run/models/ppo examples/data/heldout_prompts.jsonl "
                 "--rm example-run/models/rm\n\n"
                 "  rlhfctl ppo sample models/sft prompts.jsonl --rm models/rm -n 4 > before.jsonl\n\n"
                 "  rlhfctl ppo sample models/ppo prompts.jsonl --max-new-tokens 64 --seed 1")


def register(group: typer.Typer) -> None:
    """Add ``sample`` to the ``ppo`` group."""
    group.command("sample", epilog=SAMPLE_EPILOG)(sample)


def sample(
    checkpoint: Annotated[Path, typer.Argument(
        help="A policy export (ppo or sft train's checkpoint_dir, or any causal LM folder).", show_default=False)],
    prompts: Annotated[Path, typer.Argument(
        help="Prompts as JSONL ({\"prompt\": ...} rows, like PPO training data).", show_default=False)],
    rm: Annotated[Optional[Path], typer.Option(
        "--rm", help="Score every response with this reward model (an rm train export).", show_default=False)] = None,
    samples_per_prompt: Annotated[int, typer.Option("-n", "--num-samples", min=1,
                                                    help="Responses per prompt.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Response length limit.")] = 32,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0).")] = 0.7,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (same seed, same responses).")] = 0,
) -> None:
    """Generate (and score) responses, one JSON object per line; the mean score goes to stderr."""
    from rlhfctl.data.loading import load_rows
    from rlhfctl.models.sampling import sample_responses

    if temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    for path, what in ((checkpoint, "policy checkpoint"), (rm, "reward model checkpoint")):
        if path is not None and not path.is_dir():
            raise UserError(f"{what} not found: {path} (expected a folder written by rlhfctl or save_pretrained)")
    rows = load_rows(prompts, "ppo")
    if not rows:
        raise UserError(f"{prompts} has no prompts")
    results = sample_responses(
        str(checkpoint), [row["prompt"] for row in rows], reward_dir=None if rm is None else str(rm),
        samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
    )
    for result in results:
        record = {"prompt": result.prompt, "response": result.response, "stopped": result.stopped}
        if result.score is not None:
            record["score"] = result.score
        typer.echo(json.dumps(record, ensure_ascii=False))
    if rm is not None:
        mean = sum(result.score for result in results) / len(results)
        typer.echo(f"mean score {mean:.4f} over {len(results)} responses", err=True)
