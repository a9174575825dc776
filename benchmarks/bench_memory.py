"""The memory plan against measured memory: ``--dry-run --json``'s per-worker estimate next to each worker's peak.

```bash
/work/wt/bin/quiet python benchmarks/bench_memory.py --only tiny                 # ~3 min: the framework overhead
/work/wt/bin/quiet python benchmarks/bench_memory.py --only llama-sft,llama-rm   # ~5 min each chunk
python benchmarks/bench_memory.py --list                                         # the cases
```

Each case writes an rlhfctl config, asks ``rlhfctl STAGE train CONFIG --dry-run --json`` for
``memory.per_worker_peak_bytes``, then runs ``rlhfctl STAGE train CONFIG --quiet --no-memory-check`` and samples
the PSS of every process of its tree every 0.1 s (:mod:`benchlib.process_peaks`). The measured per-worker peak is
the driver process's own peak for one worker (it runs the loop itself) and the largest Ray Train worker's
(``ray::RayTrainWorker``) for several. The estimate is meant to be within 25 % of it.

Data is generated with rows longer than ``max_length`` (prompts and responses of many sentences), so a batch is
as long as the plan assumes: the plan sizes the worst batch, ``max_length`` tokens per row. Models: rlhfctl's tiny
kit (0.15 M parameters: the framework overhead dominates) and a Llama-shaped random model of ~60 M parameters
(hidden 512, 8 layers, 8 heads, MLP 1536, a 32,000-token vocabulary of which the kit's BPE tokenizer uses 8,192:
the weights, optimizer state and full-vocabulary logits dominate); the ``llama120`` cases use a ~120 M one (hidden
768, 10 layers, 12 heads, MLP 2048), the ``llama134m`` cases a ~134 M one (12 layers). The ``-3it`` PPO cases run
three iterations (a real run's optimizer state and gradients are alive beside later updates) with the reward model
in a folder of its own (``MODEL-rm``: the backbone under a seeded score head, as an RM export), so its frozen
weights are not the policy's file pages; the older PPO cases load both from one folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

from benchlib.process_peaks import run_with_process_peaks  # noqa: E402
from benchlib.workspace import _HELPFUL, _PROMPT_CONTEXT, _QUESTION_FORMS, _TOPICS, _UNHELPFUL  # noqa: E402
from benchlib.workspace import write_jsonl, write_toml  # noqa: E402

WORK = BENCH_DIR / "results" / "work" / "memory"
GiB = 1024**3
LLAMA_SHAPE = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8,
               "intermediate_size": 1536, "vocab_size": 32000, "max_position_embeddings": 1024}
# ~120 M parameters (hidden 768, 10 layers, MLP 2048): where training state outweighs a batch's activations
LLAMA120_SHAPE = {**LLAMA_SHAPE, "hidden_size": 768, "num_hidden_layers": 10, "num_attention_heads": 12,
                  "num_key_value_heads": 12, "intermediate_size": 2048}
# ~134 M parameters: big enough that the model state (four PPO models, gradients, Adam) outweighs what every run pays
# whatever the model (Python, torch, transformers, peft imports: ~0.7 GB), which is what LoRA's saving is about
LLAMA134_SHAPE = {**LLAMA120_SHAPE, "num_hidden_layers": 12}
LLAMA_MODELS = {"llama60m": LLAMA_SHAPE, "llama120m": LLAMA120_SHAPE, "llama134m": LLAMA134_SHAPE}


# ----------------------------------------------------------------------------------------------- inputs


def _long_text(rng: random.Random, pool: list[str], topic: str, sentences: int) -> str:
    return " ".join(rng.choice(pool).format(topic=topic) for _ in range(sentences))


def write_long_data(root: Path, seed: int = 0) -> dict[str, Path]:
    """SFT rows, RM pairs and PPO prompts whose texts are far longer than 256 tokens (every batch is full)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(200):
        topic = rng.choice(_TOPICS)
        prompt = rng.choice(_QUESTION_FORMS).format(topic=topic) + " " + _long_text(rng, _PROMPT_CONTEXT, topic, 30)
        rows.append({"instruction": prompt + "\n", "chosen": " " + _long_text(rng, _HELPFUL, topic, 60),
                     "rejected": " " + _long_text(rng, _UNHELPFUL, topic, 60)})
    files = {
        "sft": write_jsonl(root / "sft.jsonl", [{"instruction": r["instruction"], "response": r["chosen"]}
                                                for r in rows[:96]]),
        "sft_validation": write_jsonl(root / "sft_validation.jsonl", [
            {"instruction": r["instruction"], "response": r["chosen"]} for r in rows[96:104]]),
        "rm": write_jsonl(root / "rm.jsonl", rows[104:152]),
        "rm_validation": write_jsonl(root / "rm_validation.jsonl", rows[152:160]),
        "ppo": write_jsonl(root / "ppo.jsonl", [{"prompt": r["instruction"]} for r in rows[160:192]]),
        "ppo_validation": write_jsonl(root / "ppo_validation.jsonl", [{"prompt": r["instruction"]}
                                                                      for r in rows[192:200]]),
        # one PPO iteration (8 prompts, one worker): the first ~134 M cases. Too short to be representative: its
        # single optimizer step comes at the end, so Adam's moments never live beside a later update's activations
        "ppo_one_iteration": write_jsonl(root / "ppo_one_iteration.jsonl", [{"prompt": r["instruction"]}
                                                                            for r in rows[160:168]]),
        # three PPO iterations (24 prompts, one worker): iterations 2 and 3 run their rollouts and updates with the
        # gradients and Adam moments of the earlier steps alive, as every real run does
        "ppo_three_iterations": write_jsonl(root / "ppo_three_iterations.jsonl", [{"prompt": r["instruction"]}
                                                                                  for r in rows[160:184]]),
    }
    return files


