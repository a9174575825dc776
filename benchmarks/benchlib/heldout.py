"""A neutral judge of what a run learned, run as its own process on any saved model (rlhfctl's or TRL's export):

    python benchmarks/benchlib/heldout.py nll MODEL ROWS.jsonl              # {"nll": ..., "tokens": ...}
    python benchmarks/benchlib/heldout.py reward POLICY RM PROMPTS.jsonl --samples 4 --seed 0   # {"reward": ...}
    python benchmarks/benchlib/heldout.py dpo POLICY REFERENCE PAIRS.jsonl --beta 0.1           # {"accuracy": ...}

``nll``: mean negative log-likelihood per response token of ``{"instruction", "response"}`` rows, the prompt
tokenised as the tokenizer does by default (BOS where it adds one) and the response appended; EOS is not scored, so
a tool that does not train on EOS is not penalised for it. ``reward``: ``--samples`` sampled responses per prompt
(temperature 0.7, up to 32 new tokens, cut at EOS), each scored by the reward model read at its last token
(prompt + response + EOS), averaged. ``dpo``: the implicit-reward accuracy of a DPO-trained policy on
``{"instruction", "chosen", "rejected"}`` pairs, the same for every tool (:func:`dpo_pair_rewards`). Plain
transformers only; nothing of either tool is imported.
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
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

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


def dpo_pair_rewards(policy_dir: str, reference_dir: str, pairs_path: str, *, beta: float,
                     batch_size: int = 32) -> list[tuple[float, float]]:
    """``(chosen, rejected)`` implicit rewards of every pair: ``beta * (log pi(y|x) - log pi_ref(y|x))``, the
    log-probs summed over the reply's tokens and EOS (the prompt is not scored).

    The text is tokenised as both tools do for a plain (non-chat) prompt: the prompt with the tokenizer's default
    special tokens, the reply without, EOS appended (rlhfctl's ``tokenize_pairs``; TRL's DPOTrainer appends the EOS
    text, tokenises prompt + reply and takes the reply from where the two diverge: the same ids whenever the reply
    starts on a token boundary, as these replies do, with a leading space). The policy and the reference are read
    with the reference's tokenizer; sequences are right-padded, so positions need no correction.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sequences: list[tuple[list[int], int]] = []  # (ids, reply tokens incl. EOS), chosen then rejected per pair
    for row in _load_rows(pairs_path):
        prompt = tokenizer(row["instruction"])["input_ids"]
        for key in ("chosen", "rejected"):
            reply = tokenizer(row[key], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            sequences.append((prompt + reply, len(reply)))

    def summed_reply_logprobs(model_dir: str) -> list[float]:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        sums: list[float] = []
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                chunk = sequences[start:start + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                reply_mask = torch.zeros((len(chunk), width - 1))  # over the predicted positions 1..width-1
                for row, (ids, reply_length) in enumerate(chunk):
                    input_ids[row, :len(ids)] = torch.tensor(ids)
                    reply_mask[row, len(ids) - 1 - reply_length:len(ids) - 1] = 1.0
                attention_mask = (torch.arange(width) < torch.tensor([len(ids) for ids, _ in chunk])[:, None]).long()
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
                token_logprobs = logits.log_softmax(-1).gather(2, input_ids[:, 1:, None]).squeeze(-1)
                sums += (token_logprobs * reply_mask).sum(dim=1).tolist()
        return sums

    policy, reference = summed_reply_logprobs(policy_dir), summed_reply_logprobs(reference_dir)
    rewards = [beta * (p - r) for p, r in zip(policy, reference)]
    return list(zip(rewards[0::2], rewards[1::2]))


def dpo_accuracy(policy_dir: str, reference_dir: str, pairs_path: str, *, beta: float,
                 with_rewards: bool = False) -> dict:
    """The implicit-reward accuracy (share of pairs whose chosen reply's reward is strictly higher, as both tools
    count ``rewards/accuracies``) and the mean reward margin over ``pairs_path``; with ``with_rewards`` also every
    pair's ``[chosen, rejected]`` rewards (``"rewards"``), to compare two policies reply by reply."""
    rewards = dpo_pair_rewards(policy_dir, reference_dir, pairs_path, beta=beta)
    wins = sum(chosen > rejected for chosen, rejected in rewards)
    margin = sum(chosen - rejected for chosen, rejected in rewards) / max(len(rewards), 1)
    result = {"accuracy": wins / max(len(rewards), 1), "margin": margin, "pairs": len(rewards)}
    if with_rewards:
        result["rewards"] = [list(pair) for pair in rewards]
    return result


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
    dpo = commands.add_parser("dpo")
    dpo.add_argument("policy")
    dpo.add_argument("reference")
    dpo.add_argument("pairs")
    dpo.add_argument("--beta", type=float, default=0.1)
    dpo.add_argument("--rewards", action="store_true", help="also print every pair's [chosen, rejected] rewards")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(getattr(args, "threads", 2))
    if args.command == "nll":
        print(json.dumps(heldout_nll(args.model, args.rows, args.max_length)))
    elif args.command == "dpo":
        print(json.dumps(dpo_accuracy(args.policy, args.reference, args.pairs, beta=args.beta,
                                      with_rewards=args.rewards)))
    else:
        print(json.dumps(heldout_reward(args.policy, args.reward_model, args.prompts, samples=args.samples,
                                        seed=args.seed)))


if __name__ == "__main__":
    main()
