"""PPO experience: scoring generated responses and the no-grad forwards that make a rollout batch.

A rollout batch is built in three phases, each timed separately by the caller:

1. **generate** — :func:`rlhfctl.models.generation.generate_responses`;
2. **score** — the reward model's score at the last real token, then missing-EOS penalty / clipping /
   normalisation (:func:`score_sequences`);
3. **forwards** — one no-grad forward each of reference and value model over prompt + response, keeping only the
   chosen tokens' log-probs and the per-token values (:func:`collect_rollout`); the policy's log-probs come from
   the decoder, which computed them from the logits it sampled from (a policy forward only without them).

Only imported by code that already runs torch (the PPO worker loop and ``ppo sample``), so torch is imported at the
top here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from rlhfctl.models.generation import Generation
from rlhfctl.models.packing import (
    group_last_positions,
    group_predictor_positions,
    pack_groups,
    packing_pays,
    packing_supported,
)
from rlhfctl.models.scoring import TokenScoreModel, position_ids_from_mask
from rlhfctl.objectives import ppo as ppo_objective


def policy_logprobs(
    policy: nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    *,
    return_entropy: bool = False,
    entropy_grad: bool = False,
    group_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``(batch, response_len)`` of the response tokens (and optionally the per-token entropy, with
    gradients only when ``entropy_grad``). The full-vocabulary logits live only inside this call, and only for the
    positions that score a response token when the model takes ``logits_to_keep`` (the LM head skips the prompt).

    ``group_size`` > 1: every run of that many consecutive rows holds completions of one prompt (GRPO's groups);
    where :func:`packs_groups` says the model takes it and it costs less (:func:`rlhfctl.models.packing.
    packing_pays`), each group is one packed row with its prompt computed once (:func:`rlhfctl.models.packing.
    pack_groups`): the same values, per completion, as its own row gives.
    """
    response_len = query_responses.shape[1] - prompt_len
    if group_size > 1 and packs_groups(policy) and packing_pays(prompt_len, response_len, group_size,
                                                                _causal_lm(policy).config.hidden_size):
        packed = pack_groups(query_responses, attention_mask, prompt_len, group_size)
        reads = group_predictor_positions(prompt_len, response_len, group_size, query_responses.device)
        logits = policy(**packed, use_cache=False, logits_to_keep=reads).logits  # (groups, G * R, vocab)
        logits = logits.reshape(query_responses.shape[0], response_len, -1)  # row i: its tokens' predictors
        first = 0  # the position whose logits score the first response token
    else:
        keep = {}
        if accepts_logits_to_keep(policy):
            keep = {"logits_to_keep": query_responses.shape[1] - prompt_len + 1}  # positions prompt_len - 1 .. end
        logits = policy(
            input_ids=query_responses,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            **keep,
        ).logits  # (batch, seq, vocab), or (batch, response_len + 1, vocab) from position prompt_len - 1
        first = prompt_len - 1 if not keep else 0
    tokens = query_responses[:, prompt_len - 1 - first:]  # the tokens those logits score, after ``first + 1``
    if return_entropy:  # one normaliser for both
        return ppo_objective.logprobs_and_entropy_from_logits(logits, tokens, first + 1, temperature,
                                                              entropy_grad=entropy_grad)
    return ppo_objective.logprobs_from_logits(logits, tokens, first + 1, temperature), None


def packs_groups(model: nn.Module) -> bool:
    """Whether ``model`` (a causal LM, through DDP, peft and
    :class:`rlhfctl.models.adapters.WithoutAdapters`) takes GRPO groups packed behind their shared prompt: it
    takes ``logits_to_keep`` and its architecture takes a packed 4-D mask (:func:`rlhfctl.models.packing.
    packing_supported`: GPT-2 and the Llama family on transformers 5, no sliding window; not under FSDP, whose
    wrapped block classes it does not know)."""
    return accepts_logits_to_keep(model) and packing_supported(_causal_lm(model))


def _causal_lm(model):
    """The transformers model inside DDP, peft and :class:`rlhfctl.models.adapters.WithoutAdapters` wrappers."""
    inner = getattr(model, "module", model)
    while hasattr(inner, "get_base_model") and inner.get_base_model() is not inner:
        inner = inner.get_base_model()
    return inner


