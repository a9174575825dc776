"""A neutral judge of what a run learned, run as its own process on any saved model (rlhfctl's or TRL's export):

    python benchmarks/benchlib/heldout.py nll MODEL ROWS.jsonl              # {"nll": ..., "tokens": ...}
    python benchmarks/benchlib/heldout.py reward POLICY RM PROMPTS.jsonl --samples 4 --seed 0   # {"reward": ...}

``nll``: mean negative log-likelihood per response token of ``{"instruction", "response"}`` rows, the prompt
tokenised as the tokenizer does by default (BOS where it adds one) and the response appended; EOS is not scored, so
a tool that does not train on EOS is not penalised for it. ``reward``: ``--samples`` sampled responses per prompt
(temperature 0.7, up to 32 new tokens, cut at EOS), each scored by the reward model read at its last token
(prompt + response + EOS), averaged. Plain transformers only; nothing of either tool is imported.
"""

from __future__ import annotations

import argparse
import json
import math


def _load_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def heldout_nll(model_dir: str, rows_path: str, max_length: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in _load_rows(rows_path):
            prompt = tokenizer(row["instruction"])["input_ids"]
            response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
            ids = (prompt + response)[-max_length:]
            scored = min(len(response), len(ids) - 1)
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            targets = torch.tensor(ids[1:])
            nll = F.cross_entropy(logits, targets, reduction="none")[-scored:]
            total += float(nll.sum())
            tokens += scored
    return {"nll": total / max(tokens, 1), "tokens": tokens, "perplexity": math.exp(total / max(tokens, 1))}


def heldout_reward(policy_dir: str, reward_dir: str, prompts_path: str, *, samples: int, seed: int,
                   max_new_tokens: int = 32, temperature: float = 0.7) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    rewards = []
    with torch.no_grad():
        for row in _load_rows(prompts_path):
            prompt = torch.tensor([tokenizer(row["prompt"])["input_ids"]]).repeat(samples, 1)
            output = policy.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                     temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
            for sequence in output[:, prompt.shape[1]:].tolist():
                response = sequence[: sequence.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in sequence \
                    else sequence
                ids = torch.tensor([prompt[0].tolist() + response + [tokenizer.eos_token_id]])
                hidden = reward_model.base_model(input_ids=ids).last_hidden_state[:, -1]
                rewards.append(float(reward_model.score(hidden).squeeze()))
    mean = sum(rewards) / len(rewards)
    spread = math.sqrt(sum((value - mean) ** 2 for value in rewards) / max(len(rewards) - 1, 1))
    return {"reward": mean, "reward_std": spread, "responses": len(rewards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    nll = commands.add_parser("nll")
    nll.add_argument("model")
    nll.add_argument("rows")
    nll.add_argument("--max-length", type=int, default=128)
    reward = commands.add_parser("reward")
    reward.add_argument("policy")
    reward.add_argument("reward_model")
    reward.add_argument("prompts")
    reward.add_argument("--samples", type=int, default=4)
    reward.add_argument("--seed", type=int, default=0)
    reward.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(getattr(args, "threads", 2))
    if args.command == "nll":
        print(json.dumps(heldout_nll(args.model, args.rows, args.max_length)))
    else:
        print(json.dumps(heldout_reward(args.policy, args.reward_model, args.prompts, samples=args.samples,
                                        seed=args.seed)))


if __name__ == "__main__":
    main()