def build_models(root: Path, corpus: list[Path], wanted: set[str]) -> dict[str, Path]:
    """The tiny kit and the Llama-shaped models of ``wanted`` (built once, re-used); ``NAME-rm`` in ``wanted``: also
    a reward model made from ``NAME`` in its own folder (:func:`build_reward_model`)."""
    from rlhfctl.example.kit import build_model_kit, build_tokenizer, iter_corpus_texts

    models = {"tiny": root / "tiny", **{name: root / name for name in LLAMA_MODELS},
              **{f"{name}-rm": root / f"{name}-rm" for name in LLAMA_MODELS}}
    if not (models["tiny"] / "config.json").exists():
        build_model_kit(models["tiny"], corpus_files=corpus, preset="tiny", seed=0)
    for name, shape in LLAMA_MODELS.items():
        if name not in wanted or (models[name] / "config.json").exists():
            continue
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = build_tokenizer(list(iter_corpus_texts(corpus)), 8192)
        config = LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.save_pretrained(models[name], safe_serialization=True)
        tokenizer.save_pretrained(models[name])
    for name in LLAMA_MODELS:
        if f"{name}-rm" in wanted and not (models[f"{name}-rm"] / "config.json").exists():
            build_reward_model(models[name], models[f"{name}-rm"])
    return models


