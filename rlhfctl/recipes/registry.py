"""The stages rlhfctl knows: one registry entry per recipe, and the contract every recipe module satisfies.

Everything that dispatches on a stage reads it from here: the CLI (one ``rlhfctl <stage>`` group with a ``train``
command per entry, ``--dry-run`` included), the example pipeline, and the stages' own tools (``rm eval``,
``rm score``, ``ppo sample`` hang on the groups made from these entries). Adding a stage = a recipe module
``rlhfctl/recipes/<stage>.py`` satisfying :class:`Recipe` + one :class:`StageEntry` in :data:`STAGES` + its config
schema (``rlhfctl/config/schema.py``); nothing else needs editing.

Cheap to import (the CLI imports it at start-up): no torch, ray, transformers or pydantic here; a recipe module is
imported only when :func:`load_recipe` is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, TypeVar, cast, runtime_checkable

from rlhfctl.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack

    from rlhfctl.progress.events import ProgressSink
    from rlhfctl.training.launch import RunSummary, TrainingPlan

ConfigT = TypeVar("ConfigT", contravariant=True)


class RunOptions(TypedDict, total=False):
    """The keyword options of :meth:`Recipe.run`, passed on to :func:`rlhfctl.training.launch.run_training`."""

    resume: bool | Literal["auto"]  # continue from the latest checkpoint ("auto": only if there is one)
    force: bool  # delete an earlier run in output_dir and replace checkpoint_dir
    progress: ProgressSink | None  # where progress events go (None: nowhere)
    config_path: str | None  # the config path and overrides as typed, for the printed --resume command
    fault_injection: dict[str, Any] | None  # tests only: a worker dies or raises after a given checkpoint


@runtime_checkable
class Recipe(Protocol[ConfigT]):
    """What a recipe module (``rlhfctl/recipes/<stage>.py``) provides, module-level::

        STAGE = "rm"
        def plan(config: RMConfig) -> TrainingPlan              # what --dry-run prints; starts nothing
        def run(config: RMConfig, **options: Unpack[RunOptions]) -> RunSummary
        def headline(final_metrics: Mapping[str, float]) -> str  # the one line that shows the stage learned

    Behind ``plan``/``run`` each recipe builds a typed :class:`~rlhfctl.training.launch.TrainingJob` (its frozen
    payload dataclass + its module-level worker loop) and hands it to the shared core.
    """

    STAGE: str

    def plan(self, config: ConfigT) -> TrainingPlan: ...

    def run(self, config: ConfigT, **options: Unpack[RunOptions]) -> RunSummary: ...

    def headline(self, final_metrics: Mapping[str, float]) -> str: ...


@dataclass(frozen=True)
class StageEntry:
    """One stage: its name (the CLI group, the config's ``stage`` value, the recipe module ``rlhfctl.recipes.<name>``)
    and the words the CLI shows for it."""

    name: str
    help: str  # `rlhfctl <name> --help`: what the stage is for
    train_help: str  # `rlhfctl <name> train --help`: one line
    train_examples: tuple[str, ...]  # real invocations for the train command's epilog

    def recipe(self) -> Recipe[Any]:
        """The recipe module, imported now (it pulls in the training core; torch loads only when a run starts)."""
        return cast("Recipe[Any]", importlib.import_module(f"rlhfctl.recipes.{self.name}"))


STAGES: dict[str, StageEntry] = {entry.name: entry for entry in (
    StageEntry(
        "sft",
        help="Supervised fine-tuning: teach a base model to answer like the data.",
        train_help="Fine-tune on instruction/response or chat data (loss on response tokens) and export in HF format.",
        train_examples=(
            "rlhfctl sft train examples/configs/sft.toml",
            "rlhfctl sft train sft.toml training.epochs=3 training.learning_rate=5e-5 --dry-run",
            "rlhfctl sft train sft.toml --resume auto",
        ),
    ),
    StageEntry(
        "rm",
        help="Reward model: train on preference pairs, evaluate, score texts.",
        train_help="Train a reward model (pairwise loss, chosen vs rejected) on Ray Train workers.",
        train_examples=(
            "rlhfctl rm train examples/configs/rm.toml",
            "rlhfctl rm train rm.toml training.learning_rate=2e-5 --dry-run",
            "rlhfctl rm train rm.toml --resume auto",
        ),
    ),
    StageEntry(
        "ppo",
        help="PPO: train a policy against a reward model; sample and compare.",
        train_help="Train the policy with PPO (KL-penalised reward, clipped updates, a value model) on Ray Train "
                   "workers.",
        train_examples=(
            "rlhfctl ppo train examples/configs/ppo.toml",
            "rlhfctl ppo train ppo.toml training.kl_coeff=0.1 generation.max_new_tokens=48 --dry-run",
            "rlhfctl ppo train ppo.toml --resume",
        ),
    ),
)}


def figure(final_metrics: Mapping[str, float], key: str) -> str:
    """One figure of a headline: ``final_metrics[key]`` to 3 decimals, ``?`` when the run did not report it."""
    return f"{final_metrics[key]:.3f}" if key in final_metrics else "?"


def stage_names() -> tuple[str, ...]:
    """The registered stages, in pipeline order."""
    return tuple(STAGES)


def load_recipe(stage: str) -> Recipe[Any]:
    """The recipe of ``stage`` (a UserError naming the known stages for any other name)."""
    entry = STAGES.get(stage)
    if entry is None:
        raise UserError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return entry.recipe()
