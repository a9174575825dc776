"""PPO experience collection: generate, truncate, score, and the forward passes that make a rollout batch.

A rollout batch is built in three phases, each timed separately by the caller:

1. **generate** — left-padded prompts through ``model.generate`` (KV cache), then truncation after the first stop
   token (:func:`generate_responses`);
2. **score** — the reward model's score at the last real token, then missing-EOS penalty / clipping /
   normalisation (:func:`score_sequences`);
3. **forwards** — one no-grad forward each of policy, reference and value model over prompt + response, keeping
   only the chosen tokens' log-probs and the per-token values (:func:`collect_rollout`).

Only imported by code that already runs torch (the PPO worker loop and ``ppo sample``), so torch is imported at the
top here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from rlhfctl.errors import UserError
from rlhfctl.stages import ppo_math


# ----------------------------------------------------------------------------------------------- models


class TokenScoreModel(nn.Module):
    """A ``*ForSequenceClassification`` model (num_labels=1) read out at every position: ``(batch, seq)`` scores.

    The reward model is read at the last real token; the value model (initialised from the reward model) at the
    position before each response token. Wrapping the backbone + ``score`` head in one module keeps the value
    model's forward inside DDP, so its gradients are all-reduced.
    """

    def __init__(self, model: nn.Module) -> None:
        from rlhfctl.stages._modeling import reward_head

        super().__init__()
        if not isinstance(reward_head(model), nn.Linear) or not isinstance(getattr(model, "base_model", None), nn.Module):
            raise UserError(
                f"{type(model).__name__} has no per-token linear score head on top of its backbone, which PPO "
                "needs for the reward and value models.",
                hint="Use a decoder model (GPT-2, Llama, Qwen, Mistral ...) trained with `rlhfctl rm train`.",
            )
        self.model = model  # the full classification model, saved/exported as is

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        from rlhfctl.stages._modeling import reward_head

        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (batch, seq, hidden)
        return reward_head(self.model)(hidden).squeeze(-1).float()  # (batch, seq)

    def score_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """The score at one position per row, ``index`` ``(batch,)`` -> ``(batch,)``; the final block computes
        only there (``_last_position``), the same values as ``forward(...)[rows, index]``."""
        from rlhfctl.stages._modeling import scores_at

        return scores_at(self.model, input_ids, attention_mask, position_ids, index)


class PPOModels(NamedTuple):
    """The four models of a PPO run, on the worker's device, plus the shared tokenizer."""

    policy: nn.Module  # trained; AutoModelForCausalLM
    reference: nn.Module  # frozen copy of the initial policy
    reward_model: TokenScoreModel  # frozen
    value_model: TokenScoreModel  # trained, initialised from the reward model (or the policy)
    tokenizer: Any
    reward_head_fresh: bool  # True when the reward model's score head was initialised at load time


def build_ppo_models(config, device) -> PPOModels:
    """Load policy, reference, reward and value models for ``config`` (a PPOConfig); dropout off in all four."""
    from rlhfctl.stages._modeling import load_model, load_tokenizer

    trust = config.general.trust_remote_code
    tokenizer = load_tokenizer(config.policy_source, trust_remote_code=trust, padding_side="left")
    policy = load_model("AutoModelForCausalLM", config.policy_source, trust_remote_code=trust)
    reference = load_model("AutoModelForCausalLM", config.policy_source, trust_remote_code=trust)
    reward_model, load_info = load_model("AutoModelForSequenceClassification", config.reward_source,
                                         trust_remote_code=trust, num_labels=1, output_loading_info=True)
    value_source = config.reward_source if config.training.value_model_init == "reward" else config.policy_source
    value_model = load_model("AutoModelForSequenceClassification", value_source, trust_remote_code=trust,
                             num_labels=1)
    _check_same_vocabulary(tokenizer, reward_model, config.reward_source)
    if ensure_distinct_pad_token(tokenizer):
        for model in (policy, reference, reward_model, value_model):
            if model.get_input_embeddings().num_embeddings < len(tokenizer):
                model.resize_token_embeddings(len(tokenizer))
    for model in (policy, reference, reward_model, value_model):
        disable_dropout(model)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device)
    for frozen in (reference, reward_model):
        frozen.eval().requires_grad_(False)
    policy.train()
    value_model.train()
    missing = list(load_info.get("missing_keys", []))
    head_fresh = any(name.split(".")[-2:-1] in (["score"], ["classifier"]) for name in missing)
    return PPOModels(policy, reference, TokenScoreModel(reward_model), TokenScoreModel(value_model), tokenizer,
                     head_fresh)


