"""`rlhfctl example ...`: the tiny offline model kit and the whole workflow on the bundled example."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="The bundled end-to-end example: a tiny offline model kit and the whole SFT -> RM -> PPO / DPO / GRPO "
         "workflow.",
)


@app.command(
    "models",
    epilog=(
        "Examples:\n\n"
        "  rlhfctl example models example-run/models/tiny\n\n"
        "  rlhfctl example models models/small --preset small --seed 1 --force\n\n"
        "  rlhfctl example models models/tiny-qwen2 --architecture qwen2"
    ),
)
def models(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the tokenizer and model into.")],
    preset: Annotated[str, typer.Option(help="Model size: tiny (~0.15 M parameters; other architectures ~50 K) "
                                             "or small (~20 M; Llama-shaped ~60 M).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights (same seed, same bytes).")] = 0,
    architecture: Annotated[str, typer.Option(
        help="gpt2, or a family built as it ships (no pad token, its chat template): llama, qwen2, qwen3, mistral, "
             "gemma2, gemma3, phi3, gpt_neox, opt.")] = "gpt2",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists.")] = False,
) -> None:
    """Build a byte-level BPE tokenizer (trained on the example data) and a random model, offline."""
    from rich.console import Console

    from rlhfctl.errors import UserError
    from rlhfctl.example.architectures import ARCHITECTURES, build_architecture_kit
    from rlhfctl.example.kit import PRESETS, build_model_kit_folder, example_data_dir

    if preset not in PRESETS:
        raise UserError(f"unknown --preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if architecture != "gpt2" and architecture not in ARCHITECTURES:
        raise UserError(f"unknown --architecture {architecture!r}; expected gpt2 or one of {', '.join(ARCHITECTURES)}")
    console = Console(highlight=False)
    builder = None if architecture == "gpt2" else functools.partial(build_architecture_kit, architecture=architecture)
    with console.status(f"building the {preset} {architecture} model kit ..."):
        summary = build_model_kit_folder(out_dir, preset=preset, seed=seed, force=force, builder=builder,
                                         corpus_files=sorted(example_data_dir().glob("*.jsonl")))
    console.print(f"[green]wrote[/] {summary.out_dir}: {summary.parameters:,} parameters, "
                  f"vocabulary {summary.vocab_size:,} ({architecture}, preset {preset}, seed {seed})")


@app.command(
    "run",
    epilog=(
        "Examples:\n\n"
        "  rlhfctl example run\n\n"
        "  rlhfctl example run --workdir /tmp/rlhf-demo --force\n\n"
        "  rlhfctl example run --quiet"
    ),
)
def run(
    workdir: Annotated[Path, typer.Option(help="Work folder for models, data, runs and exports.")] = Path(
        "example-run"
    ),
    force: Annotated[bool, typer.Option("--force", help="Start over in a work folder a previous run used.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No live progress; only the stage summaries.")] = False,
) -> None:
    """Tiny model kit -> data convert -> SFT -> RM -> PPO, DPO, GRPO -> a table comparing them with SFT."""
    from rich.console import Console

    from rlhfctl.example.compare import render_comparison
    from rlhfctl.example.pipeline import run_example

    console = Console(highlight=False)
    result = run_example(workdir, force=force, quiet=quiet, console=console)
    console.rule("Result")
    render_comparison(result.comparison, console)
    console.print(f"\nFinished in {result.wall_time_s:.0f} s. Everything is in {result.paths.workdir}/ "
                  f"(models/, data/, runs/). Next: [bold]rlhfctl ppo sample {result.paths.model_dir('ppo')} "
                  f"{result.paths.data_file('heldout_prompts')} --rm {result.paths.model_dir('rm')}[/]")
