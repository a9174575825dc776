"""`rlhfctl sft ...`: supervised fine-tuning of a causal language model on Ray Train."""

from __future__ import annotations

import typer

from rlhfctl.cli._overrides import ConfigArg, OverridesArg
from rlhfctl.cli._train import DryRunOption, ForceOption, QuietOption, ResumeOption, run_train_command

app = typer.Typer(no_args_is_help=True, help="Supervised fine-tuning: teach a base model to answer like the data.")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rlhfctl sft train examples/configs/sft.toml\n\n"
        "  rlhfctl sft train sft.toml training.epochs=3 training.learning_rate=5e-5 --dry-run\n\n"
        "  rlhfctl sft train sft.toml --resume auto"
    )
)
def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    resume: ResumeOption = False,
    dry_run: DryRunOption = False,
    quiet: QuietOption = False,
    force: ForceOption = False,
) -> None:
    """Fine-tune on instruction/response or chat data (loss on response tokens) and export in HF format."""
    run_train_command("sft", config, overrides, resume=resume, dry_run=dry_run, quiet=quiet, force=force)
