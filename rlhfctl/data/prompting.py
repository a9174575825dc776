"""Prompt text rendering shared by every stage (SFT, RM and PPO see the same text for the same prompt).

A prompt is either a string or a list of ``{"role", "content"}`` messages (roles ``system``/``user``/
``assistant``).

- With a tokenizer that has a chat template, the template renders it (a string becomes one user message) and
  ``add_generation_prompt=True`` opens the assistant turn.
- Otherwise the documented **plain template** is used: a string prompt is used verbatim (HH-RLHF style data already
  carries ``"\\n\\nHuman: ...\\n\\nAssistant:"``); a message list renders as ``"\\n\\n{Role}: {content}"`` per message
  (``Human`` for user, ``Assistant``, ``System``) followed by ``"\\n\\nAssistant:"``.

Responses are appended to the rendered prompt verbatim (the example data's replies start with a space).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]

PLAIN_ROLE_LABELS: dict[str, str] = {"user": "Human", "assistant": "Assistant", "system": "System"}
ASSISTANT_TURN = "\n\nAssistant:"


def has_chat_template(tokenizer: Any) -> bool:
    """True when ``tokenizer`` carries a chat template (``None`` is allowed: no tokenizer, no template)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain(messages: Sequence[Message]) -> str:
    """The plain template: ``"\\n\\n{Role}: {content}"`` per message, then ``"\\n\\nAssistant:"``."""
    parts = [f"\n\n{PLAIN_ROLE_LABELS[message['role']]}: {message['content']}" for message in messages]
    return "".join(parts) + ASSISTANT_TURN


def format_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """Render ``prompt`` as the text the model continues (see the module docstring for the rules)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return render_plain(prompt)


def render_sft_example(messages: Sequence[Message], tokenizer: Any) -> tuple[str, str]:
    """Split a conversation ending in an assistant message into ``(prompt_text, response_text)``.

    ``prompt_text + response_text`` is the full training text; the loss goes on ``response_text``.
    With the plain template a prefix that is exactly one user message is used verbatim, like a string prompt
    (so ``{"instruction": "\\n\\nHuman: hi\\n\\nAssistant:", "response": " Hello"}`` trains on the very text that
    RM and PPO render for the same prompt). With a chat template the response text is what the template adds
    for the final assistant message (end-of-turn tokens included), falling back to the raw content.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant message")
    prefix, response = list(messages[:-1]), messages[-1]["content"]
    if has_chat_template(tokenizer):
        prompt_text = format_prompt(prefix, tokenizer)
        full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        if full_text.startswith(prompt_text):
            return prompt_text, full_text[len(prompt_text):]
        return prompt_text, response
    if len(prefix) == 1 and prefix[0]["role"] == "user":
        return prefix[0]["content"], response
    return render_plain(prefix), response
