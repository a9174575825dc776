"""A reward model's final block, computed only where rewards are read (the last real token of a sequence).

A reward is the score head applied to the final hidden state at one position per sequence. Every block but the
last must run on all positions (later positions attend to them), and in the final block so must the keys and
values; but its queries, attention output, output projection, MLP and residuals are needed at the read positions
only. For a GPT-2 or Llama block that is about three quarters of the block's FLOPs: 9 % of a training step of the
benchmark's 8-layer model, a third of the 2-layer one (benchmarks/README.md). It is the same function, with the
same weights and formula, evaluated where it is read; tests compare scores and gradients with the full forward
for every architecture of the offline kit.

Inside :func:`final_block_at` the final block's output holds the full forward's values at the read positions (and
zeros elsewhere), so reading ``last_hidden_state`` there, as :func:`rlhfctl.models.scoring.scores_at` does,
gives exactly what the full forward gives. A row may have several read positions (a chosen and a rejected reply
packed behind their shared prompt, :mod:`rlhfctl.models.packing`).

Supported (transformers 5): ``GPT2Block`` (self-attention, without ``reorder_and_upcast_attn``) and the Llama
family's pre-norm rotary blocks: Llama, Mistral, Qwen2, Qwen3 (per-head query/key norms) and Phi-3 (fused
``qkv_proj``, partial rotary embeddings). A sliding window in the final block (Mistral, Phi-3, Qwen2/3's upper
layers) limits the keys a read query attends, as transformers' own mask does for a padding mask; a custom 4-D mask
is used as given (transformers ignores windows for one too, which is why packing is refused for models with a
sliding window: :func:`has_sliding_window`). Any other block (Gemma 2/3, GPT-NeoX, OPT, ...) runs its own forward.
The shortcut block is not checkpointed under gradient checkpointing (transformers checkpoints the class's forward;
the shortcut replaces the instance's), which costs little: it keeps activations at the read positions only.
LoRA-adapted projections (peft layers in place of the linear ones) are called like the originals.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

_GPT2 = ("transformers.models.gpt2.modeling_gpt2", "GPT2Block")
_ROPE_LAYERS = {(f"transformers.models.{family}.modeling_{family}", f"{name}DecoderLayer")
                for family, name in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"),
                                     ("phi3", "Phi3"))}


@contextlib.contextmanager
def final_block_at(backbone, read_index, attention_mask) -> Iterator[bool]:
    """Within the block, ``backbone``'s final block computes only at the positions that will be read.

    ``read_index`` ``(batch, reads)``: the positions read in each row; ``attention_mask``: what the backbone will
    be called with (a ``(batch, seq)`` padding mask or a ``(batch, 1, seq, seq)`` boolean mask). The final block's
    output holds the right values at those positions and zeros elsewhere. The backbone must be called without a KV
    cache (``use_cache=False``). Yields whether the shortcut is in place (``False``: an unsupported block, which
    then runs its normal forward).
    """
    block = final_block(backbone)
    shortcut = _shortcut_for(block) if block is not None else None
    if shortcut is None:
        yield False
        return
    window = sliding_window(block) if attention_mask.dim() == 2 else None  # a 4-D mask is used as given
    key_mask = read_key_mask(attention_mask, read_index, window)
    block.forward = functools.partial(shortcut, block, read_index, key_mask)
    try:
        yield True
    finally:
        del block.forward  # back to the class's forward


def read_key_mask(attention_mask, read_index, window: int | None = None):
    """The keys the queries at ``read_index`` ``(B, Q)`` attend: ``(B, Q, T)`` bool.

    ``attention_mask`` is what the backbone gets: a ``(B, T)`` 0/1 padding mask (causal attention implied, and
    with a sliding ``window`` only the keys less than ``window`` tokens back, as transformers' mask has it) or a
    ``(B, 1, T, T)`` boolean mask (``True`` = attend), whose rows at the read positions are taken as they are.
    """
    import torch

    rows = torch.arange(read_index.shape[0], device=read_index.device)[:, None]  # (B, 1)
    if attention_mask.dim() == 4:
        return attention_mask[rows, 0, read_index]  # (B, Q, T)
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    visible = positions <= read_index[:, :, None]  # (B, Q, T): causal
    if window is not None:
        visible = visible & (positions > read_index[:, :, None] - window)
    return attention_mask.bool()[:, None, :] & visible


def _attention(block):
    for name in ("self_attn", "attn", "attention"):
        module = getattr(block, name, None)
        if module is not None:
            return module
    return None


def sliding_window(block) -> int | None:
    """The sliding-window length of ``block``'s self-attention, or None: a per-layer attribute (Qwen2/3, Gemma 2/3
    set it on their sliding layers only) or, for families that apply it in every layer, the config's (Mistral,
    Phi-3)."""
    attn = _attention(block)
    if attn is None:
        return None
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(getattr(attn, "config", None), "sliding_window", None)


def has_sliding_window(backbone) -> bool:
    """Whether any block of ``backbone`` attends through a sliding window."""
    import torch

    for name in ("h", "layers"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return any(sliding_window(block) is not None for block in blocks)
    return False


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
        return _rope_block_at if hasattr(block.self_attn, "scaling") else None
    return None


def _check_plain_call(block, past_key_values, kwargs) -> None:
    if (past_key_values is not None or kwargs.get("cache") is not None
            or kwargs.get("encoder_hidden_states") is not None):
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
    """``LlamaDecoderLayer.forward`` (and Mistral's, Qwen2's, Qwen3's, Phi-3's) at the read positions only.
    hidden_states ``(B, T, d)``."""
    _check_plain_call(block, past_key_values, kwargs)
    import torch

    attn = block.self_attn
    batch, seq_len, _ = hidden_states.shape
    rows = torch.arange(batch, device=hidden_states.device)[:, None]  # (B, 1)
    reads = read_index.shape[1]
    normed = block.input_layernorm(hidden_states)  # (B, T, d)
    query, key, value = _project_qkv(attn, normed, normed[rows, read_index])  # (B, Q, H, D), (B, T, H_kv, D) x2
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
        query, key = attn.q_norm(query), attn.k_norm(key)
    query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # heads first
    cos, sin = (part.expand(batch, -1, -1) for part in position_embeddings)  # (B, T, R) each
    # apply_rotary_pos_emb's formula: each query at its own position, the keys at theirs (the first R dims rotate).
    query = _rotate(block, query, cos[rows, read_index][:, None], sin[rows, read_index][:, None])
    key = _rotate(block, key, cos[:, None], sin[:, None])
    dropout = attn.attention_dropout if attn.training else 0.0
    attended = _attend_reads(attn, query, key, value, key_mask, dropout).transpose(1, 2).reshape(batch, reads, -1)
    residual_dropout = getattr(block, "resid_attn_dropout", None) or (lambda tensor: tensor)  # Phi-3
    hidden = hidden_states[rows, read_index] + residual_dropout(attn.o_proj(attended))  # (B, Q, d)
    mlp_dropout = getattr(block, "resid_mlp_dropout", None) or (lambda tensor: tensor)
    hidden = hidden + mlp_dropout(block.mlp(block.post_attention_layernorm(hidden)))
    return _scatter_reads(hidden, read_index, seq_len)


def _project_qkv(attn, normed, normed_reads):
    """Queries at the read positions, keys and values everywhere, split into heads of ``attn.head_dim``."""
    batch, seq_len, _ = normed.shape
    head_dim = attn.head_dim
    if hasattr(attn, "qkv_proj"):  # Phi-3: one fused projection (the keys and values need every position anyway)
        query_width = attn.config.num_attention_heads * head_dim
        kv_width = attn.num_key_value_heads * head_dim
        query = attn.qkv_proj(normed_reads)[..., :query_width]
        key_value = attn.qkv_proj(normed)[..., query_width:]
        key, value = key_value[..., :kv_width], key_value[..., kv_width:]
    else:
        query, key, value = attn.q_proj(normed_reads), attn.k_proj(normed), attn.v_proj(normed)
    return (query.view(batch, normed_reads.shape[1], -1, head_dim), key.view(batch, seq_len, -1, head_dim),
            value.view(batch, seq_len, -1, head_dim))


def _rotate(block, states, cos, sin):
    """The model's rotary embedding on ``states`` ``(B, H, N, D)``: its first ``cos.shape[-1]`` dims rotate."""
    rotate_half = sys.modules[type(block).__module__].rotate_half  # the model's own helper
    rotary = cos.shape[-1]
    if rotary == states.shape[-1]:
        return states * cos + rotate_half(states) * sin
    import torch

    turned, kept = states[..., :rotary], states[..., rotary:]
    return torch.cat([turned * cos + rotate_half(turned) * sin, kept], dim=-1)
