"""Shared pieces of the TRL reference scripts: quiet logging, a step-timing callback, the result file.

These scripts run in their own process with TRL (and accelerate) put on ``PYTHONPATH`` from ``benchmarks/.trl-*``;
the project environment is never changed for them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


# How every reference script configures TRL on CPU (README "Same inputs for both tools"): TRL's GPU-minded defaults
# (bf16, gradient checkpointing) make it ~15x slower here; no reports, saves, progress bars or logging in between.
CPU_FAIR_ARGS = {
    "bf16": False,
    "gradient_checkpointing": False,
    "use_cpu": True,
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 10_000,
    "disable_tqdm": True,
    "seed": 0,
}


def trainer_parser(description: str | None) -> argparse.ArgumentParser:
    """Arguments of the supervised reference scripts (RM, SFT): model, data, batch and schedule, outputs."""
    parser = _parser_with_outputs(description)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    return parser


def rollout_parser(description: str | None) -> argparse.ArgumentParser:
    """Arguments of the on-policy reference scripts (PPO, RLOO): models, prompts, sampling, outputs."""
    parser = _parser_with_outputs(description)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward-model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--episodes", type=int, default=128)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    return parser


def _parser_with_outputs(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="the trainer's output_dir")
    parser.add_argument("--result", required=True, help="JSON file the measured figures are written to")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--lora-r", type=int, help="train peft LoRA adapters of this rank (all linear layers)")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--save-merged", help="save the trained model here (LoRA merged) for held-out evaluation")
    parser.add_argument("--seed", type=int, default=CPU_FAIR_ARGS["seed"])
    return parser


def peft_config(args: argparse.Namespace):
    """The ``peft.LoraConfig`` rlhfctl's ``[lora]`` with the same r and alpha means (all-linear, no dropout)."""
    if args.lora_r is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def save_merged(model, tokenizer, folder: str | None) -> None:
    """Write ``model`` (a peft model merged into its base first) and ``tokenizer`` to ``folder``."""
    if not folder:
        return
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def ensure_pad_token(tokenizer) -> None:
    """What a TRL user does with a tokenizer without a pad token (Llama's): pad with EOS."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def quiet_transformers() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def step_timer_callback(step_end_times: list[float]):
    """A ``TrainerCallback`` appending ``time.perf_counter()`` at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_end_times.append(time.perf_counter())

    return StepTimer()


def write_result(path: str | Path, result: dict) -> None:
    result = dict(result)
    import torch

    result.setdefault("torch_threads", torch.get_num_threads())
    Path(path).write_text(json.dumps(result, indent=2), encoding="utf-8")


def items_per_step(total_items: int, batch_size: int, steps: int) -> list[int]:
    """Items of each step: full batches, the last one possibly partial (one epoch of a dataloader)."""
    sizes = [min(batch_size, max(0, total_items - step * batch_size)) for step in range(steps)]
    return sizes


def load_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def preference_dataset(path: str | Path):
    """The benchmark's RM pairs as TRL's preference rows (``prompt``, ``chosen``, ``rejected``): RM and DPO."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["instruction"], "chosen": r["chosen"], "rejected": r["rejected"]}
                              for r in load_jsonl(path)])


def policy_and_reward_model(args):
    """``(tokenizer, reward_tokenizer, policy, reward_model)`` of an on-policy run (``--policy``,
    ``--reward-model``): the policy's tokenizer pads on the left for generation: RLOO and GRPO."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    tokenizer.padding_side = "left"
    reward_tokenizer = AutoTokenizer.from_pretrained(args.reward_model)
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1)
    reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
    return tokenizer, reward_tokenizer, policy, reward_model
