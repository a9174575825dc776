"""The PPO learning check of issue #19: data, the SFT policy and reward model it starts from, and the held-out check.

The data is a length-balanced version of the example kit's (``examples/data/generate.py``): HH-style questions about
everyday chores, a polite reply style (preferred) and a rude one. Unlike the kit's, where rude replies are shorter,
every preference pair here has a chosen and a rejected reply built from the same number of sentences of matched
lengths, so the reward model cannot learn "longer is better" and a policy cannot win by length alone. The SFT
policy learns both styles (half of its rows are rude), so PPO has something real to move.

The check (:func:`evaluate_policy`) is independent of both trainers: plain ``transformers`` sampling at T = 1.0 of
held-out prompts no trainer saw, each response scored by the reward model at its last token (EOS included, as the
reward model was trained) and its KL to the SFT policy computed from the sampled tokens' log-probs under both
models (``sum_t log pi(y_t) - log pi_sft(y_t)``, an unbiased estimate of KL(pi || pi_sft) per response, in nats).
The score gain is reported in standard deviations of the SFT policy's own scores on the same prompts.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib.sections.rm import rm_config
from benchlib.sections.sft import sft_config
from benchlib.workspace import build_model, write_jsonl, write_toml

QUESTIONS = (
    "How do I {verb} my {thing}?",
    "What is a good way to {verb} my {thing}?",
    "Can you help me {verb} my {thing}?",
    "Any tips on how to {verb} my {thing}?",
    "What is the best way to {verb} my {thing}?",
    "I need to {verb} my {thing}. Any advice?",
)
VERBS = ("clean", "fix", "paint", "wash", "dry", "store", "protect", "organize", "care for", "keep track of",
         "check", "move")
THINGS = ("plants", "bike", "kitchen", "garden", "car", "dog", "shoes", "desk", "room", "laptop", "bread", "shirt",
          "window", "floor", "phone", "lamp", "fridge", "oven", "books", "tools", "boots", "fence", "roof", "piano")
# Sentences of matched lengths: a reply is 1-3 of them, each helpful or not; the more helpful ones, the better.
HELPFUL = (
    "Try to {verb} your {thing} a little every week.",
    "Go slowly and {verb} your {thing} with real care.",
    "A soft cloth will help you {verb} your {thing}.",
    "Ask a friend to help you {verb} your {thing}.",
    "Read the guide before you {verb} your {thing}.",
    "Happy to help, that is a good question.",
)
UNHELPFUL = (
    "I will not {verb} your {thing} for you today.",
    "Nobody cares how you {verb} your {thing} now.",
    "Your {thing} is really not my problem at all.",
    "Do not ask me to {verb} your {thing} again.",
    "Figure out how to {verb} your {thing} yourself.",
    "Ugh, that is a boring and silly question.",
)
MAX_SENTENCES = 3
TRAIN_PROMPTS, HELDOUT_PROMPTS, RM_PAIRS, SFT_ROWS = 512, 64, 2048, 4096


def hh_prompt(question: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant:"


def reply(rng: random.Random, sentences: int, helpful: int, verb: str, thing: str) -> str:
    """``sentences`` sentences, ``helpful`` of them helpful, in random order."""
    kinds = [HELPFUL] * helpful + [UNHELPFUL] * (sentences - helpful)
    rng.shuffle(kinds)
    return " " + " ".join(rng.choice(pool).format(verb=verb, thing=thing) for pool in kinds)


@dataclass(frozen=True)
class LearningData:
    """Paths of the generated files (rlhfctl's standard formats; TRL reads the same prompts)."""

    sft: Path  # {"instruction", "response"}: 1-3 sentences, each helpful with probability 1/2
    rm_train: Path  # {"instruction", "chosen", "rejected"}: same sentence count, chosen has more helpful ones
    rm_validation: Path
    ppo_train: Path  # {"prompt"}: TRAIN_PROMPTS prompts
    heldout: Path  # {"prompt"}: HELDOUT_PROMPTS prompts that no other file contains


def write_learning_data(root: Path, seed: int = 0) -> LearningData:
    """Write (once) the SFT rows, RM pairs, PPO prompts and held-out prompts; deterministic from ``seed``."""
    root = root.absolute()
    data = LearningData(root / "sft.jsonl", root / "rm_train.jsonl", root / "rm_validation.jsonl",
                        root / "ppo_train.jsonl", root / "heldout_prompts.jsonl")
    if all(path.exists() for path in asdict(data).values()):
        return data
    rng = random.Random(seed)
    topics = [(question.format(verb=verb, thing=thing), verb, thing)
              for question in QUESTIONS for verb in VERBS for thing in THINGS]
    rng.shuffle(topics)
    heldout, pool = topics[:HELDOUT_PROMPTS], topics[HELDOUT_PROMPTS:]

    def pair() -> dict:
        question, verb, thing = rng.choice(pool)
        sentences = rng.randint(1, MAX_SENTENCES)
        worse, better = sorted(rng.sample(range(sentences + 1), 2))
        return {"instruction": hh_prompt(question), "chosen": reply(rng, sentences, better, verb, thing),
                "rejected": reply(rng, sentences, worse, verb, thing)}

    def sft_row() -> dict:
        question, verb, thing = rng.choice(pool)
        sentences = rng.randint(1, MAX_SENTENCES)
        helpful = sum(rng.random() < 0.5 for _ in range(sentences))
        return {"instruction": hh_prompt(question), "response": reply(rng, sentences, helpful, verb, thing)}

    write_jsonl(data.sft, [sft_row() for _ in range(SFT_ROWS)])
    write_jsonl(data.rm_train, [pair() for _ in range(RM_PAIRS)])
    write_jsonl(data.rm_validation, [pair() for _ in range(256)])
    write_jsonl(data.ppo_train, [{"prompt": hh_prompt(question)} for question, _, _ in rng.sample(pool, TRAIN_PROMPTS)])
    write_jsonl(data.heldout, [{"prompt": hh_prompt(question)} for question, _, _ in heldout])
    return data


@dataclass(frozen=True)
class StartingPoint:
    """The models every PPO run of the check starts from (built once, re-used)."""

    kit: Path  # tokenizer + random tiny GPT-2 (rlhfctl's kit builder)
    sft: Path  # rlhfctl sft train export: the policy PPO starts from and the KL reference
    rm: Path  # rlhfctl rm train export (with reward_stats.json)
    rm_accuracy: float


def prepare_models(root: Path, data: LearningData, env: dict[str, str], cwd: Path) -> StartingPoint:
    """Build the kit and train the SFT policy and the reward model with rlhfctl (one in-process worker each): the
    harness's SFT and RM sections' settings, the SFT policy for 2 epochs at lr 1e-3 (cosine) so that it writes
    whole sentences and ends its replies."""
    root = root.absolute()
    kit = build_model(root / "models", "tiny", [data.sft, data.rm_train, data.ppo_train, data.heldout])
    sft_dir, rm_dir = root / "models" / "sft", root / "models" / "rm"
    folders = {"output_dir": str(root / "runs" / "{stage}"), "checkpoint_dir": str(root / "models" / "{stage}")}
    if not (sft_dir / "config.json").exists():
        config = sft_config(kit, data.sft)
        _train(root / "configs" / "sft.toml", _with_folders(config, folders), env, cwd)
    if not (rm_dir / "config.json").exists():
        config = rm_config(kit, data.rm_train, data.rm_validation, workers=1, cpus_per_worker=2.0,
                           batch_per_worker=8)
        _train(root / "configs" / "rm.toml", _with_folders(config, folders), env, cwd)
    return StartingPoint(kit, sft_dir, rm_dir, _rm_accuracy(root / "runs" / "rm"))


def _with_folders(config: dict, folders: dict[str, str]) -> dict:
    general = {**config["general"], **{key: value.format(stage=config["stage"]) for key, value in folders.items()}}
    return {**config, "general": general}


def _train(config_path: Path, config: dict, env: dict[str, str], cwd: Path) -> None:
    write_toml(config_path, config)
    command = [sys.executable, "-m", "rlhfctl", config["stage"], "train", str(config_path), "--quiet", "--force"]
    completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")


def _rm_accuracy(run_dir: Path) -> float:
    accuracy = math.nan
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("split") == "validation" and "accuracy" in record:
                accuracy = float(record["accuracy"])
    return accuracy


# ----------------------------------------------------------------------------------------------- the held-out check


@dataclass(frozen=True)
class PolicyCheck:
    """One policy's responses to the held-out prompts: RM scores and KL to the SFT policy, one per response."""

    scores: list[float]
    kl: list[float]  # nats per response, sum over its tokens (EOS included)
    lengths: list[int]  # response tokens (EOS included)
    eos_rate: float
    samples: list[dict]  # a few (prompt, response, score) rows

    @property
    def score_mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def score_std(self) -> float:
        return statistics.pstdev(self.scores)

    @property
    def kl_mean(self) -> float:
        return statistics.fmean(self.kl)


def evaluate_policy(policy_dir: Path, sft_dir: Path, rm_dir: Path, prompts: list[str], *, samples_per_prompt: int,
                    seed: int, temperature: float = 1.0, max_new_tokens: int = 32,
                    batch_size: int = 64) -> PolicyCheck:
    """Sample ``samples_per_prompt`` responses per prompt from ``policy_dir`` (plain ``generate``, T =
    ``temperature``, no top-k/top-p), score them with the reward model and estimate KL(policy || SFT policy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    sft = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    texts = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    scores: list[float] = []
    kls: list[float] = []
    lengths: list[int] = []
    stopped = 0
    samples: list[dict] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            encoded = tokenizer(chunk, return_tensors="pt", padding=True)
            prompt_len = encoded["input_ids"].shape[1]
            output = policy.generate(**encoded, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
            response = output[:, prompt_len:]
            is_eos = response == eos
            has_eos = is_eos.any(dim=1)
            positions = torch.arange(response.shape[1]).expand_as(response)
            first_eos = torch.where(is_eos, positions, torch.full_like(positions, response.shape[1])).min(dim=1).values
            length = torch.where(has_eos, first_eos + 1, torch.full_like(first_eos, response.shape[1]))
            response_mask = (positions < length.unsqueeze(1)).long()
            response = torch.where(response_mask.bool(), response, torch.full_like(response, pad))
            ids = torch.cat([encoded["input_ids"], response], dim=1)
            attention = torch.cat([encoded["attention_mask"], response_mask], dim=1)
            position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)

            def response_logprobs(model):
                logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids).logits
                logits = logits[:, prompt_len - 1 : -1].float() / temperature
                chosen = logits.gather(2, response.unsqueeze(-1)).squeeze(-1)
                return (chosen - logits.logsumexp(dim=-1)) * response_mask

            kl = (response_logprobs(policy) - response_logprobs(sft)).sum(dim=1)
            hidden = reward_model.transformer(input_ids=ids, attention_mask=attention,
                                              position_ids=position_ids).last_hidden_state
            last = prompt_len + length - 1
            score = reward_model.score(hidden[torch.arange(len(chunk)), last]).squeeze(-1)
            scores += score.tolist()
            kls += kl.tolist()
            lengths += length.tolist()
            stopped += int(has_eos.sum())
            for row in range(len(chunk)):
                if len(samples) < 6 and (start + row) % samples_per_prompt == 0:
                    samples.append({"prompt": chunk[row].strip(),
                                    "response": tokenizer.decode(response[row, : int(length[row])],
                                                                 skip_special_tokens=True),
                                    "score": round(float(score[row]), 3)})
    return PolicyCheck(scores, kls, lengths, stopped / len(texts), samples)


def sigma_gain(trained: PolicyCheck, baseline: PolicyCheck) -> float:
    """Mean score gain over the SFT policy, in standard deviations of the SFT policy's scores."""
    return (trained.score_mean - baseline.score_mean) / baseline.score_std
