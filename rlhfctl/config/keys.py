"""The dotted keys each stage accepts (``training.learning_rate``) and the schema field behind each."""

from __future__ import annotations

from typing import get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rlhfctl.config.schema import CONFIG_CLASSES

SEED_SECTIONS = {"General": "general", "Dataset": "dataset", "Training": "training", "Generation": "generation"}


def known_keys(stage: str) -> list[str]:
    """Every dotted key a stage's config accepts (for docs, the wizard and override suggestions)."""
    model_cls = CONFIG_CLASSES[stage]
    keys = []
    for section, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += [f"{section}.{name}" for name in annotation.model_fields]
        else:
            keys.append(section)
    return keys


def field_info(stage: str, dotted_key: str) -> FieldInfo | None:
    """The pydantic field behind a dotted key of a stage (``training.learning_rate``), or None if unknown."""
    node: type[BaseModel] | None = CONFIG_CLASSES[stage]
    field = None
    for part in dotted_key.split("."):
        if node is None or part not in node.model_fields:
            return None
        field = node.model_fields[part]
        annotation = field.annotation
        node = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return field


def is_table_field(stage: str, dotted_key: str) -> bool:
    """True for free-form tables such as ``training.resources_per_worker`` (their sub-keys are not fixed)."""
    field = field_info(stage, dotted_key)
    return field is not None and get_origin(field.annotation) is dict
