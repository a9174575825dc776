"""Token-by-token sampling with a KV cache: transformers' ``generate`` distribution, less work per token.

:func:`decode` is what :func:`rlhfctl.models.generation.generate_responses` runs. Each step does what
``generate``'s sampling loop does (``transformers/generation/utils.py``, ``_sample``): the last position's logits
in fp32, transformers' own temperature / top-k / top-p warpers in ``generate``'s order, softmax, one draw from
that distribution, the padding token for rows that have stopped, and a stop once every row has. What is different
is the forward pass per token and the draw:

- **GPT-2 architectures** (:class:`Gpt2Decoder`): the model's own layers called directly, one pre-allocated KV cache
  written in place, no per-step mask building or generate bookkeeping. On the tiny example model (2 layers,
  overhead-bound) a step costs a fraction of ``generate``'s; on larger models, whose decode steps are bound by
  reading the weights, both converge.
- **any other causal LM** (:class:`ModelDecoder`): the model's own forward with a ``DynamicCache``, the positions
  and padding mask ``generate`` builds — the same logits as ``generate``, bit for bit — without ``generate``'s
  per-step overhead.
- **the draw** (:func:`sample_from`): the inverse CDF, one uniform number per row, instead of ``torch.multinomial``'s
  exponential race (one exponential number per row *and vocabulary entry*: ~20 ns each on a CPU, 5-100 ms a token for
  32 rows at a real tokenizer's 8 k-152 k vocabulary, more than a small model's forward). The same distribution,
  so not the same tokens as ``generate`` for a seed; the tests check the loop token for token against ``generate``
  with ``generate``'s draw put in, and the draw against the distribution.

Both also return each sampled token's log-probability under the temperature (from the logits the token was drawn
from), which PPO would otherwise recompute with a forward pass over every sequence.

``repeats`` (GRPO's groups): each prompt is run through the model once and its cache and last logits copied to its
``repeats`` rows, instead of encoding every copy; the sampling that follows is the same, draw for draw (the random
numbers are drawn per token over the whole batch, as before).

Only imported by code that already runs torch.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Decoded(NamedTuple):
    tokens: torch.Tensor  # (batch, steps) sampled ids; pad_token_id after a row's stop token
    logprobs: torch.Tensor  # (batch, steps) log-prob of each token under the temperature; 0 after the stop token


# Tokens per block of the two-level inverse CDF: a running sum over a whole 152 k vocabulary in fp32 loses up to
# ~1e-3 of the probability mass to rounding (the total variation to the exact distribution, measured); summed a block
# at a time, the rounding is relative to the block's mass instead of to 1.
SAMPLE_BLOCK = 1024


def sample_from(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row of ``probs`` ``(batch, vocab)`` (non-negative, any positive total) -> ``(batch,)``.

    Inverse CDF in two levels: a uniform number picks a block of :data:`SAMPLE_BLOCK` tokens by the blocks' masses
    (their running sum in float64), then a token inside the block by the block's own running sum. Tokens of
    probability 0 are never drawn. Consumes ``batch`` uniform numbers of the default generator per call.
    """
    probs = probs.float()
    batch, vocab = probs.shape
    if vocab <= SAMPLE_BLOCK:
        return _inverse_cdf(probs, torch.rand(batch, 1, device=probs.device)).squeeze(1)
    whole = vocab - vocab % SAMPLE_BLOCK
    block_mass = probs[:, :whole].view(batch, -1, SAMPLE_BLOCK).sum(-1)  # (batch, blocks)
    if whole < vocab:
        block_mass = torch.cat([block_mass, probs[:, whole:].sum(-1, keepdim=True)], dim=1)
    block_mass = block_mass.double()
    block_end = block_mass.cumsum(-1)  # (batch, blocks): the mass up to each block's end
    total = block_end[:, -1:]
    threshold = _below(torch.rand(batch, 1, device=probs.device, dtype=torch.float64) * total, total)
    # (batch, 1): the first block ending above it (clamped: a row of NaN, from a diverged model, still gets an id)
    block = torch.searchsorted(block_end, threshold, right=True).clamp_(max=block_end.shape[1] - 1)
    mass = block_mass.gather(1, block)
    into_block = (threshold - (block_end.gather(1, block) - mass)) / mass  # (batch, 1), in [0, 1)
    token_ids = block * SAMPLE_BLOCK + torch.arange(SAMPLE_BLOCK, device=probs.device)  # (batch, block)
    in_vocab = token_ids < vocab
    block_probs = probs.gather(1, token_ids.clamp(max=vocab - 1)) * in_vocab
    return token_ids.gather(1, _inverse_cdf(block_probs, into_block.float())).squeeze(1).clamp_(max=vocab - 1)


