"""Training-side loading: a standard data file -> validated, normalised rows, split once from the seed.

Accepted spellings (the standard formats plus the seed's variants; anything else is converted first with
``rlhfctl data convert``):

- ``rm``:  ``instruction`` (or ``prompt``) as text or a message list, ``chosen``, ``rejected``, optional ``margin``
- ``ppo``: ``prompt`` (or ``instruction``) as text or a message list; a bare JSON string line is a prompt;
           other keys are ignored
- ``sft``: ``instruction`` (or ``prompt``) + ``response``, with an optional ``context`` joined into the prompt
           (Dolly), or ``messages``

Normalised rows:

- ``rm``:  ``{"prompt": str | list[message], "chosen": str, "rejected": str, "margin": float | None}``
- ``ppo``: ``{"prompt": str | list[message]}``
- ``sft``: ``{"messages": [...]}`` ending with an assistant message; a text instruction stays verbatim as the
           user message

Every problem is a :class:`~rlhfctl.errors.DataError` naming the file, the line and the key, raised in the driver
before any Ray worker starts. The data sets this loads are small enough to hold as Python lists.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfctl.config.schema import DatasetConfig
from rlhfctl.data.messages import MessageError, join_instruction_input, normalize_messages
from rlhfctl.data.readers import iter_records
from rlhfctl.errors import DataError

Kind = Literal["sft", "rm", "ppo"]


@dataclass(frozen=True)
class TrainingData:
    """The rows a stage trains and validates on."""

    train: list[dict]
    validation: list[dict]
    train_file: Path
    validation_source: str  # e.g. "data/val.jsonl", "5% of data/rm.jsonl (seed 42)" or "none"


def load_training_data(dataset: DatasetConfig, kind: Kind, seed: int,
                       extra_keys: Mapping[str, str] | None = None) -> TrainingData:
    """Load ``dataset.train_file`` (and ``validation_file``) for stage ``kind`` and split it from ``seed``.

    ``extra_keys``: more keys every row must have, kept in the normalised row (text or a number), each with who
    reads it for the error message, e.g. ``{"answer": "reward function exact_match"}``.
    """
    train_rows = load_rows(dataset.train_file, kind, extra_keys)
    if dataset.validation_file is not None:
        validation_rows = load_rows(dataset.validation_file, kind, extra_keys)
        return TrainingData(train_rows, validation_rows, Path(dataset.train_file), str(dataset.validation_file))
    percentage = dataset.validation_split_percentage
    train, validation = split_rows(train_rows, percentage, seed)
    source = f"{percentage:g}% of {dataset.train_file} (seed {seed})" if validation else "none"
    return TrainingData(train, validation, Path(dataset.train_file), source)


def split_rows(rows: list[dict], percentage: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``percentage`` % of ``rows`` (at least one row when the percentage is positive and there are two
    or more rows), chosen by a seeded shuffle; both parts keep the file order."""
    count = len(rows)
    held_out = round(count * percentage / 100)
    if percentage > 0 and count >= 2:
        held_out = min(max(held_out, 1), count - 1)
    if held_out <= 0:
        return list(rows), []
    order = list(range(count))
    random.Random(seed).shuffle(order)
    validation_indices = set(order[:held_out])
    train = [row for index, row in enumerate(rows) if index not in validation_indices]
    validation = [row for index, row in enumerate(rows) if index in validation_indices]
    return train, validation


def load_rows(path: Path | str, kind: Kind, extra_keys: Mapping[str, str] | None = None) -> list[dict]:
    """Read every record of ``path`` and normalise it for ``kind`` (raises DataError on the first bad row); keep
    ``extra_keys`` (see :func:`load_training_data`)."""
    normalize = _NORMALIZERS[kind]
    path = Path(path)
    rows = [{**normalize(record, path, line), **_extra_fields(record, path, line, extra_keys or {})}
            for line, record in iter_records(path)]
    if not rows:
        raise DataError("the file has no rows", path=path)
    return rows


