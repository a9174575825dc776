"""LoRA: rlhfctl's ``[lora]`` next to full-parameter rlhfctl and TRL + the same peft ``LoraConfig``.

Three sections (each well under 10 minutes on 2 cores, so they can run one at a time):

- ``lora-ppo`` (memory and speed): PPO on a 46 M-parameter Llama-shaped model (``SHAPES["small"]``: 10 layers,
  hidden 640, grouped-query attention), the PPO section's workload (8 rollouts per update, 4 PPO epochs, 32-token
  responses): rlhfctl full-parameter, rlhfctl LoRA, TRL 1.12.0 PPOTrainer + peft. Peak PSS of the process tree and
  steady-state episodes/s.
- ``lora-sft`` (learning): the same r, alpha, learning rate and steps through rlhfctl and TRL's SFTTrainer + peft on
  a ~5 M-parameter Llama (``MINI``); the drop of held-out NLL per response token, judged by
  ``benchlib/heldout.py`` (plain transformers) on each tool's merged model.
- ``lora-ppo-learning``: from one SFT policy and one reward model (rlhfctl, full-parameter, built once), LoRA PPO
  through rlhfctl and TRL 1.12.0 + peft, same settings and objective (raw scores, a fixed KL coefficient); the
  change of held-out reward (4 sampled responses to each of 64 held-out prompts, scored by that reward model), over
  ``ctx.repeats`` seeds.

The Llama models carry no chat template here (prompts are used as plain text, as TRL does with prompt/completion
rows), and their tokenizer has no pad token (TRL's side pads with EOS, as its users do).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchlib import stats, workspace
from benchlib.sections import SectionResult, median_of, samples_of
from benchlib.sections.ppo import KL_COEF, PPO_EPOCHS, RESPONSE_LENGTH, ROLLOUTS_PER_UPDATE, TEMPERATURE, ppo_config
from benchlib.sections.sft import sft_config
from benchlib.stats import Row
from benchlib.tools import BENCH_DIR, REPO_ROOT, BenchContext, ToolRun, run_rlhfctl_train, run_trl_script

LORA = {"r": 8, "alpha": 16.0}
MINI = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 688, "vocab": 4096, "window": 128}
SFT_ROWS, SFT_LR = 512, 1e-3
PPO_LEARNING_LR, PPO_LEARNING_EPISODES = 3e-4, 128


def llama(ctx: BenchContext, name: str) -> Path:
    """The Llama-shaped kit model ``name`` ("small": 46 M, "mini": ~5 M), without a chat template, built once."""
    from rlhfctl.example.architectures import SHAPES, Shape, build_architecture_kit

    out_dir = ctx.work / "models" / f"llama-{name}"
    if not (out_dir / "config.json").exists():
        shape = SHAPES["small"] if name == "small" else Shape(**MINI)
        build_architecture_kit(out_dir, "llama", corpus_files=[ctx.data.rm_train, ctx.data.sft_train], shape=shape,
                               chat_template=False)
    return out_dir


def _heldout(*args: str) -> dict:
    """``benchlib/heldout.py`` in its own process (torch stays out of the harness)."""
    done = subprocess.run([sys.executable, str(BENCH_DIR / "benchlib" / "heldout.py"), *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=1800, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _subset(source: Path, target: Path, count: int, *, field_map: dict[str, str] | None = None) -> Path:
    if not target.exists():
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()[:count]]
        if field_map:
            rows = [{new: row[old] for new, old in field_map.items()} for row in rows]
        workspace.write_jsonl(target, rows)
    return target


# ----------------------------------------------------------------------------------------------- memory and speed


def run_ppo(ctx: BenchContext) -> SectionResult:
    result = SectionResult("lora-ppo")
    model = llama(ctx, "mini" if ctx.quick else "small")
    episodes = 16 if ctx.quick else 32
    prompts = _subset(ctx.data.ppo_prompts, ctx.work / "data" / f"ppo_prompts_first_{episodes}.jsonl", episodes)
    full, lora, trl = [], [], []
    for _ in range(ctx.repeats):
        full.append(run_rlhfctl_train(ctx, "ppo", "lora-ppo-rlhfctl-full", ppo_config(model, prompts),
                                      items_per_step=ROLLOUTS_PER_UPDATE))
        lora.append(run_rlhfctl_train(ctx, "ppo", "lora-ppo-rlhfctl-lora", {**ppo_config(model, prompts),
                                                                            "lora": dict(LORA)},
                                      items_per_step=ROLLOUTS_PER_UPDATE))
        trl.append(run_trl_script(ctx, "trl_ppo.py", "lora-ppo-trl-peft", [
            "--policy", str(model), "--reward-model", str(model), "--prompts", str(prompts), "--episodes",
            str(episodes), "--response-length", str(RESPONSE_LENGTH), "--temperature", str(TEMPERATURE),
            "--learning-rate", "1e-6", "--rollouts-per-update", str(ROLLOUTS_PER_UPDATE), "--ppo-epochs",
            str(PPO_EPOCHS), "--kl-coef", str(KL_COEF), "--lora-r", str(LORA["r"]), "--lora-alpha",
            str(LORA["alpha"]), "--threads", "2"]))
    params = workspace.count_parameters(model).total
    section, note = "LoRA PPO", f"Llama {params / 1e6:.0f} M params, {episodes} episodes, r={LORA['r']}"
    errors = "; ".join(run.error for run in full + lora + trl if run.error)
    result.rows += [
        Row(section, "peak PSS, LoRA vs full-parameter rlhfctl", "GB", median_of(lora, "peak_pss_gb"), None,
            f"{note}; full-parameter rlhfctl: {stats.format_value(median_of(full, 'peak_pss_gb'))} GB, LoRA/full = "
            f"{stats.format_ratio(stats.ratio(median_of(lora, 'peak_pss_gb'), median_of(full, 'peak_pss_gb')))} "
            "(target <= 0.5x)" + (f"; {errors}" if errors else ""), higher_is_better=False,
            samples={"rlhfctl_lora": samples_of(lora, "peak_pss_gb"), "rlhfctl_full": samples_of(full, "peak_pss_gb")}),
        Row(section, "peak PSS, process tree (LoRA both)", "GB", median_of(lora, "peak_pss_gb"),
            median_of(trl, "peak_pss_gb"), "TRL 1.12.0 PPOTrainer + peft (same LoraConfig; TRL trains its value "
            "model in full); target <= 1.0x", higher_is_better=False,
            samples={"rlhfctl": samples_of(lora, "peak_pss_gb"), "trl": samples_of(trl, "peak_pss_gb")}),
        Row(section, "steady-state episodes/s (LoRA both)", "episodes/s", median_of(lora, "steady_rate"),
            median_of(trl, "steady_rate"), "target >= 2x", samples={"rlhfctl": samples_of(lora, "steady_rate"),
                                                                     "trl": samples_of(trl, "steady_rate")}),
        Row(section, "steady-state episodes/s, full-parameter rlhfctl", "episodes/s", median_of(full, "steady_rate"),
            None, "context: the same run without [lora]"),
        Row(section, "end-to-end wall time (LoRA both)", "s", median_of(lora, "wall_time_s"),
            median_of(trl, "wall_time_s"), "process start to exit", higher_is_better=False),
    ]
    result.details["ppo"] = {"parameters": params, "episodes": episodes, "full": [r.summary() for r in full],
                             "lora": [r.summary() for r in lora], "trl": [r.summary() for r in trl]}
    return result


def run_ppo_kit(ctx: BenchContext) -> SectionResult:
    """``lora-ppo-kit``: the PPO section's own workload and models (the kit's tiny and small GPT-2 shapes, 256 and
    64 episodes) with the same ``LoraConfig`` on both tools: the LoRA counterpart of the PPO section's speed rows."""
    result = SectionResult("lora-ppo-kit")
    sizes = [("tiny", 128 if ctx.quick else 256)] + ([] if ctx.quick or ctx.ppo_tiny_only else [("small", 64)])
    for preset, episodes in sizes:
        model = ctx.models[preset]
        prompts = _subset(ctx.data.ppo_prompts, ctx.work / "data" / f"ppo_prompts_first_{episodes}.jsonl", episodes)
        mine, theirs = [], []
        for _ in range(ctx.repeats):
            mine.append(run_rlhfctl_train(ctx, "ppo", f"lora-ppo-{preset}-rlhfctl", {**ppo_config(model, prompts),
                                                                                    "lora": dict(LORA)},
                                          items_per_step=ROLLOUTS_PER_UPDATE))
            theirs.append(run_trl_script(ctx, "trl_ppo.py", f"lora-ppo-{preset}-trl-peft", [
                "--policy", str(model), "--reward-model", str(model), "--prompts", str(prompts), "--episodes",
                str(episodes), "--response-length", str(RESPONSE_LENGTH), "--temperature", str(TEMPERATURE),
                "--learning-rate", "1e-6", "--rollouts-per-update", str(ROLLOUTS_PER_UPDATE), "--ppo-epochs",
                str(PPO_EPOCHS), "--kl-coef", str(KL_COEF), "--lora-r", str(LORA["r"]), "--lora-alpha",
                str(LORA["alpha"]), "--threads", "2"]))
        section = f"LoRA PPO {preset}"
        params = workspace.count_parameters(model).total
        errors = "; ".join(run.error for run in mine + theirs if run.error)
        note = f"kit {preset} GPT-2 ({params / 1e6:.2f} M params), {episodes} episodes, r={LORA['r']}; " \
               "TRL 1.12.0 PPOTrainer + peft" + (f"; {errors}" if errors else "")
        result.rows += [
            Row(section, "steady-state episodes/s (LoRA both)", "episodes/s", median_of(mine, "steady_rate"),
                median_of(theirs, "steady_rate"), f"{note}; target >= 2x",
                samples={"rlhfctl": samples_of(mine, "steady_rate"), "trl": samples_of(theirs, "steady_rate")}),
            Row(section, "end-to-end wall time (LoRA both)", "s", median_of(mine, "wall_time_s"),
                median_of(theirs, "wall_time_s"), "process start to exit", higher_is_better=False),
            Row(section, "peak PSS, process tree (LoRA both)", "GB", median_of(mine, "peak_pss_gb"),
                median_of(theirs, "peak_pss_gb"), "target <= 1.0x", higher_is_better=False),
        ]
        for phase in ("generate", "score", "train"):
            result.rows.append(Row(section, f"{phase} time per update", "s",
                                   stats.median(r.phase_seconds.get(phase) for r in mine if r.ok),
                                   stats.median(r.phase_seconds.get(phase) for r in theirs if r.ok),
                                   "median over updates after the first", higher_is_better=False))
        result.details[preset] = {"parameters": params, "episodes": episodes, "rlhfctl": [r.summary() for r in mine],
                                  "trl": [r.summary() for r in theirs]}
    return result


