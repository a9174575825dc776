"""``rlhfctl ppo sample``: responses of an exported policy to prompts, scored by a reward model when given.

Also what the example's comparison runs on the SFT and PPO policies (:mod:`rlhfctl.example.compare`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhfctl.models.generation import SamplingSettings, generate_for_prompts
from rlhfctl.models.rollout import reward_scores
from rlhfctl.models.scoring import TokenScoreModel


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
    from rlhfctl.data.prompting import format_prompt
    from rlhfctl.models.loading import check_same_vocabulary, load_model, load_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    policy = load_model("AutoModelForCausalLM", policy_dir).eval()
    reward_model = None
    if reward_dir is not None:
        scorer = load_model("AutoModelForSequenceClassification", reward_dir, num_labels=1).eval()
        check_same_vocabulary(tokenizer, scorer, reward_dir)
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
        generation = generate_for_prompts(policy, chunk, tokenizer, max_prompt_tokens, sampling)
        scores = reward_scores(reward_model, generation).tolist() if reward_model is not None else None
        truncated = generation.truncated
        for row, text in enumerate(chunk):
            response_ids = truncated.response_ids[row, : int(truncated.lengths[row])]
            results.append(SampledResponse(
                prompt=text, response=tokenizer.decode(response_ids, skip_special_tokens=True),
                score=None if scores is None else float(scores[row]), stopped=bool(truncated.has_stop[row]),
            ))
    return results
