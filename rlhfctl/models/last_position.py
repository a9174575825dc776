"""A reward model's final block, computed only where rewards are read (the last real token of a sequence).

A reward is the score head applied to the final hidden state at one position per sequence. Every block but the
last must run on all positions (later positions attend to them), and in the final block so must the keys and
values; but its queries, attention output, output projection, MLP and residuals are needed at the read positions
only. For a GPT-2 or Llama block that is about three quarters of the block's FLOPs: 9 % of a training step of the
benchmark's 8-layer model, a third of the 2-layer one (benchmarks/README.md). It is the same function, with the
same weights and formula, evaluated where it is read; tests compare scores and gradients with the full forward.

Inside :func:`final_block_at` the final block's output holds the full forward's values at the read positions (and
zeros elsewhere), so reading ``last_hidden_state`` there, as :func:`rlhfctl.models.scoring.scores_at` does,
gives exactly what the full forward gives. A row may have several read positions (a chosen and a rejected reply
packed behind their shared prompt, :mod:`rlhfctl.models.packing`).

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
def final_block_at(backbone, read_index, key_mask) -> Iterator[bool]:
    """Within the block, ``backbone``'s final block computes only at the positions that will be read.

    ``read_index`` ``(batch, reads)``: the positions read in each row; ``key_mask`` ``(batch, reads, seq)`` bool:
    the keys each of those queries attends in the full forward (:func:`read_key_mask`). The final block's output
    holds the right values at those positions and zeros elsewhere. The backbone must be called without a KV cache
    (``use_cache=False``). Yields whether the shortcut is in place (``False``: an unsupported block, which then
    runs its normal forward).
    """
    block = final_block(backbone)
    shortcut = _shortcut_for(block) if block is not None else None
    if shortcut is None:
        yield False
        return
    block.forward = functools.partial(shortcut, block, read_index, key_mask)
    try:
        yield True
    finally:
        del block.forward  # back to the class's forward


def read_key_mask(attention_mask, read_index):
    """The keys the queries at ``read_index`` ``(B, Q)`` attend: ``(B, Q, T)`` bool.

    ``attention_mask`` is what the backbone gets: a ``(B, T)`` 0/1 padding mask (causal attention implied) or a
    ``(B, 1, T, T)`` boolean mask (``True`` = attend), whose rows at the read positions are taken as they are.
    """
    import torch

    rows = torch.arange(read_index.shape[0], device=read_index.device)[:, None]  # (B, 1)
    if attention_mask.dim() == 4:
        return attention_mask[rows, 0, read_index]  # (B, Q, T)
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return attention_mask.bool()[:, None, :] & (positions <= read_index[:, :, None])


def final_block(backbone):
    """The last transformer block of a decoder backbone (``h`` for GPT-2, ``layers`` for Llama-style), or None."""
    import torch

    for name in ("h", "layers"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks):
            return blocks[-1]
    return None


def has_read_shortcut(block) -> bool:
    """Whether :func:`final_block_at` computes ``block`` at read positions only (else it runs in full)."""
    return _shortcut_for(block) is not None


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


def _attend_reads(attn, query, key, value, key_mask, dropout: float):
    """The read queries over their keys: query ``(B, H, Q, D)``, key/value ``(B, H_kv, T, D)`` -> ``(B, H, Q, D)``."""
    import torch.nn.functional as F

    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask[:, None], dropout_p=dropout,
                                          scale=attn.scaling)


def _scatter_reads(read_hidden, read_index, seq_len: int):
    """``(B, Q, d)`` values at ``read_index`` ``(B, Q)`` -> ``(B, T, d)``, zeros at the positions nobody reads.

    A position read twice in a row (identical chosen and rejected replies) is written once, so the gradient of
    both reads reaches the block once, as in the full forward.
    """
    import torch

    batch, reads, width = read_hidden.shape
    rows = torch.arange(batch, device=read_hidden.device)[:, None].expand(-1, reads)  # (B, Q)
    order = torch.arange(reads, device=read_hidden.device)
    earlier_same = (read_index[:, :, None] == read_index[:, None, :]) & (order[None, None, :] < order[None, :, None])
    first = ~earlier_same.any(dim=-1)  # (B, Q): this read's position was not read before in its row
    scattered = read_hidden.new_zeros(batch, seq_len, width)
    return scattered.index_put((rows[first], read_index[first]), read_hidden[first])


def _gpt2_block_at(block, read_index, key_mask, hidden_states, past_key_values=None, attention_mask=None,
                   *args, **kwargs):
    """``GPT2Block.forward`` at the read positions only. hidden_states ``(B, T, d)``, read_index ``(B, Q)``."""
    _check_plain_call(block, past_key_values, {"encoder_hidden_states": args[0] if args else None, **kwargs})
    import torch

    attn = block.attn
    batch, seq_len, width = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)[:, None]  # (B, 1)
    reads = read_index.shape[1]
    query, key, value = attn.c_attn(block.ln_1(hidden_states)).split(attn.split_size, dim=2)  # (B, T, d) each
    heads = (batch, -1, attn.num_heads, attn.head_dim)
    query = query[rows, read_index].view(heads).transpose(1, 2)  # (B, H, Q, D)
    key, value = key.view(heads).transpose(1, 2), value.view(heads).transpose(1, 2)  # (B, H, T, D)
    dropout = attn.attn_dropout.p if attn.training else 0.0
    attended = _attend_reads(attn, query, key, value, key_mask, dropout).transpose(1, 2).reshape(batch, reads, width)
    hidden = hidden_states[rows, read_index] + attn.resid_dropout(attn.c_proj(attended))  # (B, Q, d)
    hidden = hidden + block.mlp(block.ln_2(hidden))
    return _scatter_reads(hidden, read_index, seq_len)


def _rope_block_at(block, read_index, key_mask, hidden_states, attention_mask=None, position_ids=None,
                   past_key_values=None, use_cache=False, position_embeddings=None, **kwargs):
    """``LlamaDecoderLayer.forward`` (and Qwen2's) at the read positions only. hidden_states ``(B, T, d)``."""
    _check_plain_call(block, past_key_values, kwargs)
    import torch

    attn = block.self_attn
    batch, seq_len, _ = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)[:, None]  # (B, 1)
    reads = read_index.shape[1]
    normed = block.input_layernorm(hidden_states)  # (B, T, d)
    query = attn.q_proj(normed[rows, read_index]).view(batch, reads, -1, attn.head_dim).transpose(1, 2)  # (B, H, Q, D)
    kv_shape = (batch, seq_len, -1, attn.head_dim)
    key = attn.k_proj(normed).view(kv_shape).transpose(1, 2)  # (B, H_kv, T, D)
    value = attn.v_proj(normed).view(kv_shape).transpose(1, 2)
    cos, sin = (part.expand(batch, -1, -1) for part in position_embeddings)  # (B, T, D) each
    rotate_half = sys.modules[type(block).__module__].rotate_half  # the model's own RoPE helper
    # apply_rotary_pos_emb's formula: each query at its own position, the keys at theirs.
    cos_read, sin_read = cos[rows, read_index][:, None], sin[rows, read_index][:, None]  # (B, 1, Q, D)
    query = query * cos_read + rotate_half(query) * sin_read
    key = key * cos[:, None] + rotate_half(key) * sin[:, None]
    dropout = attn.attention_dropout if attn.training else 0.0
    attended = _attend_reads(attn, query, key, value, key_mask, dropout).transpose(1, 2).reshape(batch, reads, -1)
    hidden = hidden_states[rows, read_index] + attn.o_proj(attended)  # (B, Q, d)
    hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
    return _scatter_reads(hidden, read_index, seq_len)
