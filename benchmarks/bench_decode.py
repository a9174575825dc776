"""Benchmark PPO's generate and score phases in one process: rlhfctl's decoder vs transformers' ``generate``.

    python benchmarks/bench_decode.py [--presets tiny,small] [--repeats 30] [--threads 2]

For each kit preset (the benchmark's models: ``rlhfctl/example/kit.py``, tokenizer trained on examples/data), one
PPO update's worth of work is timed the way the harness's PPO section runs it: 8 prompts from examples/data/ppo.jsonl,
32-token responses at temperature 0.7 (top-k 0, top-p 1.0), EOS as the stop token.

- generate: ``generate_responses(..., engine="generate")`` (transformers' ``generate``) against ``engine="auto"``
  (rlhfctl's decoder, with its own inverse-CDF draw: the same distribution, other tokens for a seed), the same seed
  before each call; on every repeat the script also checks, untimed, that the decoder with ``generate``'s draw put in
  (``decoding.multinomial_draw``) samples ``generate``'s tokens;
- score: what PPO computes after generation, before (a policy forward for the old log-probs, full-sequence logits
  for policy and reference, value and reward forwards) and now (the old log-probs from the decoder, the reference's
  LM head on the response positions only, value and reward).

Alternating A B A B; prints one JSON line with the median seconds per update and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = 8
RESPONSE_TOKENS = 32
TEMPERATURE = 0.7


def _kit(preset: str) -> Path:
    from rlhfctl.example.kit import build_model_kit

    folder = ROOT / "benchmarks" / "results" / "work" / f"decode-kit-{preset}"
    if not (folder / "config.json").is_file():
        data = ROOT / "examples" / "data"
        build_model_kit(folder, corpus_files=[data / "sft.jsonl", data / "rm.jsonl", data / "ppo.jsonl"],
                        preset=preset)
    return folder


class _FullLogits:
    """The causal LM without ``logits_to_keep`` (the scoring path before this change)."""

    def __init__(self, model) -> None:
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)

    __call__ = forward


@contextlib.contextmanager
def _generates_draw():
    from rlhfctl.models import decoding

    sample_from = decoding.sample_from
    decoding.sample_from = decoding.multinomial_draw
    try:
        yield
    finally:
        decoding.sample_from = sample_from


def measure(preset: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts
    from rlhfctl.models.rollout import policy_logprobs, response_values, reward_scores
    from rlhfctl.models.scoring import TokenScoreModel

    logging.set_verbosity_error()
    folder = _kit(preset)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder).eval()
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    scorer = TokenScoreModel(AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval())
    rows = [json.loads(line)["prompt"] for line in (ROOT / "examples" / "data" / "ppo.jsonl").read_text().splitlines()]
    settings = SamplingSettings(max_new_tokens=RESPONSE_TOKENS, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                do_sample=True, stop_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id)

    def generate(engine: str, seed: int):
        prompts = rows[(seed * PROMPTS) % len(rows):][:PROMPTS]
        ids, mask = tokenize_prompts(prompts, tokenizer, 64)
        torch.manual_seed(seed)
        started = time.perf_counter()
        generation = generate_responses(policy, ids, mask, settings, engine=engine)
        return time.perf_counter() - started, generation

    @torch.no_grad()
    def score(generation, before: bool) -> float:
        started = time.perf_counter()
        ids, mask, prompt_len = generation.query_responses, generation.attention_mask, generation.prompt_len
        if before:
            policy_logprobs(_FullLogits(policy), ids, mask, prompt_len, TEMPERATURE)
        policy_logprobs(_FullLogits(reference) if before else reference, ids, mask, prompt_len, TEMPERATURE)
        response_values(scorer, ids, mask, prompt_len)
        reward_scores(scorer, generation)
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"generate_hf": [], "generate_rlhfctl": [], "score_before": [], "score_now": []}
    tokens = []
    for seed in range(repeats + 2):
        hf_s, hf = generate("generate", seed)
        ours_s, ours = generate("auto", seed)
        with _generates_draw():
            _, same_draw = generate("auto", seed)
        if not torch.equal(hf.query_responses, same_draw.query_responses):
            raise SystemExit(f"{preset}: with generate's draw the decoder sampled other tokens for seed {seed}")
        before_s, now_s = score(ours, True), score(ours, False)
        if seed < 2:  # warm-up
            continue
        tokens.append(float(ours.truncated.lengths.float().mean()))
        for name, value in (("generate_hf", hf_s), ("generate_rlhfctl", ours_s), ("score_before", before_s),
                            ("score_now", now_s)):
            times[name].append(value)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"preset": preset, "repeats": repeats, "mean_response_tokens": statistics.mean(tokens),
            **{f"{name}_s": round(value, 5) for name, value in medians.items()},
            "generate_speedup": round(medians["generate_hf"] / medians["generate_rlhfctl"], 2),
            "score_now_over_before": round(medians["score_now"] / medians["score_before"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    results = [measure(preset, args.repeats) for preset in args.presets.split(",")]
    print(json.dumps({"threads": args.threads, "results": results}))


if __name__ == "__main__":
    main()
