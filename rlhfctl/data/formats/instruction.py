"""Instruction-tuning and prompt-only source formats: Alpaca, Dolly, ShareGPT, ``messages`` and bare strings."""

from __future__ import annotations

from rlhfctl.data.formats.base import ConvertOptions, Skip, SourceFormat, has_keys, prompt_row, sft_row, text_field
from rlhfctl.data.messages import MessageError, join_instruction_input, normalize_messages, prompt_from_messages


def _joined_instruction(record: dict, extra_key: str) -> str | Skip:
    """The instruction with Alpaca's ``input`` / Dolly's ``context`` joined in when it is non-empty."""
    instruction = text_field(record, "instruction")
    if isinstance(instruction, Skip):
        return instruction
    extra = record.get(extra_key)
    if extra is None:
        return instruction
    if not isinstance(extra, str):
        return Skip("wrong-type", f"{extra_key} is {type(extra).__name__}")
    return join_instruction_input(instruction, extra)


def _instruction_format(name: str, summary: str, extra_key: str, response_key: str) -> SourceFormat:
    def to_sft(record: object, options: ConvertOptions) -> list:
        instruction, response = _joined_instruction(record, extra_key), text_field(record, response_key)
        for value in (instruction, response):
            if isinstance(value, Skip):
                return [value]
        return sft_row(instruction, response)

    def to_ppo(record: object, options: ConvertOptions) -> list:
        instruction = _joined_instruction(record, extra_key)
        return [instruction] if isinstance(instruction, Skip) else prompt_row(instruction)

    required = ("instruction", response_key) if extra_key == "input" else ("instruction", extra_key, response_key)
    return SourceFormat(
        name=name,
        summary=summary,
        keys=("instruction", extra_key, response_key),
        matches=lambda record: has_keys(record, *required),
        converters={"sft": to_sft, "ppo": to_ppo},
    )


ALPACA = _instruction_format(
    "alpaca", "Alpaca: instruction, input, output (a non-empty input is joined into the instruction)",
    extra_key="input", response_key="output",
)
DOLLY = _instruction_format(
    "dolly", "Dolly: instruction, context, response (a non-empty context is joined into the instruction)",
    extra_key="context", response_key="response",
)


# ----------------------------------------------------------------------------------------------- conversations


def _conversation(record: dict, key: str) -> list | Skip:
    value = record.get(key)
    if value is None:
        return Skip("missing-field", key)
    try:
        return normalize_messages(value)
    except MessageError as exc:
        return Skip("wrong-type", f"{key}: {exc}")


def _conversation_format(name: str, summary: str, key: str) -> SourceFormat:
    def to_sft(record: object, options: ConvertOptions) -> list:
        messages = _conversation(record, key)
        if isinstance(messages, Skip):
            return [messages]
        if messages[-1]["role"] != "assistant":
            return [Skip("no-assistant-turn", "the conversation does not end with an assistant message")]
        if not messages[-1]["content"].strip():
            return [Skip("empty-response", "last assistant message")]
        return [{"messages": messages}]

    def to_ppo(record: object, options: ConvertOptions) -> list:
        messages = _conversation(record, key)
        if isinstance(messages, Skip):
            return [messages]
        first_user = next((index for index, message in enumerate(messages) if message["role"] == "user"), None)
        if first_user is None:
            return [Skip("missing-field", f"{key} has no user message")]
        return prompt_row(prompt_from_messages(messages[:first_user + 1]))

    return SourceFormat(
        name=name,
        summary=summary,
        keys=(key,),
        matches=lambda record: has_keys(record, key) and isinstance(record[key], list) and "chosen" not in record,
        converters={"sft": to_sft, "ppo": to_ppo},
    )


SHAREGPT = _conversation_format(
    "sharegpt", 'ShareGPT: conversations of {"from","value"} (human/gpt/system), kept whole as messages',
    key="conversations",
)
MESSAGES = _conversation_format(
    "messages", 'Chat rows: messages of {"role","content"} (system/user/assistant)', key="messages",
)


# ----------------------------------------------------------------------------------------------- prompt-only


def _bare_prompt(record: object, options: ConvertOptions) -> list:
    if isinstance(record, str):
        return prompt_row(record)
    return [Skip("wrong-type", f"expected a string, found {type(record).__name__}")]


PROMPT_ONLY = SourceFormat(
    name="prompt-only",
    summary="Prompt lists: bare JSON strings (one per line), .txt lines; {\"prompt\"} rows are 'standard'",
    keys=(),
    matches=lambda record: isinstance(record, str),
    converters={"ppo": _bare_prompt},
)
