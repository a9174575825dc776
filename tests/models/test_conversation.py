"""SFT examples as token ids: conversations rendered and tokenised (plain or chat template), batches padded."""

from __future__ import annotations

import pytest

from rlhfctl.models.conversation import collate, tokenize_conversation
from rlhfctl.objectives.sft import IGNORE_INDEX, TokenizedExample

EOS = 9
PAD = 0


def test_collate_pads_to_the_longest_example_of_the_batch():
    batch = collate(
        [
            TokenizedExample([5, 3, EOS], [IGNORE_INDEX, 3, EOS], 0, 0),
            TokenizedExample([5, 6, 7, 3, EOS], [IGNORE_INDEX] * 3 + [3, EOS], 0, 0),
        ],
        pad_token_id=PAD,
    )
    assert batch["input_ids"].tolist() == [[5, 3, EOS, PAD, PAD], [5, 6, 7, 3, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 3, EOS, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, EOS],
    ]


@pytest.fixture(scope="module")
def plain_tokenizer():
    from rlhfctl.example.kit import build_tokenizer

    corpus = ["\n\nHuman: How do I keep warm?\n\nAssistant: Thank you for asking! Wear a hat."] * 20
    return build_tokenizer(corpus, vocab_size=300)


def test_tokenize_conversation_masks_the_plain_template_prompt(plain_tokenizer):
    prompt = "\n\nHuman: How do I keep warm?\n\nAssistant:"
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " Wear a hat."}]
    example = tokenize_conversation(messages, plain_tokenizer, max_length=128)
    prompt_ids = plain_tokenizer(prompt)["input_ids"]
    response_ids = plain_tokenizer(" Wear a hat.", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + response_ids + [plain_tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [plain_tokenizer.eos_token_id]
    scored = [token for token in example.labels if token != IGNORE_INDEX]
    assert plain_tokenizer.decode(scored, skip_special_tokens=True) == " Wear a hat."


def test_tokenize_conversation_uses_the_chat_template_when_there_is_one(plain_tokenizer):
    tokenizer = plain_tokenizer.__class__(tokenizer_object=plain_tokenizer.backend_tokenizer,
                                          eos_token=plain_tokenizer.eos_token, pad_token=plain_tokenizer.pad_token)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    example = tokenize_conversation(messages, tokenizer, max_length=128)
    prompt_len = len(tokenizer("<user>Hi<assistant>", add_special_tokens=False)["input_ids"])
    assert tokenizer.decode(example.input_ids[:prompt_len]) == "<user>Hi<assistant>"
    assert all(label == IGNORE_INDEX for label in example.labels[:prompt_len])
    # the template's own end-of-turn (here EOS) closes the response; EOS is not doubled
    assert tokenizer.decode(example.labels[prompt_len:]) == "Hello" + tokenizer.eos_token
