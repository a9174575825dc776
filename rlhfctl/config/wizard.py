"""The answers ``rlhfctl init`` collects, derived from the schema, and turning them into a commented config file.

Every key whose field carries an :class:`~rlhfctl.config.schema.markers.Ask` is a question for the stages whose
schema has it, and a flag (``--learning-rate``) of ``rlhfctl init``: its type, bounds, whether it may stay empty,
whether it is a path or a model source, all come from the field. This module holds no prompting (that is the CLI's
job): an :class:`InitAnswers` is filled from flags, a wizard or both, then :func:`render_config` writes the stage's
template with those values and validates the result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Optional, get_args, get_origin

from pydantic.fields import FieldInfo

from rlhfctl.config.keys import (
    bounds,
    default_value,
    first_sentence,
    is_required,
    markers,
    number_or_words,
    stage_fields,
    value_type,
)
from rlhfctl.config.schema import STAGES
from rlhfctl.config.schema.markers import Ask, ModelSource

Validator = Callable[[str], Optional[str]]  # returns an error message, or None when the text is acceptable


# ------------------------------------------------------------------------------------------------ questions


@dataclass(frozen=True)
class Question:
    """One answer ``rlhfctl init`` collects for a stage: the key it fills and how it is asked."""

    stage: str
    key: str  # "training.learning_rate"; for a table entry the table's key ("training.resources_per_worker")
    field: FieldInfo
    ask: Ask

    @property
    def name(self) -> str:
        """The answer's name (``model``, ``learning_rate``): the :class:`InitAnswers` attribute and the flag."""
        return self.ask.name or self.key.split(".")[-1]

    @property
    def value_type(self) -> Any:
        """``str``, ``Path``, ``int``, ``float`` or ``bool`` (``str`` for a number-or-word key: see ``words``)."""
        if self.words:
            return str
        return value_type(self.ask.entry_type if self.ask.entry else self.field.annotation)

    @property
    def words(self) -> tuple[str, ...]:
        """Words the key accepts instead of a whole number (``("auto",)`` for ``num_training_workers``)."""
        found = None if self.ask.entry else number_or_words(self.field.annotation)
        return found[1] if found else ()

    @property
    def bounds(self) -> dict[str, Any]:
        entry_type = self.ask.entry_type
        if self.ask.entry:
            return bounds(list(get_args(entry_type)[1:])) if get_origin(entry_type) is Annotated else {}
        found = number_or_words(self.field.annotation)
        if found and get_origin(found[0]) is Annotated:
            return bounds(list(get_args(found[0])[1:]))
        return bounds(self.field.metadata)

    @property
    def optional(self) -> bool:
        """May stay unset: the key has no value unless one is given (``dataset.validation_file``)."""
        return not self.ask.entry and not is_required(self.field) and default_value(self.field) is None

    @property
    def is_path(self) -> bool:
        return self.value_type is Path

    @property
    def is_model_source(self) -> bool:
        return bool(markers(self.field, ModelSource))

    def text(self, template: dict[str, Any]) -> str:
        """The question, with the template's values of its section filled in where it names them."""
        return self.ask.question.format(**template.get(self.key.split(".")[0], {}))

    def template_value(self, template: dict[str, Any]) -> Any:
        """The template's value for this answer (None for a commented-out key; False for a missing yes/no entry)."""
        section, name = self.key.split(".")
        value = template.get(section, {}).get(name)
        if self.ask.entry:
            value = (value or {}).get(self.ask.entry)
            return bool(value) if self.value_type is bool else value
        return value

    def validator(self) -> Validator | None:
        """Checks a typed reply (None: anything, including nothing, is accepted)."""
        if self.optional or self.value_type is bool:
            return None
        if self.words:
            return _whole_number_check(self.bounds, self.words)
        if self.value_type is int:
            return _whole_number_check(self.bounds)
        if self.value_type is float:
            from rlhfctl.config.templates import template_defaults

            return _number_check(self.bounds, example=self.template_value(template_defaults(self.stage)))
        return _non_empty

    def parse(self, reply: str) -> Any:
        """A reply that passed :meth:`validator` as the answer's value (paths stay text)."""
        if self.words:
            reply = reply.strip()
            return int(reply) if reply.isdigit() else reply
        if self.value_type in (int, float):
            return self.value_type(reply)
        return reply


