"""Prompt text rendering shared by every stage (SFT, RM and PPO see the same text for the same prompt).

A prompt is either a string or a list of ``{"role", "content"}`` messages (roles ``system``/``user``/
``assistant``).

- With a tokenizer that has a chat template, the template renders it (a string becomes one user message) and
  ``add_generation_prompt=True`` opens the assistant turn. A template that refuses system messages (Gemma 2,
  Mistral) gets the system text folded into the first user message.
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


def apply_chat_template(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    """``tokenizer.apply_chat_template(messages)`` as text. A template that refuses a system message (Gemma 2's
    "System role not supported", Mistral's strict user/assistant alternation) gets it folded into the first user
    message instead (``"{system}\n\n{user}"``); any other refusal is a UserError naming the roles."""
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        folded = fold_system_message(messages)
        if folded is not None:
            return apply_chat_template(tokenizer, folded, add_generation_prompt=add_generation_prompt)
        from rlhfctl.errors import UserError

        roles = ", ".join(message["role"] for message in messages)
        raise UserError(f"the tokenizer's chat template refuses a conversation with roles [{roles}]: {exc}",
                        hint="Check the data's message roles (they usually must alternate user/assistant).") from None


def fold_system_message(messages: Sequence[Message]) -> list[Message] | None:
    """``[system, user, ...]`` -> ``[user(system + "\n\n" + user), ...]``; None without a leading system message
    followed by a user message."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [first, *messages[2:]]


def format_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """Render ``prompt`` as the text the model continues (see the module docstring for the rules)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return render_plain(prompt)


def _end_at_eos(response_text: str, eos_token: str | None) -> str:
    """A template's turn that already ends in EOS (ChatML's ``<|im_end|>\n``) ends there: the response stops at
    EOS, with nothing to learn after it (and no second EOS is appended)."""
    if eos_token and response_text.rstrip().endswith(eos_token):
        return response_text.rstrip()
    return response_text


def render_sft_example(messages: Sequence[Message], tokenizer: Any) -> tuple[str, str]:
    """Split a conversation ending in an assistant message into ``(prompt_text, response_text)``.

    ``prompt_text + response_text`` is the full training text; the loss goes on ``response_text``.
    With the plain template a prefix that is exactly one user message is used verbatim, like a string prompt
    (so ``{"instruction": "\\n\\nHuman: hi\\n\\nAssistant:", "response": " Hello"}`` trains on the very text that
    RM and PPO render for the same prompt). With a chat template the response text is what the template adds
    for the final assistant message (end-of-turn tokens included; ending at EOS when the template writes it, as
    ChatML's ``<|im_end|>`` does), falling back to the raw content.
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example must end with an assistant message")
    prefix, response = list(messages[:-1]), messages[-1]["content"]
    if has_chat_template(tokenizer):
        prompt_text = format_prompt(prefix, tokenizer)
        full_text = apply_chat_template(tokenizer, messages, add_generation_prompt=False)
        if full_text.startswith(prompt_text):
            return prompt_text, _end_at_eos(full_text[len(prompt_text):], getattr(tokenizer, "eos_token", None))
        return prompt_text, response
    if len(prefix) == 1 and prefix[0]["role"] == "user":
        return prefix[0]["content"], response
    return render_plain(prefix), response
