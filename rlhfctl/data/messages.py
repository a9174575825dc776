"""Chat messages: the role spellings datasets use, normalised to ``{"role", "content"}`` with roles
``system``/``user``/``assistant``, and the rule that turns a one-user-message prompt into plain text."""

from __future__ import annotations

from rlhfctl.data.prompting import Message

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


class MessageError(ValueError):
    """A message list does not have the expected shape (the text says what is wrong)."""


def normalize_message(value: object, index: int = 0) -> Message:
    """One message as ``{"role", "content"}``; accepts ``role``/``content`` and ShareGPT's ``from``/``value``."""
    if not isinstance(value, dict):
        raise MessageError(f"message {index} is a {type(value).__name__}, expected an object with role and content")
    role = value.get("role", value.get("from"))
    content = value.get("content", value.get("value"))
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise MessageError(
            f"message {index} has role {role!r}; expected one of system, user, assistant (or human, gpt)"
        )
    if not isinstance(content, str):
        raise MessageError(f"message {index} has content of type {type(content).__name__}, expected text")
    return {"role": ROLE_ALIASES[role.lower()], "content": content}


def normalize_messages(value: object) -> list[Message]:
    """A whole message list, normalised (raises :class:`MessageError`)."""
    if not isinstance(value, list):
        raise MessageError(f"expected a list of messages, found {type(value).__name__}")
    if not value:
        raise MessageError("the message list is empty")
    return [normalize_message(item, index) for index, item in enumerate(value)]


def prompt_from_messages(messages: list[Message]) -> str | list[Message]:
    """A prompt that is exactly one user message becomes its text verbatim; longer prefixes stay a list."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return messages


def join_instruction_input(instruction: str, extra: str) -> str:
    """Alpaca's ``input`` / Dolly's ``context`` joined into the instruction (a blank line between them)."""
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction
