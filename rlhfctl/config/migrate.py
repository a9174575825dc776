"""llm-on-ray configs -> rlhfctl TOML, reporting every key that changes meaning or has no equivalent.

What llm-on-ray actually did with each key (its ``rlhf/reward.py``, ``rlhf/ppo.py`` and finetune YAML) decides
the mapping, not only the key's name:

- ``Training.training_iteration`` (PPO) was the number of PPO iterations, each on ``experience_batch_size``
  prompts; rlhfctl counts passes over the prompt file (``training.epochs``). It is not converted (the prompt
  count is unknown here); the note says how many prompts the old run consumed so ``epochs`` can be chosen.
- PPO in llm-on-ray ignored ``optimizer``, ``model_pretrain``, ``rm_pretrain``, ``batch_size``, ``epochs``,
  ``lr_scheduler``, ``weight_decay`` and the validation keys; it generated up to 50 new tokens from prompts of up
  to 1024 tokens, with one optimisation pass over mini-batches of ``experience_batch_size``. Those hard-coded
  values are written out explicitly, and keys that had no effect are reported (rlhfctl honours them).
- The reward trainer passed only the learning rate to the optimizer: a non-zero ``weight_decay`` had no effect.
- ``None`` values are left out (TOML has no null; unset means the same).
- ``General.lora_config`` (a peft ``LoraConfig`` as keywords) becomes ``[lora]``: ``r``, ``lora_alpha`` ->
  ``alpha``, ``lora_dropout`` -> ``dropout``, ``target_modules``; ``task_type`` follows from the stage; peft
  options rlhfctl does not expose are reported. ``General.enable_gradient_checkpointing`` becomes
  ``training.gradient_checkpointing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w

from rlhfctl.config.keys import example_value, field_info, path_keys
from rlhfctl.config.legacy_parse import read_legacy_config
from rlhfctl.config.loader import validate_config_dict
from rlhfctl.config.schema import CONFIG_CLASSES, LR_SCHEDULERS, OPTIMIZERS, STAGES, MixedPrecision
from rlhfctl.errors import UserError

NoteKind = Literal["no effect", "no equivalent", "changed", "added", "left out"]

_OPTIMIZERS = {"adamw": "AdamW", "adamw_torch": "AdamW", "adamw_hf": "AdamW", "adamw_torch_fused": "AdamW",
               "adam": "Adam", "sgd": "SGD"}
_SECTIONS = {"general": "General", "dataset": "Dataset", "training": "Training"}
_MIXED_PRECISION: tuple[str, ...] = get_args(MixedPrecision)
_LORA_KEYS = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules"}
_NO_EQUIVALENT_WHY = {
    "gpt_base_model": "transformers detects the architecture itself",
    "save_strategy": "checkpoints are written every training.save_every_steps steps and at each epoch end",
    "max_train_steps": "training length is set by training.epochs",
    "device": "the device follows training.resources_per_worker (GPU > 0 trains on GPUs)",
    "accelerate_mode": "Ray Train's DDP is always used",
    "deepspeed_config_file": "DeepSpeed is not supported",
    "logging_steps": "every step's metrics go to output_dir/metrics.jsonl",
}


@dataclass(frozen=True)
class MigrationNote:
    """Something the user should know about one original key."""

    key: str  # the key as spelled in the original, e.g. "Training.training_iteration"
    kind: NoteKind
    message: str

    def render(self) -> str:
        return f"{self.key}: {self.kind} - {self.message}"


@dataclass
class MigrationResult:
    stage: str
    data: dict[str, Any]  # the new config, validated (files not checked)
    source: Path
    notes: list[MigrationNote] = field(default_factory=list)

    def to_toml(self) -> str:
        """The new config with the notes as comments at the top."""
        header = [f"# Migrated from {self.source.name} (llm-on-ray) by `rlhfctl config migrate`.",
                  "# Relative paths are resolved against this file's folder."]
        if self.notes:
            header.append("# Notes on the original keys:")
            header += [f"#   - {note.render()}" for note in self.notes]
        ordered = {"stage": self.stage}
        ordered.update({name: self.data[name] for name in CONFIG_CLASSES[self.stage].sections() if name in self.data})
        return "\n".join(header) + "\n\n" + tomli_w.dumps(ordered)


def migrate_config(source: Path | str, stage: str | None = None) -> MigrationResult:
    """Read an llm-on-ray config as data, map it onto a stage config, validate it (files not checked)."""
    source = Path(source)
    original = read_legacy_config(source)
    sections, notes = _split_sections(original)
    stage = stage or infer_stage(sections, source)
    converter = _Converter(stage, notes)
    converter.convert(sections)
    data = converter.data
    validate_config_dict(data, stage=stage, path=f"{source} (after migration)", check_files=False)
    return MigrationResult(stage, data, source, converter.notes)


def infer_stage(sections: dict[str, dict[str, Any]], source: Path) -> str:
    """PPO when PPO-only keys are present; else from the file name (reward/rm, ppo, finetune/sft); else SFT when
    fine-tuning-only keys are present; else a UserError asking for --stage."""
    general, dataset, training = (sections.get(name, {}) for name in ("General", "Dataset", "Training"))
    if {"model_name", "rm_name"} & general.keys() or {"kl_coeff", "experience_batch_size",
                                                      "training_iteration"} & training.keys():
        return "ppo"
    words = set(source.stem.lower().replace("-", "_").split("_"))
    if words & {"reward", "rm"}:
        return "rm"
    if "ppo" in words:
        return "ppo"
    if words & {"finetune", "sft"} or {"lora_config", "gpt_base_model"} & general.keys() or {
        "group", "block_size"} & dataset.keys():
        return "sft"
    raise UserError(f"{source}: cannot tell which stage this config is for",
                    hint=f"Pass --stage with one of {', '.join(STAGES)}.")


def _split_sections(original: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[MigrationNote]]:
    sections: dict[str, dict[str, Any]] = {}
    notes = []
    for key, value in original.items():
        name = _SECTIONS.get(str(key).lower())
        if name is None:
            notes.append(MigrationNote(str(key), "no equivalent", "not a General/Dataset/Training section; dropped"))
        elif not isinstance(value, dict):
            raise UserError(f"section {key!r} must be a mapping of keys, found {type(value).__name__}")
        else:
            sections.setdefault(name, {}).update(value)
    return sections, notes


class _Converter:
    """Fills ``data`` (our layout) and ``notes`` from the original sections for one stage."""

    def __init__(self, stage: str, notes: list[MigrationNote]) -> None:
        self.stage = stage
        self.notes = notes
        self.data: dict[str, dict[str, Any]] = {"general": {}, "dataset": {}, "training": {}}
        self.added: set[str] = set()

    def note(self, key: str, kind: NoteKind, message: str) -> None:
        self.notes.append(MigrationNote(key, kind, message))

    def set(self, dotted: str, value: Any) -> None:
        section, key = dotted.split(".")
        self.data.setdefault(section, {})[key] = value

    def convert(self, sections: dict[str, dict[str, Any]]) -> None:
        left_out = []
        for section_name in ("General", "Dataset", "Training"):
            for key, value in sections.get(section_name, {}).items():
                if value is None:
                    left_out.append(f"{section_name}.{key}")
                    continue
                getattr(self, f"_{section_name.lower()}")(f"{section_name}.{key}", str(key), value)
        if left_out:
            self.note(", ".join(left_out), "left out", "None in the original; TOML has no null and unset means "
                                                        "the same")
        dataset = self.data["dataset"]
        if "validation_file" in dataset and "validation_split_percentage" in dataset:
            del dataset["validation_split_percentage"]
            self.note("Dataset.validation_split_percentage", "no effect", "validation_file is set, so no split was "
                                                                          "made; left out")
        self._fill_required_paths()
        if self.stage == "ppo":
            self._keep_ppo_hardcoded_values(sections.get("Training", {}))
        self._note_relative_paths()

    # --------------------------------------------------------------------------------------- per section

    def _general(self, original: str, key: str, value: Any) -> None:
        ppo = self.stage == "ppo"
        if key in ("output_dir", "checkpoint_dir", "seed"):
            self.set(f"general.{key}", value)
        elif key in ("base_model", "model_name"):
            target = "model_name" if ppo else "base_model"
            if key == target or target not in self.data["general"]:  # the stage's own spelling wins
                self.set(f"general.{target}", value)
                if key != target:
                    self.note(original, "changed", f"written as general.{target}")
            else:
                self.note(original, "no equivalent", f"dropped (general.{target} is set too)")
        elif key == "rm_name" and ppo:
            self.set("general.rm_name", value)
        elif key in ("model_pretrain", "rm_pretrain") and ppo:
            self.set(f"general.{key}", value)
            self.note(original, "no effect", "llm-on-ray's PPO never loaded it (it used model_name/rm_name); "
                                             "rlhfctl loads this export instead")
        elif key == "lora_config" and isinstance(value, dict):
            self._lora(original, value)
        elif key == "enable_gradient_checkpointing" and isinstance(value, bool):
            self.set("training.gradient_checkpointing", value)
            self.note(original, "changed", "written as training.gradient_checkpointing")
        elif key == "config" and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sub_key == "trust_remote_code" and isinstance(sub_value, bool):
                    self.set("general.trust_remote_code", sub_value)
                elif sub_value is not None:
                    self.note(f"{original}.{sub_key}", "no equivalent", "dropped (Hugging Face tokens come from "
                                                                        "the HF_TOKEN environment variable)"
                              if sub_key == "use_auth_token" else "dropped")
        else:
            self._no_equivalent(original, key)

    def _lora(self, original: str, peft_keywords: dict[str, Any]) -> None:
        """peft ``LoraConfig`` keywords -> ``[lora]`` (its presence turns LoRA on)."""
        self.data.setdefault("lora", {})
        for peft_key, value in peft_keywords.items():
            key = _LORA_KEYS.get(peft_key)
            if value is None:
                continue
            if key is not None and not (key == "target_modules" and not isinstance(value, (str, list))):
                self.set(f"lora.{key}", list(value) if isinstance(value, list) else value)
                if key != peft_key:
                    self.note(f"{original}.{peft_key}", "changed", f"written as lora.{key}")
            elif peft_key == "task_type":
                self.note(f"{original}.{peft_key}", "no effect", "rlhfctl chooses it from the stage (causal LM, "
                                                                 "or sequence classification for reward models)")
            else:
                self.note(f"{original}.{peft_key}", "no equivalent", "dropped (not a [lora] setting of rlhfctl)")

    def _dataset(self, original: str, key: str, value: Any) -> None:
        if key in ("train_file", "validation_file", "max_length"):
            self.set(f"dataset.{key}", value)
        elif key == "validation_split_percentage":
            self.set("dataset.validation_split_percentage", value)
        else:
            self._no_equivalent(original, key)
            return
        if self.stage == "ppo" and key in ("validation_file", "validation_split_percentage"):
            self.note(original, "no effect", "llm-on-ray's PPO read only train_file; rlhfctl uses it for "
                                             "validation prompts")

    def _training(self, original: str, key: str, value: Any) -> None:
        ppo = self.stage == "ppo"
        if key == "optimizer":
            name = _OPTIMIZERS.get(str(value).lower())
            if name is None:
                self.note(original, "no equivalent", f"{value!r} is not one of {', '.join(OPTIMIZERS)}; "
                                                     f"{OPTIMIZERS[0]} is used")
            else:
                self.set("training.optimizer", name)
                if name != value:
                    self.note(original, "changed", f"{value!r} written as {name!r}")
            if ppo:
                self.note(original, "no effect", "llm-on-ray's PPO never passed it to the learner; rlhfctl uses it")
        elif key == "lr_scheduler":
            if value in LR_SCHEDULERS:
                self.set("training.lr_scheduler", value)
            else:
                self.note(original, "no equivalent", f"{value!r} is not a scheduler rlhfctl knows; 'linear' is used")
        elif key in ("batch_size", "epochs", "learning_rate", "weight_decay", "num_training_workers",
                     "gradient_accumulation_steps", "mixed_precision"):
            if key == "mixed_precision" and value not in _MIXED_PRECISION:
                self.note(original, "no equivalent", f"{value!r} is not one of {', '.join(_MIXED_PRECISION)}; "
                                                     f"{_MIXED_PRECISION[0]!r} is used")
                return
            self.set(f"training.{key}", value)
            if ppo and key in ("batch_size", "epochs", "weight_decay"):
                self.note(original, "no effect", "llm-on-ray's PPO ignored it; rlhfctl uses it")
            elif self.stage == "rm" and key == "weight_decay" and value:
                self.note(original, "no effect", "llm-on-ray's reward trainer gave the optimizer only the learning "
                                                 "rate; rlhfctl applies this weight decay")
        elif key == "resources_per_worker" and isinstance(value, dict):
            resources = {(name.upper() if str(name).lower() in ("cpu", "gpu") else str(name)): amount
                         for name, amount in value.items() if amount is not None}
            self.set("training.resources_per_worker", resources)
        elif key == "seed":
            self.data["general"].setdefault("seed", value)
            self.note(original, "changed", "written as general.seed")
        elif key in ("kl_coeff", "experience_batch_size") and ppo:
            self.set(f"training.{key}", value)
        elif key == "training_iteration" and ppo:
            message = "llm-on-ray's PPO iteration limit; rlhfctl counts passes over the prompt file (training.epochs)"
            batch = self._experience_batch_size()
            if isinstance(value, int) and isinstance(batch, int):
                message = (f"llm-on-ray stopped PPO after {value} iterations of {batch} prompts ({value * batch} "
                           "prompts in all); rlhfctl counts passes over the prompt file: set training.epochs to "
                           f"about {value * batch} / (number of prompts in train_file)")
            self.note(original, "no equivalent", message)
        else:
            self._no_equivalent(original, key)

    def _no_equivalent(self, original: str, key: str) -> None:
        reason = _NO_EQUIVALENT_WHY.get(key)
        if key in ("rm_name", "model_pretrain", "rm_pretrain", "kl_coeff", "experience_batch_size",
                   "training_iteration"):
            reason = f"a PPO setting, not used by the {self.stage} stage"
        self.note(original, "no equivalent", f"dropped ({reason})" if reason else "dropped")

    # --------------------------------------------------------------------------------------- stage fix-ups

    def _experience_batch_size(self) -> Any:
        return self.data["training"].get("experience_batch_size", 8)

    def _fill_required_paths(self) -> None:
        for key in ("output_dir", "checkpoint_dir"):
            if key not in self.data["general"]:
                default = example_value(field_info(self.stage, f"general.{key}"), self.stage)
                self.set(f"general.{key}", default)
                self.added.add(f"general.{key}")
                self.note(f"General.{key}", "added", f"not in the original; set to {default!r} (edit as needed)")

    def _keep_ppo_hardcoded_values(self, training: dict[str, Any]) -> None:
        """llm-on-ray's PPO hard-coded these; writing them out keeps the old run's behaviour."""
        self.data.setdefault("generation", {})["max_new_tokens"] = 50
        self.note("generation.max_new_tokens", "added", "50, llm-on-ray's hard-coded max_generation_length")
        if "max_length" not in self.data["dataset"]:
            self.set("dataset.max_length", 1024)
            self.note("dataset.max_length", "added", "1024, llm-on-ray's hard-coded model_max_length")
        self.set("training.ppo_epochs", 1)
        self.note("training.ppo_epochs", "added", "1, llm-on-ray's num_sgd_iter")
        if training.get("experience_batch_size") is not None and training.get("batch_size") is None:
            self.set("training.batch_size", training["experience_batch_size"])
            self.note("training.batch_size", "added",
                      f"{training['experience_batch_size']} (experience_batch_size: llm-on-ray's PPO mini-batch size)")

    def _note_relative_paths(self) -> None:
        relative = [f"{section}.{key}" for section in ("general", "dataset") for key, value in
                    self.data[section].items() if f"{section}.{key}" in path_keys() and isinstance(value, str)
                    and not Path(value).expanduser().is_absolute() and f"{section}.{key}" not in self.added]
        if relative:
            self.note(", ".join(relative), "changed",
                      "relative path: rlhfctl resolves it against the new config's folder (llm-on-ray used the "
                      "working directory)")
