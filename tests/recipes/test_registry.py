"""The stage registry: every recipe satisfies the contract, and a new stage needs a recipe, an entry and a schema only.

The last test registers a made-up stage ``fake`` (a recipe module with a two-weight regression loop, a
:class:`StageEntry`, a tiny config schema) and drives it through everything that dispatches on a stage: the CLI
group and ``fake train`` (``--dry-run`` and a real in-process run), ``validate-config``, and the example
pipeline's stage dispatch and headline. Nothing else is edited.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import pytest
from typer.testing import CliRunner

from rlhfctl.errors import UserError
from rlhfctl.recipes import registry
from rlhfctl.recipes.registry import STAGES, Recipe, StageEntry, load_recipe
from rlhfctl.training.worker import LoopConfig, WorkerContext

runner = CliRunner()


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_registered_recipe_satisfies_the_contract(stage):
    recipe = load_recipe(stage)
    assert isinstance(recipe, Recipe) and recipe.stage == stage
    module = sys.modules[f"rlhfctl.recipes.{stage}"]
    assert module.STAGE == stage and callable(module.train_loop)
    assert (module.plan, module.run) == (recipe.plan, recipe.run)
    assert "?" in recipe.headline({})  # a figure the run did not report shows as "?"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_registered_stage_describes_its_memory(stage, tiny_model_dir, tmp_path):
    """Each recipe's build_job fills TrainingJob.memory (its memory hook): the models a worker holds and the
    phases of a step, every step naming one of those models."""
    from pathlib import Path

    from rlhfctl.config.loader import load_config

    model = str(tiny_model_dir)
    paths = [f"general.output_dir={tmp_path / 'run'}", f"general.checkpoint_dir={tmp_path / 'export'}"]
    ppo_like = ["general.model_name", "general.rm_name", "general.model_pretrain", "general.rm_pretrain"]
    sources = {"ppo": ppo_like, "grpo": ppo_like}
    overrides = [f"{key}={model}" for key in sources.get(stage, ["general.base_model"])] + paths
    example = Path(__file__).resolve().parents[2] / "examples" / "configs" / f"{stage}.toml"
    job = load_recipe(stage).build_job(load_config(example, overrides=overrides))
    assert job.memory is not None, f"{stage}: build_job must set TrainingJob.memory (the recipe's memory hook)"
    workload = job.memory(job.config)
    roles = [use.role for use in workload.models]
    assert roles and len(roles) == len(set(roles))
    assert workload.phases and all(step.role in roles for phase in workload.phases for step in phase.steps)
    assert job.plan(memory_probe=None).memory.estimate is not None


def test_a_headline_shows_each_named_figure_to_three_decimals():
    recipe = Recipe(stage="x", build_job=lambda config: None, headline_template="accuracy {acc}, margin {margin}")
    assert recipe.headline({"acc": 0.96875, "margin": 3.98412}) == "accuracy 0.969, margin 3.984"
    assert recipe.headline({"acc": 1.0}) == "accuracy 1.000, margin ?"


def test_a_module_without_a_recipe_for_its_stage_is_refused(monkeypatch):
    module = ModuleType("rlhfctl.recipes.broken")
    module.RECIPE = Recipe(stage="other", build_job=lambda config: None, headline_template="")
    monkeypatch.setitem(sys.modules, "rlhfctl.recipes.broken", module)
    monkeypatch.setitem(STAGES, "broken", StageEntry("broken", help="h", train_help="t", train_examples=()))
    with pytest.raises(TypeError, match="must be a Recipe for stage 'broken'"):
        load_recipe("broken")


def test_the_registry_and_the_config_schema_name_the_same_stages():
    from rlhfctl.config.schema import CONFIG_CLASSES

    assert tuple(CONFIG_CLASSES) == registry.stage_names()


def test_an_unknown_stage_is_a_user_error():
    with pytest.raises(UserError, match="unknown stage 'kto'; expected one of sft, rm, ppo, dpo, grpo"):
        load_recipe("kto")


# ----------------------------------------------------------------------------------------------- a new stage


@dataclass(frozen=True)
class FakePayload:
    """What the fake stage's driver hands its workers."""

    inputs: list[list[float]]  # (rows, 2)


def fake_train_loop(loop_config: LoopConfig) -> dict[str, float]:
    """Fits ``y = 2 x0 - x1`` by SGD with the core's pieces: the whole worker side of the fake stage."""
    import torch

    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.optim import build_optimizer, build_scheduler
    from rlhfctl.training.worker import setup_worker

    ctx: WorkerContext[object, FakePayload] = setup_worker(loop_config)
    inputs = torch.tensor(ctx.payload.inputs)  # (rows, 2)
    targets = inputs @ torch.tensor([2.0, -1.0])  # (rows,)
    model = ctx.prepare_model(torch.nn.Linear(2, 1, bias=False))
    optimizer = build_optimizer(model, ctx.training)
    scheduler = build_scheduler(optimizer, ctx.training, ctx.total_steps)
    state = TrainState(models={"m": model}, optimizers={"m": optimizer}, schedulers={"m": scheduler})
    ctx.restore(state)
    loss = torch.tensor(0.0)
    while state.step < ctx.total_steps:
        loss = (model(inputs).squeeze(-1) - targets).pow(2).mean()
        ctx.backward(loss)
        ctx.step(optimizer, scheduler, model)
        state.step += 1
        ctx.log(state.step, {"loss": loss.item()}, epoch=0)
    state.epoch = 1
    ctx.save(state)
    return {"loss": loss.item(), "weight": model.weight[0, 0].item()}


