"""The stages rlhfctl knows: the recipe contract every stage satisfies, and one registry entry per stage.

Everything that dispatches on a stage reads it from here: the CLI (one ``rlhfctl <stage>`` group with a ``train``
command per entry, ``--dry-run`` included), the example pipeline, and the stages' own tools (``rm eval``,
``rm score``, ``ppo sample`` hang on the groups made from these entries). Adding a stage = a recipe module
``rlhfctl/recipes/<stage>.py`` ending in ``RECIPE = Recipe(...)`` + one :class:`StageEntry` in :data:`STAGES` + its
config schema (``rlhfctl/config/schema/<stage>.py``); nothing else needs editing.

Cheap to import (the CLI imports it at start-up): no torch, ray, transformers or pydantic here; a recipe module is
imported only when :func:`load_recipe` is called, and the training core only when a recipe runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, TypeVar

from rlhfctl.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack

    from rlhfctl.progress.events import ProgressSink
    from rlhfctl.training.job import RunSummary, TrainingJob, TrainingPlan
    from rlhfctl.training.memory_plan import Probe

ConfigT = TypeVar("ConfigT")


class RunOptions(TypedDict, total=False):
    """The keyword options of :meth:`Recipe.run`, passed on to :func:`rlhfctl.training.launch.run_training`."""

    resume: bool | Literal["auto"]  # continue from the latest checkpoint ("auto": only if there is one)
    force: bool  # delete an earlier run in output_dir and replace checkpoint_dir
    progress: ProgressSink | None  # where progress events go (None: nowhere)
    config_path: str | None  # the config path and overrides as typed, for the printed --resume command
    fault_injection: dict[str, Any] | None  # tests only: a worker dies or raises after a given checkpoint
    memory_check: bool  # refuse a run whose memory plan clearly exceeds a worker's memory (--no-memory-check: off)
    memory_probe: Probe | None  # what memory a worker has (default: this machine; tests inject their own)


class PlanOptions(TypedDict, total=False):
    """The keyword options of :meth:`Recipe.plan`."""

    memory_probe: Probe | None  # what memory a worker has, for the plan's verdict (None: not checked)


@dataclass(frozen=True)
class Recipe(Generic[ConfigT]):
    """A stage's recipe, as its module registers it (``RECIPE = Recipe(...)`` at the end of the module).

    ``build_job(config)`` is the recipe's driver side: it validates the data (errors name file, line and key before
    any worker starts), sizes the run and returns a :class:`~rlhfctl.training.job.TrainingJob` carrying the
    recipe's frozen payload dataclass, its module-level worker loop and its memory hook (``TrainingJob.memory``: the
    models a worker holds and the phases of a step, for the memory plan). Planning, running and the headline are
    the same for every stage, so they are written once, here.
    """

    stage: str
    build_job: Callable[[ConfigT], TrainingJob[ConfigT, Any]]
    headline_template: str  # e.g. "held-out accuracy {validation_accuracy}": final metrics by name, 3 decimals

    def __post_init__(self) -> None:
        # Every caller of build_job (plan, run, tests, tools) gets a job sized for the workers the run will use:
        # training.num_training_workers = "auto" is resolved first (rlhfctl.config.layout; a number passes as is).
        object.__setattr__(self, "build_job", _resolving_layout(self.build_job))

    def plan(self, config: ConfigT, **options: Unpack[PlanOptions]) -> TrainingPlan:
        """What a run would do (``--dry-run``): rows, steps, workers (``"auto"`` resolved), where outputs go, the
        memory plan. Starts nothing."""
        from rlhfctl.training.launch import prepare_job

        return prepare_job(self.build_job, config).plan(**options)

    def run(self, config: ConfigT, **options: Unpack[RunOptions]) -> RunSummary:
        """Train, validate and export (the job's warnings logged first); returns the core's run summary."""
        from rlhfctl.training.launch import run_stage

        return run_stage(self.build_job, config, **options)

    def headline(self, final_metrics: Mapping[str, float]) -> str:
        """The one line that shows the stage learned (``?`` for a figure the run did not report)."""
        return self.headline_template.format_map(_Figures(final_metrics))


def _resolving_layout(build_job: Callable[[Any], TrainingJob]) -> Callable[[Any], TrainingJob]:
    if getattr(build_job, "resolves_layout", False):
        return build_job

    def build_resolved(config: Any) -> TrainingJob:
        from rlhfctl.training.launch import prepare_job

        return prepare_job(build_job, config)

    build_resolved.resolves_layout = True  # type: ignore[attr-defined]
    return build_resolved


class _Figures(dict):
    """``str.format_map`` source: each ``{key}`` becomes ``final_metrics[key]`` to 3 decimals, or ``?``."""

    def __init__(self, final_metrics: Mapping[str, float]) -> None:
        super().__init__()
        self._metrics = final_metrics

    def __missing__(self, key: str) -> str:
        return f"{self._metrics[key]:.3f}" if key in self._metrics else "?"


@dataclass(frozen=True)
class StageEntry:
    """One stage: its name (the CLI group, the config's ``stage`` value, the recipe module ``rlhfctl.recipes.<name>``)
    and the words the CLI shows for it."""

    name: str
    help: str  # `rlhfctl <name> --help`: what the stage is for
    train_help: str  # `rlhfctl <name> train --help`: one line
    train_examples: tuple[str, ...]  # real invocations for the train command's epilog

    def recipe(self) -> Recipe[Any]:
        """The recipe (``RECIPE`` of ``rlhfctl.recipes.<name>``), its module imported now."""
        recipe = importlib.import_module(f"rlhfctl.recipes.{self.name}").RECIPE
        if not isinstance(recipe, Recipe) or recipe.stage != self.name:
            raise TypeError(f"rlhfctl.recipes.{self.name}.RECIPE must be a Recipe for stage {self.name!r}")
        return recipe


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
    StageEntry(
        "dpo",
        help="DPO: train the policy directly on preference pairs, no reward model.",
        train_help="Train the policy with DPO (or IPO, hinge) on preference pairs against a frozen reference, on Ray "
                   "Train workers.",
        train_examples=(
            "rlhfctl dpo train examples/configs/dpo.toml",
            "rlhfctl dpo train dpo.toml training.beta=0.2 training.loss_type=ipo --dry-run",
            "rlhfctl dpo train dpo.toml --resume auto",
        ),
    ),
    StageEntry(
        "grpo",
        help="GRPO: train the policy on group-relative rewards (reward model and/or verifiable rewards), no value "
             "model.",
        train_help="Train the policy with GRPO (or RLOO) against a reward model and/or reward functions, on Ray "
                   "Train workers.",
        train_examples=(
            "rlhfctl grpo train examples/configs/grpo.toml",
            "rlhfctl grpo train grpo.toml training.num_generations=8 training.rloo=true --dry-run",
            "rlhfctl grpo train grpo.toml --resume",
        ),
    ),
)}


def stage_names() -> tuple[str, ...]:
    """The registered stages, in pipeline order."""
    return tuple(STAGES)


def load_recipe(stage: str) -> Recipe[Any]:
    """The recipe of ``stage`` (a UserError naming the known stages for any other name)."""
    entry = STAGES.get(stage)
    if entry is None:
        raise UserError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return entry.recipe()
