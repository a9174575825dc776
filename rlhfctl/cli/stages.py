"""``rlhfctl <stage> ...``: one command group per registered stage (:mod:`rlhfctl.recipes.registry`).

Every group gets ``train`` (:mod:`rlhfctl.cli._train`); a stage's own tools are added by its command module:
``rm eval``/``rm score`` (:mod:`rlhfctl.cli.rm_cmd`), ``ppo sample`` (:mod:`rlhfctl.cli.ppo_cmd`). A new stage
needs no edit here: its registry entry makes its group and ``train`` command.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from rlhfctl.cli import ppo_cmd, rm_cmd
from rlhfctl.cli._train import add_train_command
from rlhfctl.recipes.registry import STAGES, StageEntry

# A stage's commands besides `train`: stage name -> function adding them to the stage's group.
STAGE_TOOLS: dict[str, Callable[[typer.Typer], None]] = {"rm": rm_cmd.register, "ppo": ppo_cmd.register}


def stage_group(entry: StageEntry) -> typer.Typer:
    """The ``rlhfctl <entry.name>`` group: ``train``, then the stage's own tools."""
    group = typer.Typer(no_args_is_help=True, help=entry.help)
    add_train_command(group, entry)
    add_tools = STAGE_TOOLS.get(entry.name)
    if add_tools is not None:
        add_tools(group)
    return group


def register(app: typer.Typer) -> None:
    """Add every registered stage's group to the root app, in pipeline order."""
    for entry in STAGES.values():
        app.add_typer(stage_group(entry), name=entry.name)