# ----------------------------------------------------------------------------------------------- SFT learning


def run_sft(ctx: BenchContext) -> SectionResult:
    result = SectionResult("lora-sft")
    model = llama(ctx, "mini")
    rows = SFT_ROWS // 4 if ctx.quick else SFT_ROWS
    train = _subset(ctx.data.sft_train, ctx.work / "data" / f"sft_first_{rows}.jsonl", rows)
    heldout = _subset(ctx.data.rm_validation, ctx.work / "data" / "sft_heldout.jsonl", 128,
                      field_map={"instruction": "instruction", "response": "chosen"})
    before = _heldout("nll", str(model), str(heldout))
    mine, theirs, details = [], [], []
    for seed in range(ctx.repeats):  # learning differs by data order: one seed per repeat, the same for both tools
        config = {**sft_config(model, train), "lora": dict(LORA)}
        config["training"]["learning_rate"] = SFT_LR
        config["general"]["seed"] = seed
        run = run_rlhfctl_train(ctx, "sft", "lora-sft-rlhfctl", config, items_per_step=8)
        export = ctx.work / "runs" / ctx.invocation
        export = sorted(export.glob("*-lora-sft-rlhfctl"))[-1] / "export"
        mine.append(_heldout("nll", str(export), str(heldout)) if run.ok else {"error": run.error})
        trl_run = run_trl_script(ctx, "trl_sft.py", "lora-sft-trl-peft", [
            "--model", str(model), "--train", str(train), "--batch-size", "8", "--max-length", "128",
            "--learning-rate", str(SFT_LR), "--lora-r", str(LORA["r"]), "--lora-alpha", str(LORA["alpha"]),
            "--threads", "2", "--save-merged", "merged", "--seed", str(seed)])
        merged = sorted((ctx.work / "runs" / ctx.invocation).glob("*-lora-sft-trl-peft"))[-1] / "merged"
        theirs.append(_heldout("nll", str(merged), str(heldout)) if trl_run.ok else {"error": trl_run.error})
        details.append({"rlhfctl": run.summary(), "trl": trl_run.summary()})
    drops = {name: [before["nll"] - result_["nll"] for result_ in runs if "nll" in result_]
             for name, runs in (("rlhfctl", mine), ("trl", theirs))}
    result.rows.append(Row(
        "LoRA SFT", "held-out NLL drop per response token", "nats", stats.median(drops["rlhfctl"]),
        stats.median(drops["trl"]),
        f"Llama ~5 M params, {rows} rows, batch 8, 1 epoch, lr {SFT_LR}, r={LORA['r']} alpha={LORA['alpha']}, "
        f"{ctx.repeats} seed(s); base NLL {before.get('nll', float('nan')):.3f}; drops rlhfctl "
        f"{[round(d, 3) for d in drops['rlhfctl']]}, TRL {[round(d, 3) for d in drops['trl']]}; target >= 1.0x",
        samples=drops))
    result.details["sft"] = {"before": before, "rlhfctl": mine, "trl": theirs, "runs": details}
    return result


