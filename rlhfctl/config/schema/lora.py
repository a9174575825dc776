"""``[lora]``: train low-rank adapters (peft LoRA) instead of every weight, in any stage.

The section is optional: its presence in a file turns LoRA on (an empty ``[lora]`` takes every default), and so
does any ``lora.<key>=...`` override on the command line. What the stages do with it (reference and value models
sharing a base, heads kept trainable, merged or adapter-only exports) is :mod:`rlhfctl.models.adapters`'.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Union

from pydantic import Field, field_validator

from rlhfctl.config.schema.common import PositiveFloat, PositiveInt, Section

ALL_LINEAR = "all-linear"

ModuleName = Annotated[str, Field(min_length=1)]


class LoraConfig(Section):
    """Low-rank adapters on the chosen layers; the base weights stay frozen (one copy shared where possible)."""

    optional_section: ClassVar[str] = (
        "LoRA: train low-rank adapters instead of every weight (uncomment the section to turn it on)."
    )

    r: PositiveInt = Field(8, description="Rank of each adapter (its two matrices are d x r and r x d).")
    alpha: PositiveFloat = Field(
        16.0, description="Scaling numerator: an adapter's output is multiplied by alpha / r."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on each adapter's input (0: none).")
    target_modules: Union[ModuleName, list[ModuleName]] = Field(
        ALL_LINEAR,
        description='Layers that get adapters: "all-linear" or a list of module names such as ["q_proj", "v_proj"]. '
                    '"all-linear" means every linear layer but the output head; a listed name matches each module '
                    "whose dotted path ends with it, and must match at least one. Reward and value models keep "
                    "their score head fully trainable either way.",
    )
    merge_on_export: bool = Field(
        True,
        description="Export merged full weights (loads in plain transformers); false writes only the adapter "
                    "folder (adapter_config.json naming the base, loads with peft on top of it).",
    )

    @field_validator("target_modules")
    @classmethod
    def _check_target_modules(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError(f'expected "{ALL_LINEAR}" or a non-empty list of module names, found []')
            duplicates = sorted({name for name in value if value.count(name) > 1})
            if duplicates:
                raise ValueError(f"module names listed more than once: {', '.join(duplicates)}")
        return value

    @property
    def target_names(self) -> list[str] | None:
        """The listed module names, or None for ``"all-linear"``."""
        if isinstance(self.target_modules, str):
            return None if self.target_modules == ALL_LINEAR else [self.target_modules]
        return list(self.target_modules)
