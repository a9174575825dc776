"""Tiny random models of every common decoder architecture, built offline, as a new user's download would look.

``build_architecture_kit(out_dir, "qwen2")`` writes a randomly initialised model of that family with a byte-level
BPE tokenizer trained on the example data, saved with ``save_pretrained`` like a hub snapshot. Each is built the
way its family ships, quirks included, because those are what break pipelines:

- no pad token (pad falls back to EOS; only Qwen2's tokenizer class adds ``<|endoftext|>`` as pad, as it does for
  the real models), and a chat template in the family's style: Llama 3 headers with BOS in
  the template, ChatML with a default system prompt (Qwen), ``[INST]`` turns that must alternate (Mistral),
  Gemma 2 turns that reject a system message, Gemma 3 turns that fold it into the first user turn, Phi-3 and
  OpenAssistant-style GPT-NeoX templates that end a conversation with EOS themselves, and OPT, whose BOS *is* EOS;
- tokenizers that prepend BOS (Llama, Mistral, Gemma, Phi-3, OPT) or do not (Qwen, GPT-NeoX);
- attention as the family has it: grouped-query heads, sliding windows shorter than the test sequences (Mistral,
  Phi-3, Qwen2's upper layers, Gemma 2/3's alternating layers), Qwen3's per-head norms, Phi-3's fused ``qkv_proj``,
  GPT-NeoX's fused ``query_key_value`` with partial rotary embeddings and parallel residuals, OPT's learned
  positions.

``"tiny"`` models (a few hundred thousand parameters) are for the test suite; ``"small"`` (Llama about 60 M) for
benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfctl.example.kit import _FALLBACK_CORPUS, build_tokenizer, iter_corpus_texts


@dataclass(frozen=True)
class Shape:
    """Sizes shared by every family (each maps them onto its own config keys)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    window: int  # sliding-window length where the family has one (shorter than test sequences in "tiny")


SHAPES: dict[str, Shape] = {
    "tiny": Shape(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=1024, window=16),
    "small": Shape(hidden=640, layers=10, heads=10, kv_heads=5, intermediate=1728, vocab=8192, window=256),
}

