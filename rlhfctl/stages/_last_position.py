"""A reward model's final block, computed only where the reward is read: the last real token of each row.

A reward is the score head applied to the final hidden state at one position per row. Every block but the last
must run on all positions (later positions attend to them), and in the final block so must the keys and values;
but its queries, attention output, output projection, MLP and residuals are needed at that one position only.
For a GPT-2 or Llama block that is about three quarters of the block's FLOPs: 9 % of a training step of the
benchmark's 8-layer model, a third of the 2-layer one (benchmarks/README.md). It is the same function, with the
same weights and formula, evaluated where it is read; tests compare scores and gradients with the full forward.

Inside :func:`final_block_at_last_tokens` the final block's output has every position of a row set to the value
at that row's last real token (an expanded view), so anything that reads ``last_hidden_state`` at the last real
token, as :func:`rlhfctl.stages._modeling.make_scorer` does, gets exactly what the full forward gives.

Supported (transformers 5): ``GPT2Block`` (self-attention, without ``reorder_and_upcast_attn``),
``LlamaDecoderLayer`` and ``Qwen2DecoderLayer`` (without a sliding window). Any other block runs its own forward.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

_GPT2 = ("transformers.models.gpt2.modeling_gpt2", "GPT2Block")
_ROPE_LAYERS = {("transformers.models.llama.modeling_llama", "LlamaDecoderLayer"),
                ("transformers.models.qwen2.modeling_qwen2", "Qwen2DecoderLayer")}


@contextlib.contextmanager
def final_block_at_last_tokens(backbone, attention_mask, last_index) -> Iterator[bool]:
    """Within the block, ``backbone``'s final block computes only at each row's last real token.

    ``attention_mask`` is the ``(batch, seq)`` 0/1 mask the backbone is called with (right or left padding),
    ``last_index`` ``(batch,)`` the position read in each row (``rm_math.last_token_index``, or any position: its
    query attends causally, as in the full forward). The backbone must be called without a KV cache
    (``use_cache=False``). Yields whether the shortcut is in place (``False``: an unsupported block, which then
    runs its normal forward).
    """
    block = final_block(backbone)
    shortcut = _shortcut_for(block) if block is not None else None
    if shortcut is None:
        yield False
        return
    import torch

    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    key_mask = attention_mask.bool() & (positions <= last_index[:, None])  # (B, T): what the query may attend
    block.forward = functools.partial(shortcut, block, last_index, key_mask)
    try:
        yield True
    finally:
        del block.forward  # back to the class's forward


def final_block(backbone):
    """The last transformer block of a decoder backbone (``h`` for GPT-2, ``layers`` for Llama-style), or None."""
    import torch

    for name in ("h", "layers"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks[-1]
    return None


def _shortcut_for(block) -> Callable[..., Any] | None:
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:  # blocks returned tuples before transformers 5
        return None
    kind = (type(block).__module__, type(block).__name__)
    if kind == _GPT2:
        attn = block.attn
        if attn.is_cross_attention or attn.reorder_and_upcast_attn or not hasattr(attn, "scaling"):
            return None
        return _gpt2_block_at
    if kind in _ROPE_LAYERS:
        attn = block.self_attn
        if getattr(attn, "sliding_window", None) is not None or not hasattr(attn, "scaling"):
            return None
        return _rope_block_at
    return None


def _check_plain_call(block, past_key_values, kwargs) -> None:
    if past_key_values is not None or kwargs.get("encoder_hidden_states") is not None:
        raise RuntimeError(f"{type(block).__name__}: the last-token shortcut needs a call without KV cache or "
                           "cross-attention (use_cache=False)")


def _broadcast_rows(last_hidden, seq_len: int):
    """``(batch, hidden)`` -> ``(batch, seq, hidden)``, every position holding its row's value (a view)."""
    return last_hidden[:, None, :].expand(-1, seq_len, -1)


def _attend_last(attn, query, key, value, key_mask, dropout: float):
    """One query per row over that row's real tokens: query ``(B, H, 1, D)``, key/value ``(B, H_kv, T, D)``."""
    import torch.nn.functional as F

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    mask = key_mask[:, None, None, :]  # (B, 1, 1, T)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                          scale=attn.scaling)  # (B, H, 1, D)


def _gpt2_block_at(block, last_index, key_mask, hidden_states, past_key_values=None, attention_mask=None,
                   *args, **kwargs):
    """``GPT2Block.forward`` at the last real tokens only. hidden_states ``(B, T, d)``."""
    _check_plain_call(block, past_key_values, {"encoder_hidden_states": args[0] if args else None, **kwargs})
    import torch

    attn = block.attn
    batch, seq_len, width = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)
    qkv = attn.c_attn(block.ln_1(hidden_states))  # (B, T, 3d)
    query, key, value = qkv.split(attn.split_size, dim=2)
    heads = (batch, -1, attn.num_heads, attn.head_dim)
    query = query[rows, last_index].view(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, D)
    key, value = key.view(heads).transpose(1, 2), value.view(heads).transpose(1, 2)  # (B, H, T, D)
    dropout = attn.attn_dropout.p if attn.training else 0.0
    attended = _attend_last(attn, query, key, value, key_mask, dropout).reshape(batch, width)
    hidden = hidden_states[rows, last_index] + attn.resid_dropout(attn.c_proj(attended))  # (B, d)
    hidden = hidden + block.mlp(block.ln_2(hidden))
    return _broadcast_rows(hidden, seq_len)


def _rope_block_at(block, last_index, key_mask, hidden_states, attention_mask=None, position_ids=None,
                   past_key_values=None, use_cache=False, position_embeddings=None, **kwargs):
    """``LlamaDecoderLayer.forward`` (and Qwen2's) at the last real tokens only. hidden_states ``(B, T, d)``."""
    _check_plain_call(block, past_key_values, kwargs)
    import torch

    attn = block.self_attn
    batch, seq_len, _ = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)
    normed = block.input_layernorm(hidden_states)  # (B, T, d)
    query = attn.q_proj(normed[rows, last_index]).view(batch, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, D)
    kv_shape = (batch, seq_len, -1, attn.head_dim)
    key = attn.k_proj(normed).view(kv_shape).transpose(1, 2)  # (B, H_kv, T, D)
    value = attn.v_proj(normed).view(kv_shape).transpose(1, 2)
    cos, sin = (part.expand(batch, -1, -1) for part in position_embeddings)  # (B, T, D) each
    rotate_half = sys.modules[type(block).__module__].rotate_half  # the model's own RoPE helper
    # apply_rotary_pos_emb's formula; the query at its own position, the keys at theirs.
    cos_last, sin_last = cos[rows, last_index][:, None, None], sin[rows, last_index][:, None, None]  # (B, 1, 1, D)
    query = query * cos_last + rotate_half(query) * sin_last
    key = key * cos[:, None] + rotate_half(key) * sin[:, None]
    dropout = attn.attention_dropout if attn.training else 0.0
    attended = _attend_last(attn, query, key, value, key_mask, dropout).reshape(batch, -1)
    hidden = hidden_states[rows, last_index] + attn.o_proj(attended)  # (B, d)
    hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
    return _broadcast_rows(hidden, seq_len)