def _check_same_vocabulary(tokenizer: Any, reward_model: nn.Module, reward_source: str) -> None:
    """The reward model reads the policy's token ids, so it must know every one of them."""
    rows = reward_model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise UserError(
            f"the reward model {reward_source} has {rows} token embeddings but the policy's tokenizer has "
            f"{len(tokenizer)} tokens: policy and reward model must share a tokenizer.",
            hint="Train the reward model from the same base model as the policy (rlhfctl rm train).",
        )


def ensure_distinct_pad_token(tokenizer: Any) -> bool:
    """Give ``tokenizer`` a pad token different from EOS; returns True when a new token was added.

    Uses the unknown token when there is one (no new embedding), otherwise adds ``<|pad|>``. Masks never depend on
    the pad id anyway (they come from stop positions and explicit attention masks); a distinct pad keeps exported
    models unambiguous for other tools.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: modules (p = 0) and the float dropout rates of the config and of attention layers."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    for name, value in vars(model.config).items():
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, 0.0)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding gets 0), as ``generate`` computes them."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


# ----------------------------------------------------------------------------------------------- prompts


def stop_token_ids(tokenizer: Any, stop_token: str | None) -> list[int]:
    """Ids that end a response: the configured ``stop_token`` (one token of the vocabulary) or else EOS."""
    if stop_token is not None:
        vocab_id = tokenizer.convert_tokens_to_ids(stop_token)
        if vocab_id is not None and vocab_id != tokenizer.unk_token_id:
            return [vocab_id]
        ids = tokenizer.encode(stop_token, add_special_tokens=False)
        if len(ids) == 1:
            return ids
        raise UserError(
            f"generation.stop_token: {stop_token!r} is {len(ids)} tokens for this tokenizer; a stop token must be "
            "exactly one token.",
            hint="Leave generation.stop_token out to stop at the tokenizer's EOS token.",
        )
    if tokenizer.eos_token_id is None:
        raise UserError(
            "the policy's tokenizer has no EOS token, so responses cannot end.",
            hint="Set generation.stop_token to a token that ends a response.",
        )
    return [tokenizer.eos_token_id]


def tokenize_prompts(
    prompt_texts: list[str], tokenizer: Any, max_prompt_tokens: int, add_special_tokens: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise rendered prompts, keep their last ``max_prompt_tokens`` tokens and left-pad them.

    Returns ``(input_ids, attention_mask)``, both ``(batch, prompt_len)``.
    """
    encoded = [
        tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"][-max_prompt_tokens:]
        for text in prompt_texts
    ]
    prompt_len = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), prompt_len), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), prompt_len), dtype=torch.long)
    for row, ids in enumerate(encoded):
        if ids:
            input_ids[row, prompt_len - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, prompt_len - len(ids) :] = 1
    return input_ids, attention_mask


# ----------------------------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class SamplingSettings:
    """What ``generate`` needs, resolved from ``[generation]`` and the tokenizer."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    do_sample: bool
    stop_ids: tuple[int, ...]
    pad_token_id: int

    def to_generation_config(self):
        """A fresh ``transformers.GenerationConfig`` (nothing inherited from the model's own defaults)."""
        from transformers import GenerationConfig

        settings: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "eos_token_id": list(self.stop_ids),
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if self.do_sample:
            settings.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return GenerationConfig(**settings)


class Generation(NamedTuple):
    query_responses: torch.Tensor  # (batch, prompt_len + response_len), padding after the first stop token
    attention_mask: torch.Tensor  # (batch, prompt_len + response_len), 0 on prompt and response padding
    prompt_len: int
    truncated: ppo_math.TruncatedResponses  # response ids, response_mask (batch, response_len), has_stop, lengths


@torch.no_grad()
def generate_responses(
    policy: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingSettings
) -> Generation:
    """Sample one response per prompt with the KV cache and cut it after its first stop token.

    ``policy`` must be the bare model (for a DDP-wrapped model pass ``.module``).
    """
    was_training = policy.training
    policy.eval()
    try:
        output = policy.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=sampling.to_generation_config(),
        )  # (batch, prompt_len + generated_len)
    finally:
        policy.train(was_training)
    prompt_len = prompt_ids.shape[1]
    truncated = ppo_math.truncate_after_stop(output[:, prompt_len:], list(sampling.stop_ids), sampling.pad_token_id)
    query_responses = torch.cat([prompt_ids, truncated.response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, truncated.response_mask.long()], dim=1)
    return Generation(query_responses, attention_mask, prompt_len, truncated)


