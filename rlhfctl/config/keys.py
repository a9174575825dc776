"""What the schema says about each dotted key (``training.learning_rate``), derived from the fields once.

Every list of keys the loader, migration, the templates and ``rlhfctl init`` need comes from here, so a key added
to a stage's schema module is resolved, checked, templated and documented without editing anything else.
"""

from __future__ import annotations

import re
import types
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rlhfctl.config.schema import CONFIG_CLASSES, SECTION_ALIASES, STAGES
from rlhfctl.config.schema.markers import ModelSource, MustExist

SEED_SECTIONS = SECTION_ALIASES


# ------------------------------------------------------------------------------------------------ one field


def value_type(annotation: Any) -> Any:
    """The type a field holds, without ``Optional`` and ``Annotated``: ``Optional[InputFile]`` -> ``Path``."""
    if get_origin(annotation) is Annotated:
        return value_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return value_type(members[0])
    return annotation


def number_or_words(annotation: Any) -> tuple[Any, tuple[str, ...]] | None:
    """``(PositiveInt, ("auto",))`` for a field typed ``Union[PositiveInt, Literal["auto"]]`` (a number, or one of
    some words); None for any other type."""
    if get_origin(annotation) is Annotated:
        return number_or_words(get_args(annotation)[0])
    if get_origin(annotation) not in (Union, types.UnionType):
        return None
    numbers = [arg for arg in get_args(annotation) if value_type(arg) in (int, float)]
    words = [word for arg in get_args(annotation) if get_origin(arg) is Literal for word in get_args(arg)]
    if len(numbers) != 1 or not words or len(numbers) + 1 != len(get_args(annotation)):
        return None
    return numbers[0], tuple(str(word) for word in words)


def markers(field: FieldInfo, kind: type) -> list[Any]:
    """The field's markers of one kind, also those inside ``Optional[Annotated[...]]``."""
    found = list(field.metadata)
    annotation = field.annotation
    while True:
        if get_origin(annotation) is Annotated:
            found += annotation.__metadata__
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                break
            annotation = members[0]
        else:
            break
    return [item for item in found if isinstance(item, kind)]


def first_sentence(description: str) -> str:
    """A description's first sentence: the key's comment in the templates (the reference shows all of it)."""
    return re.split(r"(?<=\.)\s+(?=[A-Z])", description.strip(), maxsplit=1)[0]


def bounds(metadata: list[Any]) -> dict[str, Any]:
    """``{"gt": 0}`` from a field's metadata (or an ``Annotated`` type's, whose ``Field(...)`` is unpacked)."""
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(bounds(item.metadata))
        for name in ("gt", "ge", "lt", "le"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def is_required(field: FieldInfo) -> bool:
    return field.default is PydanticUndefined and field.default_factory is None


def default_value(field: FieldInfo) -> Any:
    """The field's default (None when unset or required)."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def example_value(field: FieldInfo, stage: str) -> Any:
    """The field's first example, with ``{stage}`` filled in (``runs/{stage}`` -> ``runs/rm``), or None."""
    if not field.examples:
        return None
    example = field.examples[0]
    return example.format(stage=stage) if isinstance(example, str) else example


# ------------------------------------------------------------------------------------------------ a stage's keys


@cache
def stage_fields(stage: str) -> dict[str, FieldInfo]:
    """``{"general.output_dir": FieldInfo, ...}``: every key of a stage's sections, in file order."""
    return {f"{section}.{name}": field
            for section, section_cls in CONFIG_CLASSES[stage].sections().items()
            for name, field in section_cls.model_fields.items()}


def known_keys(stage: str) -> list[str]:
    """Every dotted key a stage's config accepts (for docs, the wizard and override suggestions)."""
    return ["stage", *stage_fields(stage)]


def field_info(stage: str, dotted_key: str) -> FieldInfo | None:
    """The pydantic field behind a dotted key of a stage (``training.learning_rate``), or None if unknown."""
    return stage_fields(stage).get(dotted_key)


def is_table_field(stage: str, dotted_key: str) -> bool:
    """True for free-form tables such as ``training.resources_per_worker`` (their sub-keys are not fixed)."""
    field = field_info(stage, dotted_key)
    return field is not None and get_origin(value_type(field.annotation)) is dict


# ------------------------------------------------------------------------------------------------ across stages


def _all_fields() -> dict[str, FieldInfo]:
    """Every key of every stage (a key means the same in every stage that has it)."""
    merged: dict[str, FieldInfo] = {}
    for stage in STAGES:
        for key, field in stage_fields(stage).items():
            merged.setdefault(key, field)
    return merged


@cache
def path_keys() -> frozenset[str]:
    """Keys typed ``Path``: relative values are resolved against the config's folder."""
    return frozenset(key for key, field in _all_fields().items() if value_type(field.annotation) is Path)


@cache
def model_source_keys() -> frozenset[str]:
    """Hub id or local folder keys: relative only when spelt ``./``, ``../`` or ``~``."""
    return frozenset(key for key, field in _all_fields().items() if markers(field, ModelSource))


@cache
def must_exist_keys() -> dict[str, MustExist]:
    """Keys naming something the run reads, with what to call it when it is missing."""
    return {key: found[0] for key, field in _all_fields().items() if (found := markers(field, MustExist))}


@cache
def exclusive_key_groups() -> tuple[tuple[str, ...], ...]:
    """Dotted keys of which at most one may be set, e.g. (dataset.validation_file, dataset.validation_split_...)."""
    groups: dict[tuple[str, ...], None] = {}
    for stage in STAGES:
        for section, section_cls in CONFIG_CLASSES[stage].sections().items():
            for group in section_cls.exclusive_keys:
                groups[tuple(f"{section}.{name}" for name in group)] = None
    return tuple(groups)


@cache
def stage_keys() -> dict[str, frozenset[str]]:
    """For each stage, every key and section name it accepts (``"generation"``, ``"generation.top_k"``, ...)."""
    return {stage: frozenset(set(stage_fields(stage)) | set(CONFIG_CLASSES[stage].sections())) for stage in STAGES}


@cache
def stage_unique_keys() -> dict[str, frozenset[str]]:
    """For each stage, the keys (and sections) no other stage has."""
    keys = stage_keys()
    return {stage: frozenset(own - set().union(*(keys[other] for other in STAGES if other != stage)))
            for stage, own in keys.items()}