def _extra_fields(record: object, path: Path, line: int, extra_keys: Mapping[str, str]) -> dict:
    """The values of ``extra_keys`` in ``record``: present, text or a number."""
    fields = {}
    for key, reader in extra_keys.items():
        value = record.get(key) if isinstance(record, dict) else None
        if value is None:
            raise DataError(f"missing ({reader} reads it)", path=path, line=line, key=key,
                            hint=f'Give every row a "{key}" value, or drop what reads it from the config.')
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"expected text or a number, found {type(value).__name__}", path=path, line=line,
                            key=key)
        fields[key] = value
    return fields


# ----------------------------------------------------------------------------------------------- per kind


def _convert_hint(path: Path, kind: str) -> str:
    return (f"Other formats (HH-RLHF, Alpaca, ShareGPT, ...) can be converted first: "
            f"rlhfctl data convert {path} --to {kind} -o {kind}.jsonl")


def _require_object(record: object, path: Path, line: int, kind: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, found {type(record).__name__}", path=path, line=line,
                        hint=_convert_hint(path, kind))
    return record


def _text(record: dict, key: str, path: Path, line: int, kind: str) -> str:
    value = record.get(key)
    if key not in record or value is None:
        raise DataError("missing", path=path, line=line, key=key, hint=_convert_hint(path, kind))
    if not isinstance(value, str):
        raise DataError(f"expected text, found {type(value).__name__}", path=path, line=line, key=key)
    if not value.strip():
        raise DataError("is empty", path=path, line=line, key=key,
                        hint=f"rlhfctl data convert {path} --to {kind} skips such rows and reports them.")
    return value


def _prompt(record: dict, keys: tuple[str, str], path: Path, line: int, kind: str) -> str | list[dict]:
    """The prompt under the first of ``keys`` present: text, or a message list."""
    key = next((name for name in keys if record.get(name) is not None), None)
    if key is None:
        raise DataError(f"missing (or '{keys[1]}')", path=path, line=line, key=keys[0],
                        hint=_convert_hint(path, kind))
    if isinstance(record[key], list):
        try:
            return normalize_messages(record[key])
        except MessageError as exc:
            raise DataError(str(exc), path=path, line=line, key=key) from exc
    return _text(record, key, path, line, kind)


def _normalize_rm(record: object, path: Path, line: int) -> dict:
    record = _require_object(record, path, line, "rm")
    prompt = _prompt(record, ("instruction", "prompt"), path, line, "rm")
    chosen = _text(record, "chosen", path, line, "rm")
    rejected = _text(record, "rejected", path, line, "rm")
    margin = record.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise DataError(f"expected a finite number, found {margin!r}", path=path, line=line, key="margin")
        margin = float(margin)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin}


def _normalize_ppo(record: object, path: Path, line: int) -> dict:
    if isinstance(record, str):
        if not record.strip():
            raise DataError("the prompt is empty", path=path, line=line)
        return {"prompt": record}
    record = _require_object(record, path, line, "ppo")
    return {"prompt": _prompt(record, ("prompt", "instruction"), path, line, "ppo")}


def _normalize_sft(record: object, path: Path, line: int) -> dict:
    record = _require_object(record, path, line, "sft")
    if record.get("messages") is not None:
        try:
            messages = normalize_messages(record["messages"])
        except MessageError as exc:
            raise DataError(str(exc), path=path, line=line, key="messages") from exc
        if messages[-1]["role"] != "assistant":
            raise DataError("the last message must be from the assistant (the text to learn)",
                            path=path, line=line, key="messages")
        return {"messages": messages}
    prompt = _prompt(record, ("instruction", "prompt"), path, line, "sft")
    response = _text(record, "response", path, line, "sft")
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError(f"expected text, found {type(context).__name__}", path=path, line=line, key="context")
    if context and context.strip():
        if not isinstance(prompt, str):
            raise DataError("a context can only be joined to a text instruction, not a message list",
                            path=path, line=line, key="context")
        prompt = join_instruction_input(prompt, context)
    prefix = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return {"messages": [*prefix, {"role": "assistant", "content": response}]}


_NORMALIZERS = {"rm": _normalize_rm, "ppo": _normalize_ppo, "sft": _normalize_sft}