def build_reward_model(base: Path, target: Path) -> None:
    """A reward model as ``rlhfctl rm train`` exports one, in its own folder: ``base``'s backbone under a seeded
    one-output score head (no LM head), saved with its tokenizer. A real PPO run reads its reward model from such a
    file of its own; loading policy and reward model from one folder lets transformers' copy-on-write mappings of
    the same ``model.safetensors`` share their pages, which no real run gets (and the plan does not count)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)


# ----------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    label: str
    stage: str
    model: str  # "tiny", "llama60m", "llama120m" or "llama134m"
    workers: int
    training: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other sections, e.g. {"lora": {"r": 8}}
    needs: tuple[str, ...] = ()  # config keys this case needs ("training.gradient_checkpointing", "lora")
    ppo_prompts: str = "ppo"  # the data file a PPO case trains on ("ppo_one_iteration": 8 prompts)
    separate_reward_model: bool = False  # PPO: the reward model from its own folder (``MODEL-rm``), not the policy's

    @property
    def models(self) -> set[str]:
        """The model folders the case needs."""
        return {self.model, f"{self.model}-rm"} if self.separate_reward_model else {self.model}

    def config(self, models: dict[str, Path], data: dict[str, Path], run_dir: Path) -> dict:
        model = str(models[self.model])
        length = 128 if self.model == "tiny" else 256
        training = {"epochs": 1, "num_training_workers": self.workers,
                    "resources_per_worker": {"CPU": 2.0 / self.workers}, "learning_rate": 1e-5, **self.training}
        general = {"output_dir": str(run_dir / "output"), "checkpoint_dir": str(run_dir / "export"), "seed": 0}
        if self.stage == "ppo":
            reward_model = str(models[f"{self.model}-rm"]) if self.separate_reward_model else model
            general.update(model_name=model, rm_name=reward_model)
            training = {"experience_batch_size": 8, "batch_size": 4, "ppo_epochs": 1, **training}
            dataset = {"train_file": str(data[self.ppo_prompts]), "validation_file": str(data["ppo_validation"]),
                       "max_length": length}
            return {"stage": "ppo", "general": general, "dataset": dataset, "training": training,
                    "generation": {"max_new_tokens": 64 if self.model != "tiny" else 32}, **self.extra}
        general["base_model"] = model
        training = {"batch_size": 8 if self.stage == "sft" else 4, **training}
        dataset = {"train_file": str(data[self.stage]), "validation_file": str(data[f"{self.stage}_validation"]),
                   "max_length": length, **self.extra.get("dataset", {})}
        extra = {key: value for key, value in self.extra.items() if key != "dataset"}
        return {"stage": self.stage, "general": general, "dataset": dataset, "training": training, **extra}


GC = {"gradient_checkpointing": True}
LORA = {"lora": {"r": 8}}
FSDP = {"strategy": "fsdp"}
CASES = [
    Case("tiny-sft-1w", "sft", "tiny", 1), Case("tiny-rm-1w", "rm", "tiny", 1), Case("tiny-ppo-1w", "ppo", "tiny", 1),
    Case("tiny-sft-2w", "sft", "tiny", 2), Case("tiny-rm-2w", "rm", "tiny", 2), Case("tiny-ppo-2w", "ppo", "tiny", 2),
    Case("llama-sft-1w", "sft", "llama60m", 1), Case("llama-sft-2w", "sft", "llama60m", 2),
    Case("llama-sft-b2x512-1w", "sft", "llama60m", 1, {"batch_size": 2}, {"dataset": {"max_length": 512}}),
    Case("llama-rm-1w", "rm", "llama60m", 1), Case("llama-rm-2w", "rm", "llama60m", 2),
    Case("llama-ppo-1w", "ppo", "llama60m", 1), Case("llama-ppo-2w", "ppo", "llama60m", 2),
    Case("llama-sft-gc-1w", "sft", "llama60m", 1, GC, needs=("training.gradient_checkpointing",)),
    Case("llama-rm-gc-1w", "rm", "llama60m", 1, GC, needs=("training.gradient_checkpointing",)),
    Case("llama-ppo-gc-1w", "ppo", "llama60m", 1, GC, needs=("training.gradient_checkpointing",)),
    Case("llama-sft-lora-1w", "sft", "llama60m", 1, extra=LORA, needs=("lora",)),
    Case("llama-sft-lora-gc-1w", "sft", "llama60m", 1, GC, LORA, needs=("lora", "training.gradient_checkpointing")),
    Case("llama-ppo-lora-1w", "ppo", "llama60m", 1, extra=LORA, needs=("lora",)),
    Case("llama-ppo-lora-gc-1w", "ppo", "llama60m", 1, GC, LORA, needs=("lora", "training.gradient_checkpointing")),
    Case("llama-rm-fsdp-2w", "rm", "llama60m", 2, FSDP, needs=("training.strategy",)),
    Case("llama-ppo-fsdp-2w", "ppo", "llama60m", 2, FSDP, needs=("training.strategy",)),
    # DDP against FSDP where training state dominates: gradient checkpointing on (activations of a batch shrink
    # to one block's), then a ~120 M-parameter model (weights, gradients and Adam grow 2x, activations 1.5x)
    Case("llama-rm-gc-2w", "rm", "llama60m", 2, GC, needs=("training.gradient_checkpointing",)),
    Case("llama-rm-fsdp-gc-2w", "rm", "llama60m", 2, {**FSDP, **GC}, needs=("training.strategy",)),
    Case("llama-ppo-gc-2w", "ppo", "llama60m", 2, GC, needs=("training.gradient_checkpointing",)),
    Case("llama-ppo-fsdp-gc-2w", "ppo", "llama60m", 2, {**FSDP, **GC}, needs=("training.strategy",)),
    Case("llama120-rm-gc-2w", "rm", "llama120m", 2, GC, needs=("training.gradient_checkpointing",)),
    Case("llama120-rm-fsdp-gc-2w", "rm", "llama120m", 2, {**FSDP, **GC}, needs=("training.strategy",)),
    # full-parameter against LoRA PPO where the model state dominates (issue #15's <= 0.5x target)
    Case("llama134m-ppo-1w", "ppo", "llama134m", 1, ppo_prompts="ppo_one_iteration"),
    Case("llama134m-ppo-lora-1w", "ppo", "llama134m", 1, extra=LORA, needs=("lora",), ppo_prompts="ppo_one_iteration"),
    # the same pair as a real run has it: three iterations (Adam moments and gradients alive beside later updates'
    # activations) and a reward model in its own folder (its frozen weights are not the policy's pages)
    Case("llama134m-ppo-3it-1w", "ppo", "llama134m", 1, ppo_prompts="ppo_three_iterations",
         separate_reward_model=True),
    Case("llama134m-ppo-lora-3it-1w", "ppo", "llama134m", 1, extra=LORA, needs=("lora",),
         ppo_prompts="ppo_three_iterations", separate_reward_model=True),
    Case("llama-ppo-3it-1w", "ppo", "llama60m", 1, ppo_prompts="ppo_three_iterations", separate_reward_model=True),
    Case("llama-ppo-lora-3it-1w", "ppo", "llama60m", 1, extra=LORA, needs=("lora",),
         ppo_prompts="ppo_three_iterations", separate_reward_model=True),
]


def supported(case: Case) -> str | None:
    """None when this checkout's config schema has every key the case needs, else the missing key."""
    from rlhfctl.config.schema import CONFIG_CLASSES

    config_class = CONFIG_CLASSES[case.stage]
    for key in case.needs:
        section, _, name = key.partition(".")
        if section not in config_class.model_fields:
            return key
        if name and name not in config_class.model_fields[section].annotation.model_fields:
            return key
    return None