def _fake_recipe() -> ModuleType:
    """The recipe module of the fake stage: a driver-side build_job, the worker loop above, and its RECIPE."""
    from rlhfctl.training.job import TrainingJob

    def build_job(config) -> TrainingJob:
        inputs = [[float(i % 5), float(i % 3)] for i in range(16)]
        return TrainingJob(stage="fake", config=config, train_loop=fake_train_loop, payload=FakePayload(inputs),
                           total_steps=100 * config.training.epochs, samples_per_step=len(inputs),
                           train_rows=len(inputs), plan_notes={"model": "a two-weight linear regression"})

    module = ModuleType("rlhfctl.recipes.fake")
    module.RECIPE = Recipe(stage="fake", build_job=build_job, headline_template="weight {weight} (2 expected)")
    return module


def _fake_schema():
    """The fake stage's config schema (what ``config/schema/<stage>.py`` holds): the RM sections under its own name."""
    from typing import ClassVar

    from pydantic import Field

    from rlhfctl.config import schema

    class FakeConfig(schema.StageConfigBase):
        summary: ClassVar[str] = "a made-up stage"
        stage: Literal["fake"] = "fake"
        general: schema.ModelGeneral
        dataset: schema.RMDataset
        training: schema.RMTraining = Field(default_factory=schema.RMTraining)

    return FakeConfig


def _clear_schema_caches() -> None:
    """What the config package derived from the schema once (cached per process) is derived again."""
    for name, module in list(sys.modules.items()):
        if name.startswith("rlhfctl.config"):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


@pytest.fixture
def fake_stage(monkeypatch):
    """Register the fake stage: its recipe module, its registry entry, its config schema (nothing else)."""
    from rlhfctl.config import schema

    monkeypatch.setitem(sys.modules, "rlhfctl.recipes.fake", _fake_recipe())
    monkeypatch.setitem(STAGES, "fake", StageEntry("fake", help="A made-up stage: proves the registry is enough.",
                                                   train_help="Fit a two-weight regression.",
                                                   train_examples=("rlhfctl fake train fake.toml",)))
    monkeypatch.setitem(schema.CONFIG_CLASSES, "fake", _fake_schema())
    stages = (*schema.STAGES, "fake")
    for name, module in list(sys.modules.items()):  # the config package's copies of the stage list
        if name.startswith("rlhfctl.config") and isinstance(getattr(module, "STAGES", None), tuple):
            monkeypatch.setattr(module, "STAGES", stages)
    _clear_schema_caches()
    yield
    monkeypatch.undo()
    _clear_schema_caches()


def _write_fake_config(tmp_path) -> str:
    import tomli_w

    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    config = {
        "stage": "fake",
        "general": {"base_model": "unused", "output_dir": str(tmp_path / "out"),
                    "checkpoint_dir": str(tmp_path / "model")},
        "dataset": {"train_file": str(data)},
        "training": {"num_training_workers": 1, "learning_rate": 0.05, "optimizer": "SGD",
                     "lr_scheduler": "constant"},
    }
    path = tmp_path / "fake.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return str(path)


def test_a_new_stage_needs_only_a_recipe_a_registry_entry_and_a_schema(fake_stage, tmp_path):
    from rlhfctl.cli.app import build_app
    from rlhfctl.example.pipeline import _train_stage, stage_headline
    from rlhfctl.progress.events import RecordingSink

    app = build_app()
    config = _write_fake_config(tmp_path)
    assert "fake" in runner.invoke(app, ["--help"]).output
    assert "rlhfctl fake train fake.toml" in runner.invoke(app, ["fake", "train", "--help"]).output

    validated = runner.invoke(app, ["validate-config", config, "--json"])
    assert validated.exit_code == 0, validated.output
    assert json.loads(validated.output)["config"]["stage"] == "fake"

    planned = runner.invoke(app, ["fake", "train", config, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert "fake training plan" in planned.output and "a two-weight linear regression" in planned.output
    assert not (tmp_path / "out").exists()

    trained = runner.invoke(app, ["fake", "train", config])
    assert trained.exit_code == 0, trained.output
    assert "fake training finished: 100 steps" in trained.output
    lines = (tmp_path / "out" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 100

    from rlhfctl.config import load_config

    summary = _train_stage("fake", load_config(config), RecordingSink())  # the example pipeline's dispatch
    assert summary.final_metrics["weight"] == pytest.approx(2.0, abs=0.1)
    assert stage_headline("fake", summary.final_metrics) == f"weight {summary.final_metrics['weight']:.3f} (2 expected)"
