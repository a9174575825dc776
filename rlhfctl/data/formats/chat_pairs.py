"""Preference pairs from chat datasets: TRL (explicit/implicit prompt, conversational or strings), ShareGPT pairs
and Orca-DPO.

For message lists the prompt is the shared message prefix and the responses are the final assistant messages;
a prompt that is one user message becomes its text, longer prefixes stay message lists.
"""

from __future__ import annotations

from rlhfctl.data.formats.base import (
    ConvertOptions,
    Skip,
    SourceFormat,
    has_keys,
    preference_row,
    prompt_row,
    sft_row,
    text_field,
)
from rlhfctl.data.formats.preference import (
    hh_to_ppo,
    hh_to_rm,
    hh_to_sft,
    prompt_value,
    standard_to_ppo,
    standard_to_rm,
)
from rlhfctl.data.messages import MessageError, normalize_message, normalize_messages, prompt_from_messages


# ----------------------------------------------------------------------------------------------- TRL


def _trl_conversations(record: dict) -> tuple[list, list] | Skip:
    """Full chosen / rejected conversations (explicit prompt prepended when present)."""
    try:
        chosen = normalize_messages(record.get("chosen"))
        rejected = normalize_messages(record.get("rejected"))
        prompt = record.get("prompt")
        if prompt is not None:
            prefix = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else normalize_messages(prompt)
            chosen, rejected = prefix + chosen, prefix + rejected
    except MessageError as exc:
        return Skip("wrong-type", str(exc))
    return chosen, rejected


def _trl_split(record: dict) -> tuple[str | list, str, str] | Skip:
    conversations = _trl_conversations(record)
    if isinstance(conversations, Skip):
        return conversations
    chosen, rejected = conversations
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return Skip("not-a-pair", "chosen and rejected must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        return Skip("prompt-mismatch", "chosen and rejected have different message prefixes")
    if not chosen[:-1]:
        return Skip("missing-field", "prompt (no messages before the responses)")
    return prompt_from_messages(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]


def _string_pair(record: object) -> bool:
    return isinstance(record, dict) and isinstance(record.get("chosen"), str)


def trl_to_rm(record: object, options: ConvertOptions) -> list:
    if _string_pair(record):  # string forms: explicit prompt = standard, implicit = HH transcripts
        return standard_to_rm(record, options) if record.get("prompt") is not None else hh_to_rm(record, options)
    split = _trl_split(record)
    return [split] if isinstance(split, Skip) else preference_row(*split)


def trl_to_ppo(record: object, options: ConvertOptions) -> list:
    if _string_pair(record):
        return standard_to_ppo(record, options) if record.get("prompt") is not None else hh_to_ppo(record, options)
    split = _trl_split(record)
    return [split] if isinstance(split, Skip) else prompt_row(split[0])


def trl_to_sft(record: object, options: ConvertOptions) -> list:
    if _string_pair(record):
        if record.get("prompt") is None:
            return hh_to_sft(record, options)
        prompt, chosen = prompt_value(record.get("prompt"), "prompt"), record["chosen"]
        return [prompt] if isinstance(prompt, Skip) else sft_row(prompt, chosen)
    split = _trl_split(record)
    return [split] if isinstance(split, Skip) else sft_row(split[0], split[1])


TRL = SourceFormat(
    name="trl",
    summary="TRL preference rows: [prompt,] chosen, rejected as message lists (UltraFeedback) or strings",
    keys=("prompt", "chosen", "rejected"),
    matches=lambda record: has_keys(record, "chosen", "rejected") and isinstance(record["chosen"], list),
    converters={"rm": trl_to_rm, "ppo": trl_to_ppo, "sft": trl_to_sft},
)


# ----------------------------------------------------------------------------------------------- ShareGPT pairs


def _sharegpt_pair(record: dict) -> tuple[str | list, str, str] | Skip:
    prompt = prompt_value(record.get("conversations"), "conversations")
    if isinstance(prompt, Skip):
        return prompt
    replies = []
    for key in ("chosen", "rejected"):
        value = record.get(key)
        if value is None:
            return Skip("missing-field", key)
        if isinstance(value, str):
            replies.append(value)
            continue
        try:
            message = normalize_message(value)
        except MessageError as exc:
            return Skip("wrong-type", f"{key}: {exc}")
        if message["role"] != "assistant":
            return Skip("not-a-pair", f"{key} is a {message['role']} message, not an assistant reply")
        replies.append(message["content"])
    return prompt, replies[0], replies[1]


def sharegpt_pair_to_rm(record: object, options: ConvertOptions) -> list:
    pair = _sharegpt_pair(record)
    return [pair] if isinstance(pair, Skip) else preference_row(*pair)


def sharegpt_pair_to_ppo(record: object, options: ConvertOptions) -> list:
    prompt = prompt_value(record.get("conversations"), "conversations")
    return [prompt] if isinstance(prompt, Skip) else prompt_row(prompt)


def sharegpt_pair_to_sft(record: object, options: ConvertOptions) -> list:
    pair = _sharegpt_pair(record)
    return [pair] if isinstance(pair, Skip) else sft_row(pair[0], pair[1])


SHAREGPT_PREFERENCE = SourceFormat(
    name="sharegpt-preference",
    summary='ShareGPT pairs: conversations [{"from","value"}] + chosen/rejected reply objects',
    keys=("conversations", "chosen", "rejected"),
    matches=lambda record: has_keys(record, "conversations", "chosen", "rejected"),
    converters={"rm": sharegpt_pair_to_rm, "ppo": sharegpt_pair_to_ppo, "sft": sharegpt_pair_to_sft},
)


# ----------------------------------------------------------------------------------------------- Orca-DPO


def _orca_prompt(record: dict) -> str | list | Skip:
    question = text_field(record, "question")
    if isinstance(question, Skip):
        return question
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        return Skip("wrong-type", f"system is {type(system).__name__}")
    if not system or not system.strip():
        return question
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def orca_to_rm(record: object, options: ConvertOptions) -> list:
    prompt, chosen, rejected = _orca_prompt(record), text_field(record, "chosen"), text_field(record, "rejected")
    for value in (prompt, chosen, rejected):
        if isinstance(value, Skip):
            return [value]
    return preference_row(prompt, chosen, rejected)


def orca_to_ppo(record: object, options: ConvertOptions) -> list:
    prompt = _orca_prompt(record)
    return [prompt] if isinstance(prompt, Skip) else prompt_row(prompt)


def orca_to_sft(record: object, options: ConvertOptions) -> list:
    prompt, chosen = _orca_prompt(record), text_field(record, "chosen")
    for value in (prompt, chosen):
        if isinstance(value, Skip):
            return [value]
    return sft_row(prompt, chosen)


ORCA_DPO = SourceFormat(
    name="orca-dpo",
    summary="Orca-DPO pairs: system, question, chosen, rejected (a non-empty system turn keeps messages)",
    keys=("system", "question", "chosen", "rejected"),
    matches=lambda record: has_keys(record, "question", "chosen", "rejected"),
    converters={"rm": orca_to_rm, "ppo": orca_to_ppo, "sft": orca_to_sft},
)