# ----------------------------------------------------------------------------------------------- forwards


def policy_logprobs(
    policy: nn.Module,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float,
    *,
    return_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``(batch, response_len)`` of the response tokens (and optionally the per-token entropy, with
    gradients only when ``entropy_grad``). The full-vocabulary logits live only inside this call.
    """
    logits = policy(
        input_ids=query_responses,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits  # (batch, seq, vocab)
    logprobs = ppo_math.logprobs_from_logits(logits, query_responses, prompt_len, temperature)
    entropy = None
    if return_entropy:
        response_logits = logits[:, prompt_len - 1 : -1]
        response_logits = response_logits if entropy_grad else response_logits.detach()
        entropy = ppo_math.entropy_from_logits(response_logits.float() / temperature)
    return logprobs, entropy


def response_values(
    value_model: nn.Module, query_responses: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Values ``(batch, response_len)``: the value model read at the position before each response token."""
    values = value_model(query_responses, attention_mask, position_ids_from_mask(attention_mask))
    return values[:, prompt_len - 1 : -1]


@torch.no_grad()
def reward_scores(reward_model: TokenScoreModel, generation: Generation) -> torch.Tensor:
    """Raw reward-model scores ``(batch,)`` read at each sequence's last real response token."""
    last_index = generation.prompt_len + generation.truncated.lengths - 1  # (batch,)
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
    processed = ppo_math.process_scores(
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

    ``policy`` and ``value_model`` should be the bare (non-DDP) modules: these forwards need no gradients.
    """
    mask = generation.truncated.response_mask
    old_logprobs, ref_logprobs, old_values = [], [], []
    was_training = policy.training, value_model.training
    policy.eval()
    value_model.eval()
    try:
        for start in range(0, generation.query_responses.shape[0], chunk_size):
            ids = generation.query_responses[start : start + chunk_size]
            attention = generation.attention_mask[start : start + chunk_size]
            old_logprobs.append(policy_logprobs(policy, ids, attention, generation.prompt_len, temperature)[0])
            ref_logprobs.append(policy_logprobs(reference, ids, attention, generation.prompt_len, temperature)[0])
            old_values.append(response_values(value_model, ids, attention, generation.prompt_len))
    finally:
        policy.train(was_training[0])
        value_model.train(was_training[1])
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


# ----------------------------------------------------------------------------------------------- ppo sample


class SampledResponse(NamedTuple):
    prompt: str  # the rendered prompt text
    response: str
    score: float | None  # the reward model's raw score (None without a reward model)
    stopped: bool  # whether the response ended with a stop token


def sample_responses(
    policy_dir: str,
    prompts: list,
    *,
    reward_dir: str | None = None,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 0.7,
    seed: int = 0,
    batch_size: int = 16,
) -> list[SampledResponse]:
    """Generate (and score) responses of an exported policy, e.g. to compare it before and after PPO.

    ``prompts`` are prompt values as in PPO data (text or message lists), rendered like training does.
    """
    from rlhfctl.data.prompting import format_prompt, has_chat_template
    from rlhfctl.stages._modeling import load_model, load_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    policy = load_model("AutoModelForCausalLM", policy_dir).eval()
    reward_model = None
    if reward_dir is not None:
        scorer = load_model("AutoModelForSequenceClassification", reward_dir, num_labels=1).eval()
        _check_same_vocabulary(tokenizer, scorer, reward_dir)
        reward_model = TokenScoreModel(scorer)
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0,
                                do_sample=True, stop_ids=(tokenizer.eos_token_id,),
                                pad_token_id=tokenizer.pad_token_id)
    positions = getattr(policy.config, "max_position_embeddings", None) or getattr(policy.config, "n_positions", 1024)
    max_prompt_tokens = max(1, positions - max_new_tokens)
    texts = [format_prompt(prompt, tokenizer) for prompt in prompts for _ in range(samples_per_prompt)]
    results: list[SampledResponse] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        ids, mask = tokenize_prompts(chunk, tokenizer, max_prompt_tokens,
                                     add_special_tokens=not has_chat_template(tokenizer))
        generation = generate_responses(policy, ids, mask, sampling)
        scores = reward_scores(reward_model, generation).tolist() if reward_model is not None else None
        truncated = generation.truncated
        for row, text in enumerate(chunk):
            response_ids = truncated.response_ids[row, : int(truncated.lengths[row])]
            results.append(SampledResponse(
                prompt=text, response=tokenizer.decode(response_ids, skip_special_tokens=True),
                score=None if scores is None else float(scores[row]), stopped=bool(truncated.has_stop[row]),
            ))
    return results