def _non_empty(text: str) -> str | None:
    return None if text.strip() else "this cannot be empty"


def _smallest_whole(limits: dict[str, Any]) -> int | None:
    return limits["gt"] + 1 if "gt" in limits else limits.get("ge")


def _whole_number_check(limits: dict[str, Any], words: tuple[str, ...] = ()) -> Validator:
    smallest = _smallest_whole(limits)
    alternatives = "".join(f' or "{word}"' for word in words)

    def check(text: str) -> str | None:
        text = text.strip()
        if text in words or (text.isdigit() and (smallest is None or int(text) >= smallest)):
            return None
        if "gt" in limits:
            return f"enter a whole number greater than {limits['gt']}{alternatives}"
        return "enter a whole number" + (f" of {smallest} or more" if smallest is not None else "") + alternatives

    return check


def _number_check(limits: dict[str, Any], example: Any) -> Validator:
    def check(text: str) -> str | None:
        try:
            value = float(text)
        except ValueError:
            return f"enter a number, e.g. {example}"
        if not math.isfinite(value):
            return "enter a finite number"
        if "gt" in limits and value <= limits["gt"]:
            return f"enter a number greater than {limits['gt']}"
        if "ge" in limits and value < limits["ge"]:
            return f"enter a number of {limits['ge']} or more"
        return None

    return check


@cache
def init_questions(stage: str) -> tuple[Question, ...]:
    """What ``rlhfctl init`` asks for a stage, in order: by wizard step, then in schema order."""
    found = [Question(stage, key, field, ask)
             for key, field in stage_fields(stage).items() for ask in markers(field, Ask)]
    return tuple(sorted(found, key=lambda question: question.ask.step))  # sorted() is stable: schema order kept


@dataclass(frozen=True)
class InitFlag:
    """One answer across every stage that asks it: the ``rlhfctl init`` option."""

    name: str
    questions: tuple[Question, ...]  # one per stage that asks it

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(question.stage for question in self.questions)

    @property
    def declaration(self) -> str:
        """``--learning-rate``, or the Ask's own (``--gpu/--no-gpu``)."""
        return self.questions[0].ask.flag or "--" + self.name.replace("_", "-")

    @property
    def display_name(self) -> str:
        return self.declaration.split("/")[0]

    @property
    def value_type(self) -> Any:
        """``str`` (paths too), ``int``, ``float`` or ``bool``."""
        kind = self.questions[0].value_type
        return str if kind is Path else kind

    @property
    def smallest(self) -> int | None:
        """The least whole number accepted (for an integer flag with a lower bound)."""
        return _smallest_whole(self.questions[0].bounds) if self.value_type is int else None

    @property
    def help(self) -> str:
        """What it sets, where: ``PPO: Weight of the ... (training.kl_coeff)``."""
        stages_by_key: dict[str, list[str]] = {}
        for question in self.questions:
            stages_by_key.setdefault(question.key + (f".{question.ask.entry}" if question.ask.entry else ""),
                                     []).append(question.stage)
        if len(stages_by_key) == 1:
            where = next(iter(stages_by_key))
        else:
            where = "; ".join(f"{', '.join(stages)}: {key}" for key, stages in stages_by_key.items())
        only = "" if len(self.stages) == len(STAGES) else "/".join(stage.upper() for stage in self.stages) + ": "
        return f"{only}{self._meaning()} ({where})"

    def _meaning(self) -> str:
        """The key's description when every stage describes it alike, else the (first) wizard question."""
        descriptions = {first_sentence(question.field.description or "") for question in self.questions}
        if len(descriptions) == 1 and not self.questions[0].ask.entry:
            return descriptions.pop()
        return self.questions[0].ask.question.rstrip(":?").strip() + "."


