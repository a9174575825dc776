"""Parameters shared by every command that takes a config file: the path, ``key=value`` overrides, ``--stage``.

Use them as type annotations so every command spells and documents them the same way::

    def train(config: ConfigArg, overrides: OverridesArg = None, stage: StageOption = None) -> None:
        cfg = load_with_overrides(config, overrides, stage)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer

from rlhfctl.recipes.registry import stage_names

if TYPE_CHECKING:  # the schema imports pydantic: only commands that load a config pay for it
    from rlhfctl.config.schema import StageConfig

ConfigArg = Annotated[
    Path,
    typer.Argument(help="TOML config file (rlhfctl init writes one).", show_default=False),
]
OverridesArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Overrides as dotted key=value, typed by the schema, e.g. training.learning_rate=2e-5 general.seed=3.",
        show_default=False,
    ),
]
StageOption = Annotated[
    Optional[Literal[stage_names()]],  # every registered stage
    typer.Option("--stage", help="Stage the config is for, when the file has no stage key.", show_default=False),
]


def load_with_overrides(
    config: Path, overrides: list[str] | None = None, stage: str | None = None, *, check_files: bool = True
) -> StageConfig:
    """:func:`rlhfctl.config.load_config` with the CLI's argument shapes (raises ConfigError on any problem)."""
    from rlhfctl.config.loader import load_config

    return load_config(config, stage=stage, overrides=list(overrides or ()), check_files=check_files)