_KEEPS_LOGITS: dict[type, bool] = {}


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM inside ``model`` (through DDP's ``.module`` and ``get_base_model()``: peft's, and
    :class:`rlhfctl.models.adapters.WithoutAdapters`', the LoRA reference policy) takes transformers'
    ``logits_to_keep`` argument."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    kind = type(inner)
    if kind not in _KEEPS_LOGITS:
        try:  # a plain callable wrapper (no forward) is called as it is
            parameters = inspect.signature(getattr(inner, "forward", inner)).parameters
        except (TypeError, ValueError):
            parameters = {}
        _KEEPS_LOGITS[kind] = "logits_to_keep" in parameters
    return _KEEPS_LOGITS[kind]


def response_values(
    value_model: nn.Module, query_responses: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Values ``(batch, response_len)``: the value model read at the position before each response token."""
    values = value_model(query_responses, attention_mask, position_ids_from_mask(attention_mask))
    return values[:, prompt_len - 1 : -1]


@torch.no_grad()
def reward_scores(reward_model: TokenScoreModel, generation: Generation, *, group_size: int = 1) -> torch.Tensor:
    """Raw reward-model scores ``(batch,)`` read at each sequence's last real response token. ``group_size`` > 1:
    runs of that many rows share their prompt, packed as in :func:`policy_logprobs` where the reward model's
    architecture takes it (:func:`rlhfctl.models.packing.packing_supported`) and it costs less."""
    lengths, prompt_len = generation.truncated.lengths, generation.prompt_len
    response_len = generation.query_responses.shape[1] - prompt_len
    if group_size > 1 and packing_supported(reward_model.model) and packing_pays(
            prompt_len, response_len, group_size, reward_model.model.config.hidden_size):
        packed = pack_groups(generation.query_responses, generation.attention_mask, prompt_len, group_size)
        last_index = group_last_positions(prompt_len, response_len, lengths.view(-1, group_size))
        return reward_model.score_at(packed["input_ids"], packed["attention_mask"], packed["position_ids"],
                                     last_index).reshape(-1)
    last_index = prompt_len + lengths - 1  # (batch,)
    return reward_model.score_at(
        generation.query_responses,
        generation.attention_mask,
        position_ids_from_mask(generation.attention_mask),
        last_index,
    )


@dataclass(frozen=True)
class ScoreSettings:
    """Score post-processing from ``[training]`` and the RM export's statistics."""

    reward_mean: float | None = None
    reward_std: float | None = None
    score_clip: float | None = None
    missing_eos_penalty: float | None = None


def score_sequences(
    reward_model: TokenScoreModel, generation: Generation, settings: ScoreSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw_scores, scores)``, both ``(batch,)``: the reward model's output and the score PPO optimises."""
    raw = reward_scores(reward_model, generation)
    processed = ppo_objective.process_scores(
        raw,
        generation.truncated.has_stop,
        reward_mean=settings.reward_mean,
        reward_std=settings.reward_std,
        score_clip=settings.score_clip,
        missing_eos_penalty=settings.missing_eos_penalty,
    )
    return raw, processed


class Rollout(NamedTuple):
    """One batch of experience; every per-token tensor is ``(batch, response_len)``."""

    query_responses: torch.Tensor  # (batch, prompt_len + response_len)
    attention_mask: torch.Tensor  # (batch, prompt_len + response_len)
    prompt_len: int
    response_mask: torch.Tensor
    has_stop: torch.Tensor  # (batch,) bool
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    raw_scores: torch.Tensor  # (batch,)
    scores: torch.Tensor  # (batch,)


@torch.no_grad()
def collect_rollout(
    generation: Generation,
    raw_scores: torch.Tensor,
    scores: torch.Tensor,
    *,
    policy: nn.Module,
    reference: nn.Module,
    value_model: nn.Module,
    temperature: float,
    chunk_size: int,
) -> Rollout:
    """Old/ref log-probs and values for a generated batch, in chunks of ``chunk_size`` sequences.

    ``policy`` and ``value_model`` should be the bare (non-DDP) modules: these forwards need no gradients. The
    policy's log-probs are the ones the tokens were sampled with when the generation carries them at this
    ``temperature`` (rlhfctl's decoder computes them from the logits it sampled from; TRL does the same), so the
    policy needs no forward pass here; otherwise they are computed like the reference's.
    """
    mask = generation.truncated.response_mask
    sampled = generation.response_logprobs is not None and generation.logprobs_temperature == temperature
    old_logprobs, ref_logprobs, old_values = [], [], []
    was_training = policy.training, value_model.training
    policy.eval()
    value_model.eval()
    try:
        for start in range(0, generation.query_responses.shape[0], chunk_size):
            ids = generation.query_responses[start : start + chunk_size]
            attention = generation.attention_mask[start : start + chunk_size]
            if not sampled:
                old_logprobs.append(policy_logprobs(policy, ids, attention, generation.prompt_len, temperature)[0])
            ref_logprobs.append(policy_logprobs(reference, ids, attention, generation.prompt_len, temperature)[0])
            old_values.append(response_values(value_model, ids, attention, generation.prompt_len))
    finally:
        policy.train(was_training[0])
        value_model.train(was_training[1])
    if sampled:
        old_logprobs = [generation.response_logprobs]
    return Rollout(
        query_responses=generation.query_responses,
        attention_mask=generation.attention_mask,
        prompt_len=generation.prompt_len,
        response_mask=mask,
        has_stop=generation.truncated.has_stop,
        # padding positions carry no meaning; zero them so no stray value leaks into sums
        old_logprobs=torch.cat(old_logprobs) * mask,
        ref_logprobs=torch.cat(ref_logprobs) * mask,
        old_values=torch.cat(old_values) * mask,
        raw_scores=raw_scores,
        scores=scores,
    )
