"""The answers ``rlhfctl init`` collects, and turning them into a commented config file.

This module holds no prompting (that is the CLI's job): an :class:`InitAnswers` is filled from flags, a wizard or
both, then :func:`render_config` writes the stage's template with those values and validates the result.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from rlhfctl.config.loader import validate_config_dict
from rlhfctl.config.templates import COMMENT_OUT, render_template, template_defaults

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PPO_ONLY = ("rm_model", "model_pretrain", "rm_pretrain", "kl_coeff", "max_new_tokens")
PATH_ANSWERS = ("train_file", "validation_file", "output_dir", "checkpoint_dir", "model_pretrain", "rm_pretrain")
MODEL_ANSWERS = ("model", "rm_model")


@dataclass
class InitAnswers:
    """What a new config should contain; ``None`` keeps the template's value."""

    stage: str
    model: str | None = None  # general.base_model (sft, rm) or general.model_name (ppo)
    rm_model: str | None = None  # general.rm_name (ppo)
    model_pretrain: str | None = None  # general.model_pretrain (ppo, optional)
    rm_pretrain: str | None = None  # general.rm_pretrain (ppo, optional)
    train_file: str | None = None
    validation_file: str | None = None  # set: replaces dataset.validation_split_percentage
    output_dir: str | None = None
    checkpoint_dir: str | None = None
    workers: int | None = None  # training.num_training_workers
    cpus_per_worker: float | None = None  # training.resources_per_worker.CPU
    use_gpu: bool | None = None  # training.resources_per_worker.GPU = 1
    learning_rate: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    kl_coeff: float | None = None  # ppo
    max_new_tokens: int | None = None  # ppo: generation.max_new_tokens

    def missing(self) -> list[str]:
        """Answers still unset that a complete set needs for this stage (optional ones excluded)."""
        optional = {"validation_file", "model_pretrain", "rm_pretrain"}
        if self.stage != "ppo":
            optional |= set(PPO_ONLY)
        return [f.name for f in fields(self) if f.name not in optional and getattr(self, f.name) is None]

    def template_values(self) -> dict[str, Any]:
        """``{"section.key": value}`` for :func:`render_template` (unset answers left out)."""
        defaults = template_defaults(self.stage)
        model_key = "general.model_name" if self.stage == "ppo" else "general.base_model"
        simple = {
            "model": model_key,
            "rm_model": "general.rm_name",
            "model_pretrain": "general.model_pretrain",
            "rm_pretrain": "general.rm_pretrain",
            "train_file": "dataset.train_file",
            "output_dir": "general.output_dir",
            "checkpoint_dir": "general.checkpoint_dir",
            "workers": "training.num_training_workers",
            "learning_rate": "training.learning_rate",
            "epochs": "training.epochs",
            "batch_size": "training.batch_size",
            "kl_coeff": "training.kl_coeff",
            "max_new_tokens": "generation.max_new_tokens",
        }
        values: dict[str, Any] = {key: getattr(self, name) for name, key in simple.items()
                                  if getattr(self, name) is not None}
        if self.validation_file:
            values["dataset.validation_file"] = self.validation_file
            values["dataset.validation_split_percentage"] = COMMENT_OUT
        if self.cpus_per_worker is not None or self.use_gpu is not None:
            resources = dict(defaults.get("training", {}).get("resources_per_worker", {"CPU": 1}))
            if self.cpus_per_worker is not None:
                resources["CPU"] = _whole(self.cpus_per_worker)
            if self.use_gpu:
                resources["GPU"] = 1
            elif self.use_gpu is False:
                resources.pop("GPU", None)
            values["training.resources_per_worker"] = resources
        return values

    def relative_to(self, config_dir: Path, cwd: Path) -> InitAnswers:
        """Paths typed relative to ``cwd`` rewritten relative to the config's folder (where the loader resolves
        them), so the file keeps working wherever it is run from."""
        changes: dict[str, Any] = {}
        for name in PATH_ANSWERS:
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_absolute():
                changes[name] = _relative(cwd / Path(value).expanduser(), config_dir)
        for name in MODEL_ANSWERS:
            value = getattr(self, name)
            if value and _is_local_model(value, cwd):
                local = Path(value).expanduser()
                if not local.is_absolute():
                    relative = _relative(cwd / local, config_dir)
                    changes[name] = relative if relative.startswith("..") else f"./{relative}"
        return replace(self, **changes)


def _whole(number: float) -> float | int:
    return int(number) if float(number).is_integer() else float(number)


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.absolute(), start.absolute())).as_posix()


def _is_local_model(value: str, cwd: Path) -> bool:
    """A model answer that names a local folder rather than a hub id."""
    return value.startswith(("./", "../", "/", "~")) or (cwd / value).exists()


def render_config(answers: InitAnswers, *, shown_as: str | None = None) -> str:
    """The stage's template with ``answers`` filled in; raises ConfigError when the result is not valid.

    Files it names are not required to exist yet (a new config usually precedes its data).
    """
    text = render_template(answers.stage, answers.template_values())
    validate_config_dict(tomllib.loads(text), stage=answers.stage, path=shown_as, source_text=text,
                         check_files=False)
    return text