_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
_GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_GEMMA3 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ prefix if loop.first else '' }}{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_PHI3 = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
_OASST = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<|prompter|>"
    "{% elif message['role'] == 'system' %}<|system|>{% else %}<|assistant|>{% endif %}"
    "{{ message['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_PLAIN_ROLES = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass(frozen=True)
class Architecture:
    """One decoder family: its transformers config class, tokens and chat template."""

    config_class: str  # a transformers class name
    special_tokens: dict[str, str]  # roles bos/eos/unk -> token (never "pad": these tokenizers have none)
    chat_template: str
    prepend_bos: bool
    extra_special_tokens: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # config keys the family needs beyond the shared ones

    def config(self, shape: Shape, *, vocab_size: int, bos_token_id: int | None, eos_token_id: int) -> Any:
        """The transformers config of this family at ``shape`` (no pad token id: the tokenizers have none)."""
        return _config_classes()[self.config_class](vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                            pad_token_id=None, **_family_keys(self.config_class, shape), **self.options)


def _config_classes() -> dict[str, Any]:
    """The transformers config class of each family, by name (a fixed table: no lookup of code by a string)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    return {cls.__name__: cls for cls in (LlamaConfig, Qwen2Config, Qwen3Config, MistralConfig, Gemma2Config,
                                          Gemma3TextConfig, Phi3Config, GPTNeoXConfig, OPTConfig)}


def _family_keys(config_class: str, shape: Shape) -> dict[str, Any]:
    """The shared sizes under each family's key names."""
    head_dim = shape.hidden // shape.heads
    if config_class == "GPTNeoXConfig":
        return {"hidden_size": shape.hidden, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
                "intermediate_size": shape.intermediate, "max_position_embeddings": 512}
    if config_class == "OPTConfig":
        return {"hidden_size": shape.hidden, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
                "ffn_dim": shape.intermediate, "word_embed_proj_dim": shape.hidden, "max_position_embeddings": 512}
    keys = {"hidden_size": shape.hidden, "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads, "intermediate_size": shape.intermediate,
            "max_position_embeddings": 512}
    if config_class in ("Qwen3Config", "Gemma2Config", "Gemma3TextConfig", "MistralConfig"):
        keys["head_dim"] = head_dim
    if config_class in ("MistralConfig", "Gemma2Config", "Gemma3TextConfig", "Qwen2Config", "Phi3Config"):
        keys["sliding_window"] = shape.window
    if config_class in ("Gemma2Config", "Gemma3TextConfig"):
        keys["query_pre_attn_scalar"] = head_dim
    return keys


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(
        "LlamaConfig", {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}, _LLAMA3, prepend_bos=True,
        extra_special_tokens=("<|start_header_id|>", "<|end_header_id|>")),
    "qwen2": Architecture(  # sliding window on the upper layer; transformers' Qwen2Tokenizer pads with <|endoftext|>
        "Qwen2Config", {"eos": "<|im_end|>"}, _CHATML, prepend_bos=False,
        extra_special_tokens=("<|im_start|>", "<|endoftext|>"),
        options={"use_sliding_window": True, "max_window_layers": 1}),
    "qwen3": Architecture(
        "Qwen3Config", {"eos": "<|im_end|>"}, _CHATML, prepend_bos=False,
        extra_special_tokens=("<|im_start|>", "<|endoftext|>")),
    "mistral": Architecture(
        "MistralConfig", {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}, _MISTRAL, prepend_bos=True),
    "gemma2": Architecture(
        "Gemma2Config", {"bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}, _GEMMA2, prepend_bos=True,
        extra_special_tokens=("<start_of_turn>", "<end_of_turn>")),
    "gemma3": Architecture(
        "Gemma3TextConfig", {"bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}, _GEMMA3, prepend_bos=True,
        extra_special_tokens=("<start_of_turn>", "<end_of_turn>"), options={"sliding_window_pattern": 2}),
    "phi3": Architecture(
        "Phi3Config", {"bos": "<s>", "eos": "<|endoftext|>", "unk": "<unk>"}, _PHI3, prepend_bos=True,
        extra_special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    "gpt_neox": Architecture(
        "GPTNeoXConfig", {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}, _OASST, prepend_bos=False,
        extra_special_tokens=("<|prompter|>", "<|assistant|>", "<|system|>"),
        options={"rotary_pct": 0.25, "use_parallel_residual": True, "tie_word_embeddings": False}),
    "opt": Architecture(  # BOS and EOS are the same token, and the tokenizer prepends it
        "OPTConfig", {"bos": "</s>", "eos": "</s>", "unk": "<unk>"}, _PLAIN_ROLES, prepend_bos=True),
}


def build_architecture_kit(out_dir: Path | str, architecture: str, *, corpus_files: Iterable[Path | str] = (),
                           preset: str = "tiny", seed: int = 0, shape: Shape | None = None,
                           chat_template: bool = True) -> Path:
    """A random ``architecture`` model (a key of :data:`ARCHITECTURES`) + its tokenizer, saved into ``out_dir``.

    ``shape`` overrides the preset's sizes; ``chat_template=False`` leaves the template out (prompts are then used
    as plain text, as by tools that apply no template to prompt/completion rows: the benchmarks compare so).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    family, shape = ARCHITECTURES[architecture], shape or SHAPES[preset]
    files = [Path(path) for path in corpus_files]
    texts = list(iter_corpus_texts(files)) if files else [_FALLBACK_CORPUS] * 4
    tokenizer = build_tokenizer(texts, shape.vocab, special_tokens=family.special_tokens,
                                extra_special_tokens=family.extra_special_tokens, prepend_bos=family.prepend_bos)
    if chat_template:
        tokenizer.chat_template = family.chat_template
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family.config(
        shape, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
