"""Markers a schema field carries in its ``Annotated[...]`` type, read by the rest of :mod:`rlhfctl.config`.

Pydantic keeps objects it does not know in ``FieldInfo.metadata`` and ignores them when validating; rlhfctl reads
them to derive, from the schema alone, what would otherwise be lists kept by hand:

- :class:`MustExist`: a path the run reads; the loader reports it when missing (``file not found: ...``).
- :data:`MODEL_SOURCE`: a hub id or a local model folder; relative only when spelt ``./``, ``../`` or ``~``.
- :class:`Ask`: ``rlhfctl init`` asks for this key (wizard question, ``--flag``), at a :class:`WizardStep`.
- :data:`LIVE_EXAMPLE`: the template shows this optional key's example as a live value (for a stage that needs
  one of several optional keys set, such as GRPO's reward model or reward functions).

Path keys need no marker: every field typed ``Path`` is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


@dataclass(frozen=True)
class MustExist:
    """The value names something that must exist before the run starts."""

    what: str  # "file", "export folder": the loader says "<what> not found: <value>"
    hint: str = ""  # appended in parentheses, e.g. what to do about it


@dataclass(frozen=True)
class ModelSource(MustExist):
    """A Hugging Face hub id or a local model folder (checked only when it looks like a local path)."""


MODEL_SOURCE = ModelSource("local model folder")


@dataclass(frozen=True)
class LiveExample:
    """The template writes this optional key with its example as a live line, not commented out."""


LIVE_EXAMPLE = LiveExample()


class WizardStep(IntEnum):
    """The order in which ``rlhfctl init`` asks; within a step, keys come in schema order."""

    MODELS = 1
    DATA = 2
    FOLDERS = 3
    WORKERS = 4
    OPTIMISATION = 5


@dataclass(frozen=True)
class Ask:
    """``rlhfctl init`` asks for this key: a wizard question and a ``--flag``.

    ``name`` is the answer's name (and, with dashes, its flag) when it is not the key's own name, e.g. ``model``
    for both ``general.base_model`` (SFT, RM) and ``general.model_name`` (PPO). For a table key such as
    ``training.resources_per_worker`` one ``Ask`` per ``entry`` it fills (``"CPU"``), typed by ``entry_type``;
    a yes/no entry (``bool``) sets the entry to 1 or leaves it out.
    """

    question: str  # may name other keys of the same section in braces: "{validation_split_percentage:g}"
    step: WizardStep
    name: str = ""
    flag: str = ""  # the flag's declaration when not "--<name>", e.g. "--gpu/--no-gpu"
    entry: str = ""
    entry_type: Any = None