# ----------------------------------------------------------------------------------------------- PPO learning


def _sft_and_rm(ctx: BenchContext, model: Path) -> tuple[Path, Path]:
    """A full-parameter SFT policy and reward model of ``model`` through rlhfctl (built once, then re-used)."""
    root = ctx.work / "models" / "llama-mini-stages"
    sft_out, rm_out = root / "sft", root / "rm"
    if not (sft_out / "config.json").exists():
        config = sft_config(model, _subset(ctx.data.sft_train, ctx.work / "data" / "sft_first_1024.jsonl", 1024))
        config["training"]["learning_rate"] = 1e-3
        config["general"]["checkpoint_dir"] = str(sft_out)
        _run_cli(ctx, "sft", config, root / "sft_run")
    if not (rm_out / "config.json").exists():
        from benchlib.sections.rm import rm_config

        config = rm_config(model, _subset(ctx.data.rm_train, ctx.work / "data" / "rm_first_1024.jsonl", 1024),
                           ctx.data.rm_validation, workers=1, cpus_per_worker=2.0, batch_per_worker=8)
        config["training"]["learning_rate"] = 3e-4
        _run_cli(ctx, "rm", config, root / "rm_run", export=rm_out)
    return sft_out, rm_out


def _run_cli(ctx: BenchContext, stage: str, config: dict, run_dir: Path, export: Path | None = None) -> None:
    from benchlib.tools import rlhfctl_command, rlhfctl_env

    config = json.loads(json.dumps(config, default=str))
    config["general"]["output_dir"] = str(run_dir)
    if export is not None:
        config["general"]["checkpoint_dir"] = str(export)
    path = workspace.write_toml(run_dir.parent / f"{stage}.toml", config)
    subprocess.run(rlhfctl_command(stage, "train", str(path), "--quiet", "--force"), env=rlhfctl_env(), cwd=REPO_ROOT,
                   check=True, capture_output=True)


