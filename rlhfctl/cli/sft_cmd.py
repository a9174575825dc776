"""`rlhfctl sft ...`: supervised fine-tuning of a causal language model on Ray Train."""

from __future__ import annotations

import typer

from rlhfctl.cli._train import add_train_command

app = typer.Typer(no_args_is_help=True, help="Supervised fine-tuning: teach a base model to answer like the data.")


add_train_command(
    app,
    "sft",
    summary="Fine-tune on instruction/response or chat data (loss on response tokens) and export in HF format.",
    examples=[
        "rlhfctl sft train examples/configs/sft.toml",
        "rlhfctl sft train sft.toml training.epochs=3 training.learning_rate=5e-5 --dry-run",
        "rlhfctl sft train sft.toml --resume auto",
    ],
)
