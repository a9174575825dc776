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


class StrictTemplateTokenizer(TemplateTokenizer):
    """Like Gemma 2's template: no system role."""

    eos_token = "<eos>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        from jinja2.exceptions import TemplateError

        if messages[0]["role"] == "system":
            raise TemplateError("System role not supported")
        if messages[-1]["role"] == "assistant" and not add_generation_prompt:
            return super().apply_chat_template(messages[:-1], add_generation_prompt=True) + \
                f"{messages[-1]['content']}<eos>\n"
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def test_a_template_without_system_role_gets_the_system_text_in_the_first_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert format_prompt(messages, StrictTemplateTokenizer()) == format_prompt(
        [{"role": "user", "content": "Be brief.\n\nHi"}], TemplateTokenizer())


def test_a_template_response_that_writes_eos_ends_there():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompt, response = render_sft_example(messages, StrictTemplateTokenizer())
    assert response == "Hello<eos>"  # not "Hello<eos>\n": nothing after EOS, and no second EOS appended


def test_a_conversation_no_template_accepts_is_a_user_error():
    from rlhfctl.errors import UserError

    with pytest.raises(UserError, match=r"roles \[assistant, user\]"):
        format_prompt([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
                      type("Refusing", (StrictTemplateTokenizer,), {"apply_chat_template": _refuse})())


def _refuse(self, messages, tokenize=False, add_generation_prompt=False):
    from jinja2.exceptions import TemplateError

    raise TemplateError("Conversation roles must alternate")