def multinomial_draw(probs: torch.Tensor) -> torch.Tensor:
    """The draw ``generate`` makes, ``torch.multinomial(probs, 1)``'s exponential race (``argmax(p / q)``,
    ``q ~ Exp(1)``) without its input check: put in place of :func:`sample_from` (the tests, bench_decode.py), the
    decoder samples ``generate``'s tokens for a seed."""
    return torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1)


def _inverse_cdf(probs: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """``(batch, n)`` probabilities, ``(batch, 1)`` fractions in [0, 1) -> ``(batch, 1)``: the index whose interval
    of the running sum holds ``fraction`` of the row's total (never an index of probability 0)."""
    running = probs.cumsum(-1)
    total = running[:, -1:]
    index = torch.searchsorted(running, _below(fraction.clamp(min=0) * total, total), right=True)
    return index.clamp_(max=probs.shape[1] - 1)


def _below(value: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``value`` kept strictly under ``total`` (a fraction just under 1, rounded up, would select past the end)."""
    return torch.minimum(value, torch.nextafter(total, torch.zeros_like(total)))


def logits_warpers(temperature: float, top_k: int, top_p: float) -> list[Any]:
    """transformers' warpers for ``do_sample``, in ``generate``'s order (``_get_logits_processor``)."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = []
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


@torch.no_grad()
def decode(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
           do_sample: bool, temperature: float, top_k: int, top_p: float, stop_ids: tuple[int, ...],
           pad_token_id: int, engine: str = "auto", repeats: int = 1) -> Decoded:
    """Sample up to ``max_new_tokens`` per left-padded prompt ``(prompts, prompt_len)``, ``repeats`` times each
    (consecutive rows of the result); ``model`` in eval mode.

    ``engine``: ``"auto"`` (:class:`Gpt2Decoder` where it applies, else :class:`ModelDecoder`) or ``"model"``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    device = prompt_ids.device
    batch = prompt_ids.shape[0] * repeats
    decoder = make_decoder(model, prompt_mask, max_new_tokens, engine)
    if repeats > 1 and not decoder.can_select:  # a cache whose rows cannot be copied: encode every copy
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.repeat_interleave(repeats, 0)
        decoder, repeats = make_decoder(model, prompt_mask, max_new_tokens, engine), 1
    warpers = logits_warpers(temperature, top_k, top_p) if do_sample else []
    # the temperature warper alone computes exactly ``logits / temperature``, so the distribution sampled from is
    # the one the log-probs are taken under: a token's log-prob is the log of its sampling probability
    only_temperature = len(warpers) == 1 and type(warpers[0]).__name__ == "TemperatureLogitsWarper"
    logprobs_from_probs = do_sample and (only_temperature or (not warpers and temperature == 1.0))
    stops = torch.tensor(stop_ids, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)  # the rows the decoder still computes
    tokens: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    logits = decoder.prefill(prompt_ids)  # (prompts, vocab) fp32
    if repeats > 1:  # every copy of a prompt starts from the prompt's one cache and last logits
        copies = torch.arange(prompt_ids.shape[0], device=device).repeat_interleave(repeats)
        decoder.select(copies)
        logits = logits[copies]
    for step in range(max_new_tokens):
        if len(active) < batch:  # rows that stopped get any valid distribution: their draw is replaced by padding
            logits = logits.new_zeros(batch, logits.shape[1]).index_copy_(0, active, logits)
        if do_sample:
            scores = logits
            for warper in warpers:
                scores = warper(None, scores)
            probs = F.softmax(scores, dim=-1)
            token = sample_from(probs)
        else:
            token = torch.argmax(logits, dim=-1)
        if logprobs_from_probs:
            chosen = probs.gather(1, token[:, None]).squeeze(1).log()
        else:
            scaled = logits / temperature
            chosen = scaled.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=-1)
        tokens.append(token)  # a stopped row's draws become padding at the end (_after_stop)
        logprobs.append(chosen)
        unfinished &= (token != stops) if len(stop_ids) == 1 else ~torch.isin(token, stops)
        still = unfinished[active] if len(active) < batch else unfinished
        remaining = int(still.sum())
        if step + 1 == max_new_tokens or remaining == 0:
            break
        if decoder.can_select and len(active) - remaining >= max(1, len(active) // COMPACT_FRACTION):
            active = active[still]
            decoder.select(still.nonzero().squeeze(1))
        logits = decoder.step(token if len(active) == batch else token[active])
    tokens_drawn, logprobs_drawn = torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)
    stopped = _after_stop(tokens_drawn, stops)
    return Decoded(tokens_drawn.masked_fill(stopped, pad_token_id), logprobs_drawn.masked_fill(stopped, 0.0))


def _after_stop(tokens: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """``(batch, steps)`` True where a row's stop token came at an earlier step: draws made for rows that had
    already stopped (the whole batch is drawn every step; once at the end instead of a ``where`` per step)."""
    is_stop = (tokens == stops) if stops.numel() == 1 else torch.isin(tokens, stops)
    return (is_stop.cumsum(dim=1) - is_stop.long()) > 0


# Rows that stopped are dropped from the forward once they are a quarter of the rows still computed (dropping
# copies the cache of the rows kept, so it is batched rather than done for every stopped row).
COMPACT_FRACTION = 4


def make_decoder(model: nn.Module, prompt_mask: torch.Tensor, max_new_tokens: int, engine: str = "auto"):
    if engine not in ("auto", "model"):
        raise ValueError(f"unknown decode engine {engine!r}")
    if engine == "auto" and Gpt2Decoder.supports(model):
        return Gpt2Decoder(model, prompt_mask, max_new_tokens)
    return ModelDecoder(model, prompt_mask)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """``generate``'s position ids: real tokens counted from 0, 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class ModelDecoder:
    """Any causal LM: its own forward, a ``DynamicCache``, and the position ids and growing 2-D padding mask that
    ``generate`` passes, so the logits are ``generate``'s."""

    def __init__(self, model: nn.Module, prompt_mask: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.model = model
        self.mask = prompt_mask.long()
        self.positions = _positions(self.mask)
        parameters = inspect.signature(model.forward).parameters
        self.cache_key = "cache" if "cache" in parameters else "past_key_values"  # transformers >= 5.2: "cache"
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
        self.cache = DynamicCache(config=model.config)
        self.can_select = hasattr(self.cache, "batch_select_indices")  # transformers >= 4.45

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        return self._forward(prompt_ids, self.positions)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(token[:, None], self.positions)

    def select(self, indices: torch.Tensor) -> None:
        """Compute the current rows ``indices`` from now on (an index may repeat: copies of a row)."""
        self.cache.batch_select_indices(indices)
        self.mask, self.positions = self.mask[indices], self.positions[indices]

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                            **{self.cache_key: self.cache}, **self.keep_last)
        return output.logits[:, -1].float()


class Gpt2Decoder:
    """GPT-2 architectures: the model's layers called in order on the new token only (embeddings, then per block
    ``ln_1`` -> ``attn.c_attn`` -> attention over a pre-allocated KV cache -> ``attn.c_proj`` -> ``ln_2`` -> ``mlp``,
    then ``ln_f`` and ``lm_head`` on the last position), as ``GPT2LMHeadModel.forward`` computes them in eval mode.

    Layers are called as modules, so wrapped ones (LoRA adapters, fused activations) run as they would in the
    model. The prompt is run through the same code once (causal + padding mask; a padding position attends to
    itself so no softmax row is empty).
    """

    def __init__(self, model: nn.Module, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
        self.model = model
        self.transformer = model.transformer
        self.blocks = list(self.transformer.h)
        batch, prompt_len = prompt_mask.shape
        first = self.blocks[0].attn
        self.heads, self.head_dim = first.num_heads, first.head_dim
        total = prompt_len + max_new_tokens
        weight = self.transformer.wte.weight
        shape = (batch, self.heads, total, self.head_dim)
        self.keys = [weight.new_zeros(shape) for _ in self.blocks]
        self.values = [weight.new_zeros(shape) for _ in self.blocks]
        self.key_mask = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(batch, max_new_tokens).bool()], dim=1)
        # what attention adds to the scores of a decode step, built once: the float form scaled_dot_product_attention
        # makes of a bool mask on every call (0 where a key may be read, -inf on padding)
        self.step_mask = torch.zeros(self.key_mask.shape, dtype=weight.dtype, device=weight.device).masked_fill_(
            ~self.key_mask, float("-inf"))[:, None, None, :]  # (batch, 1, 1, total)
        self.positions = _positions(prompt_mask)
        self.length = 0  # cache entries written
        self.can_select = True

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """A GPT-2 causal LM whose attention this class reproduces (no cross-attention, no fp32 upcast path)."""
        config = getattr(model, "config", None)
        transformer = getattr(model, "transformer", None)
        if config is None or getattr(config, "model_type", None) != "gpt2" or transformer is None:
            return False
        if getattr(config, "add_cross_attention", False) or getattr(config, "reorder_and_upcast_attn", False):
            return False
        if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
            return False
        parts = ("wte", "wpe", "h", "ln_f")
        block_parts = ("ln_1", "attn", "ln_2", "mlp")
        attention_parts = ("c_attn", "c_proj", "scaling", "num_heads", "head_dim")
        return (all(hasattr(transformer, name) for name in parts) and model.get_output_embeddings() is not None
                and all(hasattr(block, name) for block in transformer.h for name in block_parts)
                and all(hasattr(block.attn, name) for block in transformer.h for name in attention_parts))

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        prompt_len = prompt_ids.shape[1]
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=prompt_ids.device).tril()
        mask = causal & self.key_mask[:, None, :prompt_len]  # (batch, prompt_len, prompt_len)
        mask |= torch.eye(prompt_len, dtype=torch.bool, device=prompt_ids.device)  # padding attends to itself
        return self._forward(prompt_ids, self.positions, mask[:, None])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.positions = self.positions[:, -1:] + 1
        end = self.length + 1
        return self._forward(token[:, None], self.positions, self.step_mask[..., :end])

    def select(self, indices: torch.Tensor) -> None:
        """Compute the current rows ``indices`` from now on (an index may repeat: copies of a row)."""
        self.keys = [keys[indices] for keys in self.keys]
        self.values = [values[indices] for values in self.values]
        self.key_mask, self.positions = self.key_mask[indices], self.positions[indices]
        self.step_mask = self.step_mask[indices]

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``input_ids`` ``(batch, new)`` at ``positions`` -> fp32 logits of the last position ``(batch, vocab)``."""
        transformer = self.transformer
        batch, new = input_ids.shape
        start, end = self.length, self.length + new
        hidden = transformer.wte(input_ids) + transformer.wpe(positions)  # (batch, new, embed)
        for block, keys, values in zip(self.blocks, self.keys, self.values):
            attention = block.attn
            query, key, value = attention.c_attn(block.ln_1(hidden)).split(attention.split_size, dim=2)
            query = query.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            keys[:, :, start:end] = key.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            values[:, :, start:end] = value.view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            attended = F.scaled_dot_product_attention(query, keys[:, :, :end], values[:, :, :end], attn_mask=mask,
                                                      scale=attention.scaling)  # (batch, heads, new, head_dim)
            attended = attended.transpose(1, 2).reshape(batch, new, -1)
            hidden = attention.c_proj(attended) + hidden
            hidden = block.mlp(block.ln_2(hidden)) + hidden
        self.length = end
        last = transformer.ln_f(hidden[:, -1])  # (batch, embed)
        return self.model.get_output_embeddings()(last).float()