@cache
def init_flags() -> tuple[InitFlag, ...]:
    """Every answer of every stage, ordered by wizard step and then as the stages ask them."""
    order: dict[str, tuple[int, int]] = {}
    questions: dict[str, list[Question]] = {}
    for stage in STAGES:
        for position, question in enumerate(init_questions(stage)):
            rank = (question.ask.step, position)
            order[question.name] = min(order.get(question.name, rank), rank)
            questions.setdefault(question.name, []).append(question)
    return tuple(InitFlag(name, tuple(questions[name])) for name in sorted(order, key=order.__getitem__))


# ------------------------------------------------------------------------------------------------ answers


class InitAnswers:
    """What a new config should contain, by answer name (``InitAnswers("rm", model="gpt2", epochs=2)``);
    an answer left at ``None`` keeps the template's value."""

    def __init__(self, stage: str, **answers: Any) -> None:
        names = [flag.name for flag in init_flags()]
        unknown = sorted(set(answers) - set(names))
        if unknown:
            raise TypeError(f"unknown init answers: {', '.join(unknown)}")
        self.stage = stage
        self.values: dict[str, Any] = {name: answers.get(name) for name in names}

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={value!r}" for name, value in self.values.items() if value is not None)
        return f"InitAnswers({self.stage!r}{', ' if given else ''}{given})"

    def questions(self) -> tuple[Question, ...]:
        return init_questions(self.stage)

    def missing(self) -> list[str]:
        """Answers still unset that a complete set needs for this stage (optional ones excluded)."""
        return [question.name for question in self.questions()
                if not question.optional and self.values[question.name] is None]

    def not_for_this_stage(self) -> list[InitFlag]:
        """Flags given that this stage does not ask for (e.g. ``--kl-coeff`` for RM)."""
        asked = {question.name for question in self.questions()}
        return [flag for flag in init_flags() if self.values[flag.name] is not None and flag.name not in asked]

    def template_values(self) -> dict[str, Any]:
        """``{"section.key": value}`` for :func:`~rlhfctl.config.templates.render_template` (unset answers left
        out)."""
        from rlhfctl.config.templates import template_defaults

        template = template_defaults(self.stage)
        values: dict[str, Any] = {}
        for question in self.questions():
            value = self.values[question.name]
            if value is None or (question.optional and value == ""):
                continue
            if question.words and isinstance(value, str):  # a flag's text: "2" -> 2, "auto" stays
                value = question.parse(value)
            if not question.ask.entry:
                values[question.key] = value
                continue
            section, name = question.key.split(".")
            table = dict(values.get(question.key, template[section][name]))
            if question.value_type is not bool:
                table[question.ask.entry] = value
            elif value:
                table[question.ask.entry] = 1
            else:
                table.pop(question.ask.entry, None)
            values[question.key] = table
        return values

    def relative_to(self, config_dir: Path, cwd: Path) -> InitAnswers:
        """Paths typed relative to ``cwd`` rewritten relative to the config's folder (where the loader resolves
        them), so the file keeps working wherever it is run from."""
        changed = dict(self.values)
        for question in self.questions():
            value = self.values[question.name]
            if not value or not isinstance(value, str):
                continue
            local = Path(value).expanduser()
            if question.is_path and not local.is_absolute():
                changed[question.name] = _relative(cwd / local, config_dir)
            elif question.is_model_source and _is_local_model(value, cwd) and not local.is_absolute():
                relative = _relative(cwd / local, config_dir)
                changed[question.name] = relative if relative.startswith("..") else f"./{relative}"
        return InitAnswers(self.stage, **changed)


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.absolute(), start.absolute())).as_posix()


def _is_local_model(value: str, cwd: Path) -> bool:
    """A model answer that names a local folder rather than a hub id."""
    return value.startswith(("./", "../", "/", "~")) or (cwd / value).exists()


def render_config(answers: InitAnswers, *, shown_as: str | None = None) -> str:
    """The stage's template with ``answers`` filled in; raises ConfigError when the result is not valid.

    Files it names are not required to exist yet (a new config usually precedes its data).
    """
    from rlhfctl.config.loader import tomllib, validate_config_dict
    from rlhfctl.config.templates import render_template

    text = render_template(answers.stage, answers.template_values())
    validate_config_dict(tomllib.loads(text), stage=answers.stage, path=shown_as, source_text=text,
                         check_files=False)
    return text
