"""The stage config base class: a whole config file for one stage (``stage = "<name>"`` and one field per
``[section]``), with ``[monitor]`` declared once for every stage, and the helpers that list a stage's sections.
"""

from __future__ import annotations

from typing import ClassVar, get_args

from pydantic import BaseModel, Field, model_validator

from rlhfctl.config.schema.common import _MODEL_CONFIG, Section
from rlhfctl.config.schema.monitor import MonitorConfig



def section_type(annotation: object) -> type[Section] | None:
    """The :class:`Section` a field holds (``Optional[LoraConfig]`` -> ``LoraConfig``), or None."""
    members = [arg for arg in get_args(annotation) if arg is not type(None)] if get_args(annotation) else [annotation]
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], Section):
        return members[0]
    return None


def seed_spellings(sections: list[str]) -> dict[str, str]:
    """The seed workflow's section spellings (``General``) -> ours (``general``)."""
    return {name.capitalize(): name for name in sections}


class StageConfigBase(BaseModel):
    """A whole config file for one stage: ``stage = "<name>"`` and one field per ``[section]``.

    A stage module subclasses it with ``stage: Literal["<name>"] = "<name>"``, a one-line ``summary`` (the first
    line of its template, shown by ``rlhfctl init --list``) and its sections; every stage that trains a model also
    takes ``lora: Optional[LoraConfig] = None`` (:mod:`.lora`: the section's presence turns LoRA on).
    """

    model_config = _MODEL_CONFIG

    summary: ClassVar[str]
    stage: str
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)  # every stage's; listed after the stage's own

    @classmethod
    def stage_name(cls) -> str:
        return cls.model_fields["stage"].default

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        """``{"general": ModelGeneral, ...}`` in file order: the stage's own sections, then the optional ones a
        file may leave out (``lora``), then the shared ones declared here (``monitor``)."""
        found = {name: section for name, field in cls.model_fields.items()
                 if (section := section_type(field.annotation)) is not None}
        optional = cls.optional_sections()
        shared = [name for name in StageConfigBase.model_fields if name in found]
        own = [name for name in found if name not in shared and name not in optional]
        return {name: found[name] for name in [*own, *optional, *shared]}

    @classmethod
    def optional_sections(cls) -> tuple[str, ...]:
        """Sections a file may leave out, whose presence turns a feature on (``lora``): typed ``Optional[...]``,
        default None."""
        return tuple(name for name, field in cls.model_fields.items()
                     if section_type(field.annotation) and field.default is None and field.default_factory is None)

    @model_validator(mode="before")
    @classmethod
    def _accept_seed_section_names(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            for seed_name, name in seed_spellings(list(cls.sections())).items():
                if seed_name in data and name not in data:
                    data[name] = data.pop(seed_name)
        return data