# ----------------------------------------------------------------------------------------------- running


def env() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    return environment


def run_case(case: Case, models: dict[str, Path], data: dict[str, Path], runs: Path) -> dict:
    import subprocess

    run_dir = runs / case.label
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config_path = write_toml(run_dir / f"{case.stage}.toml", case.config(models, data, run_dir))
    base = [sys.executable, "-m", "rlhfctl", case.stage, "train", str(config_path)]
    dry = subprocess.run([*base, "--dry-run", "--json"], capture_output=True, text=True, env=env(), cwd=REPO_ROOT,
                         timeout=300)
    if dry.returncode != 0:
        return {"case": case.label, "error": f"dry run failed: {dry.stdout[-400:]} {dry.stderr[-400:]}"}
    plan = json.loads(dry.stdout)
    memory = plan["memory"]
    command = [*base, "--quiet", "--no-memory-check"]
    # 40 minutes: the 60 M-parameter PPO cases run ~15 minutes when the 2 cores are shared with other work
    measured, peaks = run_with_process_peaks(command, env=env(), cwd=REPO_ROOT, log_file=run_dir / "log.txt",
                                             timeout_s=2400)
    result = {"case": case.label, "stage": case.stage, "model": case.model, "workers": case.workers,
              "command": " ".join(["rlhfctl", case.stage, "train", f"{case.label}.toml"]),
              "config": case.config(models, data, Path("RUN")), "estimate_bytes": memory["per_worker_peak_bytes"],
              "estimate_breakdown": memory["breakdown"], "peak_phase": memory["peak_phase"],
              "wall_time_s": round(measured.wall_time_s, 1), "tree_peak_bytes": measured.peak_pss_bytes,
              "tree_peak_breakdown_bytes": peaks.tree_peak_breakdown()}
    if not measured.ok:
        result["error"] = f"run failed (exit {measured.returncode}): {measured.output_tail[-600:]}"
        return result
    result["steady_samples_per_s"] = steady_rate(run_dir / "output")
    workers = peaks.worker_peaks_bytes if case.workers > 1 else [peaks.root_peak_bytes]
    result["worker_peaks_bytes"] = workers
    result["measured_bytes"] = max(workers) if workers else None
    if result["measured_bytes"]:
        result["ratio"] = round(result["estimate_bytes"] / result["measured_bytes"], 3)
    return result