def run_ppo_learning(ctx: BenchContext) -> SectionResult:
    result = SectionResult("lora-ppo-learning")
    model = llama(ctx, "mini")
    sft_policy, reward_model = _sft_and_rm(ctx, model)
    prompts = _subset(ctx.data.ppo_prompts, ctx.work / "data" / f"ppo_prompts_first_{PPO_LEARNING_EPISODES}.jsonl",
                      PPO_LEARNING_EPISODES)
    heldout = _subset(ctx.data.rm_validation, ctx.work / "data" / "ppo_heldout_prompts.jsonl", 64,
                      field_map={"prompt": "instruction"})
    before = [_heldout("reward", str(sft_policy), str(reward_model), str(heldout), "--seed", str(seed))
              for seed in range(ctx.repeats)]
    gains: dict[str, list[float]] = {"rlhfctl": [], "trl": []}
    details = []
    for seed in range(ctx.repeats):
        config = ppo_config(model, prompts)
        config["general"].update(seed=seed, model_pretrain=str(sft_policy), rm_pretrain=str(reward_model))
        config["training"]["learning_rate"] = PPO_LEARNING_LR
        # TRL 1.12 optimises the raw score against a fixed kl_coef: the same objective here (rlhfctl's defaults
        # would divide the score by the RM's reward_stats std, 5.0 for this RM, and adapt the coefficient)
        config["training"].update(normalize_scores=False, target_kl=0.0)
        run = run_rlhfctl_train(ctx, "ppo", "lora-ppo-learn-rlhfctl", {**config, "lora": dict(LORA)},
                                items_per_step=ROLLOUTS_PER_UPDATE)
        export = sorted((ctx.work / "runs" / ctx.invocation).glob("*-lora-ppo-learn-rlhfctl"))[-1] / "export"
        mine = _heldout("reward", str(export), str(reward_model), str(heldout), "--seed", str(seed)) if run.ok else {}
        trl_run = run_trl_script(ctx, "trl_ppo.py", "lora-ppo-learn-trl-peft", [
            "--policy", str(sft_policy), "--reward-model", str(reward_model), "--prompts", str(prompts),
            "--episodes", str(PPO_LEARNING_EPISODES), "--response-length", str(RESPONSE_LENGTH), "--temperature",
            str(TEMPERATURE), "--learning-rate", str(PPO_LEARNING_LR), "--rollouts-per-update",
            str(ROLLOUTS_PER_UPDATE), "--ppo-epochs", str(PPO_EPOCHS), "--kl-coef", str(KL_COEF), "--lora-r",
            str(LORA["r"]), "--lora-alpha", str(LORA["alpha"]), "--threads", "2", "--save-merged", "merged",
            "--seed", str(seed)])
        merged = sorted((ctx.work / "runs" / ctx.invocation).glob("*-lora-ppo-learn-trl-peft"))[-1] / "merged"
        theirs = (_heldout("reward", str(merged), str(reward_model), str(heldout), "--seed", str(seed))
                  if trl_run.ok else {})
        baseline = before[seed].get("reward")
        for name, measured in (("rlhfctl", mine), ("trl", theirs)):
            if "reward" in measured and baseline is not None:
                gains[name].append(measured["reward"] - baseline)
        details.append({"seed": seed, "before": before[seed], "rlhfctl": mine, "trl": theirs,
                        "rlhfctl_run": run.summary(), "trl_run": trl_run.summary()})
    spread = stats.median(entry["before"].get("reward_std") for entry in details)
    result.rows.append(Row(
        "LoRA PPO", "held-out reward gain over the SFT policy", "reward", stats.median(gains["rlhfctl"]),
        stats.median(gains["trl"]),
        f"Llama ~5 M params, {PPO_LEARNING_EPISODES} episodes, lr {PPO_LEARNING_LR}, r={LORA['r']}, raw scores, "
        f"fixed kl_coef {KL_COEF}, "
        f"{ctx.repeats} seed(s); gains rlhfctl {[round(g, 3) for g in gains['rlhfctl']]}, TRL "
        f"{[round(g, 3) for g in gains['trl']]}; per-response reward std ~{spread and round(spread, 2)} "
        "(256 responses: standard error ~std/16)", samples=gains))
    result.details["ppo_learning"] = details
    return result
