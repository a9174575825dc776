"""Prompt rendering: the plain template and the chat-template path."""

from __future__ import annotations

import pytest

from rlhfctl.data.prompting import format_prompt, render_sft_example


class PlainTokenizer:
    chat_template = None


class TemplateTokenizer:
    """Mimics a chat template: records the call and renders <|role|>content lines."""

    chat_template = "{% for m in messages %}...{% endfor %}"

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict], bool]] = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False
        self.calls.append((messages, add_generation_prompt))
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")


def test_string_prompt_is_used_verbatim_without_template():
    prompt = "\n\nHuman: How do I keep my plants healthy?\n\nAssistant:"
    assert format_prompt(prompt, PlainTokenizer()) == prompt
    assert format_prompt(prompt, None) == prompt


def test_message_list_renders_with_plain_template():
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tea or coffee?"},
    ]
    assert format_prompt(messages, PlainTokenizer()) == (
        "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tea or coffee?\n\nAssistant:"
    )


def test_chat_template_used_with_generation_prompt():
    tokenizer = TemplateTokenizer()
    assert format_prompt("Hi", tokenizer) == "<|user|>Hi<|end|><|assistant|>"
    assert tokenizer.calls == [([{"role": "user", "content": "Hi"}], True)]


def test_sft_example_single_user_message_is_verbatim_like_a_string_prompt():
    prompt = "\n\nHuman: Hi\n\nAssistant:"
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " Sure! Happy to help."}]
    assert render_sft_example(messages, PlainTokenizer()) == (prompt, " Sure! Happy to help.")
    assert format_prompt(prompt, PlainTokenizer()) == render_sft_example(messages, None)[0]


def test_sft_example_multi_turn_plain_and_template():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": " A"},
    ]
    assert render_sft_example(messages, None) == ("\n\nSystem: S\n\nHuman: Q\n\nAssistant:", " A")
    prompt_text, response_text = render_sft_example(messages, TemplateTokenizer())
    assert prompt_text == "<|system|>S<|end|><|user|>Q<|end|><|assistant|>"
    # the response text is what the template adds for the final turn, end-of-turn marker included
    assert response_text == " A<|end|>"


def test_sft_example_must_end_with_assistant():
    with pytest.raises(ValueError):
        render_sft_example([{"role": "user", "content": "Q"}], None)
