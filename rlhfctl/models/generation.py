"""Generation for PPO and ``ppo sample``: prompts tokenised and left-padded, responses sampled with the KV cache and
cut after their first stop token.

Sampling runs rlhfctl's own decode loop (:mod:`rlhfctl.models.decoding`: ``generate``'s sampling distribution, step
for step, with less work per token, and each token's log-probability on the side); ``engine="generate"`` calls
transformers' ``generate`` instead (the reference the tests compare against).

Only imported by code that already runs torch (the PPO worker loop and ``ppo sample``), so torch is imported at the
top here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from rlhfctl.errors import UserError
from rlhfctl.objectives import ppo as ppo_objective


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

    @classmethod
    def from_config(cls, generation: Any, tokenizer: Any) -> SamplingSettings:
        """From a stage's ``[generation]`` section (PPO's and GRPO's) and the policy's tokenizer."""
        return cls(
            max_new_tokens=generation.max_new_tokens, temperature=generation.temperature, top_k=generation.top_k,
            top_p=generation.top_p, do_sample=generation.do_sample,
            stop_ids=tuple(stop_token_ids(tokenizer, generation.stop_token)), pad_token_id=tokenizer.pad_token_id,
        )


class Generation(NamedTuple):
    query_responses: torch.Tensor  # (batch, prompt_len + response_len), padding after the first stop token
    attention_mask: torch.Tensor  # (batch, prompt_len + response_len), 0 on prompt and response padding
    prompt_len: int
    truncated: ppo_objective.TruncatedResponses  # response ids, response_mask (batch, response_len), has_stop, lengths
    # (batch, response_len): each response token's log-prob under logits / logprobs_temperature, from the logits it
    # was sampled from (0 on padding); None from transformers' generate
    response_logprobs: torch.Tensor | None = None
    logprobs_temperature: float | None = None


ENGINES = ("auto", "model", "generate")


@torch.no_grad()
def generate_responses(
    policy: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: SamplingSettings,
    *, engine: str = "auto", repeats: int = 1,
) -> Generation:
    """Sample ``repeats`` responses per prompt (consecutive rows) with the KV cache and cut each after its first
    stop token.

    ``policy`` must be the bare model (for a DDP-wrapped model pass ``.module``). ``engine``: ``"auto"`` (the
    fastest decoder for the architecture, :mod:`rlhfctl.models.decoding`), ``"model"`` (the decode loop over the
    model's own forward) or ``"generate"`` (transformers' ``generate``). rlhfctl's decoders encode each prompt
    once for all its ``repeats``; ``generate`` gets every copy.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    unique_ids, unique_mask = prompt_ids, prompt_mask  # rlhfctl's decoders encode each prompt once
    if repeats > 1:
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.repeat_interleave(repeats, 0)
    was_training = policy.training
    policy.eval()
    logprobs = None
    try:
        if engine == "generate":
            output = policy.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                generation_config=sampling.to_generation_config(),
            )  # (batch, prompt_len + generated_len)
            generated = output[:, prompt_ids.shape[1]:]
        else:
            from rlhfctl.models.decoding import decode

            generated, logprobs = decode(
                policy, unique_ids, unique_mask, max_new_tokens=sampling.max_new_tokens,
                do_sample=sampling.do_sample, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, stop_ids=sampling.stop_ids, pad_token_id=sampling.pad_token_id, engine=engine,
                repeats=repeats,
            )
    finally:
        policy.train(was_training)
    return generation_from_tokens(prompt_ids, prompt_mask, generated, sampling, logprobs=logprobs)


def generation_from_tokens(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, generated: torch.Tensor,
                           sampling: SamplingSettings, *, logprobs: torch.Tensor | None = None) -> Generation:
    """A :class:`Generation` from left-padded prompts ``(batch, prompt_len)`` and the tokens sampled after them
    ``(batch, generated_len)`` (padded with anything after a row's end): each response cut after its first stop
    token, padding and masks as every sampler returns them. ``logprobs`` ``(batch, generated_len)``: the sampled
    tokens' log-probs at ``sampling.temperature``, when the sampler has them."""
    prompt_len = prompt_ids.shape[1]
    truncated = ppo_objective.truncate_after_stop(generated, list(sampling.stop_ids), sampling.pad_token_id)
    query_responses = torch.cat([prompt_ids, truncated.response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, truncated.response_mask.long()], dim=1)
    if logprobs is None:
        return Generation(query_responses, attention_mask, prompt_len, truncated)
    return Generation(query_responses, attention_mask, prompt_len, truncated,
                      response_logprobs=logprobs * truncated.response_mask, logprobs_temperature=sampling.temperature)


def tokenize_rendered_prompts(prompt_texts: list[str], tokenizer: Any,
                              max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered prompts (``data.prompting.format_prompt``) -> :func:`tokenize_prompts`, with the tokenizer's special
    tokens only when no chat template rendered them: what every sampler is given."""
    from rlhfctl.data.prompting import has_chat_template

    return tokenize_prompts(prompt_texts, tokenizer, max_prompt_tokens,
                            add_special_tokens=not has_chat_template(tokenizer))


def generate_for_prompts(policy: nn.Module, prompt_texts: list[str], tokenizer: Any, max_prompt_tokens: int,
                         sampling: SamplingSettings, *, repeats: int = 1) -> Generation:
    """Rendered prompts (``data.prompting.format_prompt``) -> ``repeats`` sampled responses each (consecutive rows),
    on the policy's device: :func:`tokenize_prompts` once per prompt (special tokens only when no chat template
    rendered them), then :func:`generate_responses`, which encodes each prompt once. ``policy`` must be the bare
    model."""
    ids, mask = tokenize_rendered_prompts(prompt_texts, tokenizer, max_prompt_tokens)
    device = next(policy.parameters()).device
    return generate_responses(policy, ids.to(device), mask.to(device), sampling, repeats=repeats)