def steady_rate(output_dir: Path) -> float | None:
    """Examples (pairs, sequences, episodes) per second between the first and the last logged train step (the
    first step, with its start-up, left out): from ``metrics.jsonl`` times and ``events.jsonl``'s step size."""
    try:
        rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
        start = [json.loads(line) for line in (output_dir / "events.jsonl").read_text().splitlines()
                 if '"start"' in line][0]
    except (OSError, ValueError, IndexError):
        return None
    train = [row for row in rows if row.get("split") == "train"]
    if len(train) < 2 or train[-1]["time"] <= train[0]["time"]:
        return None
    steps = train[-1]["step"] - train[0]["step"]
    return round(steps * start["samples_per_step"] / (train[-1]["time"] - train[0]["time"]), 3)


def table(results: list[dict]) -> str:
    lines = ["| case | stage | model | workers | estimate (GiB) | measured peak per worker (GiB) | estimate / measured "
             "| peak phase | wall (s) | whole tree peak (GiB) | steady examples/s |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for item in results:
        if "error" in item or not item.get("measured_bytes"):
            item.setdefault("error", "no worker process found")
            lines.append(f"| {item['case']} | {item.get('stage', '')} | {item.get('model', '')} | "
                         f"{item.get('workers', '')} | | | | {item['error'][:80]} | | | |")
            continue
        lines.append(f"| {item['case']} | {item['stage']} | {item['model']} | {item['workers']} | "
                     f"{item['estimate_bytes'] / GiB:.3f} | {item['measured_bytes'] / GiB:.3f} | {item['ratio']:.2f} | "
                     f"{item['peak_phase']} | {item['wall_time_s']:.0f} | {item.get('tree_peak_bytes', 0) / GiB:.2f} | "
                     f"{item.get('steady_samples_per_s') or ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case labels or prefixes (default: all)")
    parser.add_argument("--json", type=Path, help="append the results to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES:
            missing = supported(case)
            print(case.label + (f"  (needs {missing})" if missing else ""))
        return 0
    wanted = [item for item in args.only.split(",") if item]
    cases = [case for case in CASES if not wanted or any(case.label.startswith(item) for item in wanted)]
    data = write_long_data(WORK / "data")
    models = build_models(WORK / "models", [data["sft"], data["rm"]], set().union(*(case.models for case in cases)))
    runs = WORK / "runs" / time.strftime("%Y%m%d-%H%M%S")
    results = []
    for case in cases:
        missing = supported(case)
        if missing:
            results.append({"case": case.label, "error": f"skipped: this checkout has no {missing}"})
            continue
        started = time.time()
        result = run_case(case, models, data, runs)
        results.append(result)
        print(json.dumps({key: value for key, value in result.items() if key != "config"}), flush=True)
        print(f"  ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(previous + results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
