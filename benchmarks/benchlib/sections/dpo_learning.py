"""DPO learning: held-out implicit-reward accuracy of ``rlhfctl dpo train`` and TRL's DPOTrainer, scored by one judge.

The DPO speed section's pairs are too easy to tell the tools apart (both reach 1.00 on its held-out pairs). Here
both tools start from the SFT policy of the PPO learning check (:mod:`benchlib.learning`) and train on its
length-balanced pairs: chosen and rejected replies to the same question have the same number of sentences of
matched lengths and differ only in how many of them are helpful (the SFT policy writes both kinds, half and half),
so neither length nor style gives a pair away. For every seed and step count, each tool trains one run of
``steps`` optimizer steps on the same pairs (the first ``steps x 8`` of a seed-shuffled order of the training
pairs; the seed is also each tool's own seed: its data order) with the DPO section's settings (global batch 8,
lr 1e-4, linear schedule to 0 without warm-up, clipping 1.0, beta 0.1, sigmoid loss, dropout off, the SFT policy
as the frozen reference). One step on the same 8 pairs leaves nothing to batch order: there the two tools'
policies must agree to float rounding if their losses, reference log-probs and optimizer steps do.

Two held-out sets, 256 pairs each, no run trains on them: ``in-distribution`` (the learning check's validation
pairs: the training sentences in other pairs; both tools reach 0.96-1.00 after 8 steps) and ``novel sentences``
(the same kind of pairs written with helpful and unhelpful sentences that no training pair contains: the policy
must carry what it learned over to new wording, :func:`novel_sentence_pairs`). The accuracy is not each tool's
own metric: one judge (``benchlib/heldout.py dpo``, plain transformers) reads each exported policy and the
reference and computes ``beta * (log pi - log pi_ref)`` summed over the reply's tokens and EOS for chosen and
rejected. A pair counts when the chosen reward is strictly higher (both tools' rule; the untrained policy scores
0 = 0, i.e. 0 %; chance is 50 %). Both tools validate on the novel pairs too; their own ``rewards/accuracies``
are kept in the details as a cross-check of the judge.

Not timing: run under ``/work/wt/bin/shared`` (``run.py --only dpo-learning``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from benchlib import learning, stats
from benchlib.sections import SectionResult
from benchlib.sections.dpo import BETA, GLOBAL_BATCH, LEARNING_RATE, MAX_LENGTH, dpo_config, heldout_accuracy
from benchlib.stats import Row
from benchlib.tools import (BENCH_DIR, REPO_ROOT, TRL_CURRENT_DIR, BenchContext, ToolRun, rlhfctl_available,
                            rlhfctl_env, run_rlhfctl_train, run_trl_script)
from benchlib.workspace import write_jsonl

STEP_COUNTS = (1, 8, 32, 128)
SEEDS = (0, 1, 2)
JUDGE = BENCH_DIR / "benchlib" / "heldout.py"
HELDOUT_PAIRS = 256
# Sentences no training pair contains, of about the lengths of benchlib.learning's; each kind shares a few words
# with the training sentences of its kind ("help", "not", "Nobody", "silly"), so some of what DPO learned carries.
NOVEL_HELPFUL = (
    "Take your time when you {verb} your {thing}.",
    "A short video can show you how to {verb} your {thing}.",
    "I am glad to help you {verb} your {thing} well.",
    "Sure, here is how to {verb} your {thing} safely.",
)
NOVEL_UNHELPFUL = (
    "I do not want to {verb} your {thing} at all.",
    "Stop asking how to {verb} your {thing}, it is dull.",
    "Nobody will help you {verb} your {thing} here.",
    "That is a silly way to ask about your {thing}.",
)


def novel_sentence_pairs(path: Path, count: int = HELDOUT_PAIRS, seed: int = 0) -> Path:
    """``count`` pairs built as the learning check's (same questions, 1-3 sentences each side, chosen has more
    helpful ones) from :data:`NOVEL_HELPFUL` and :data:`NOVEL_UNHELPFUL` (written once, deterministic)."""
    if path.exists():
        return path
    rng = random.Random(seed)

    def reply(sentences: int, helpful: int, verb: str, thing: str) -> str:
        kinds = [NOVEL_HELPFUL] * helpful + [NOVEL_UNHELPFUL] * (sentences - helpful)
        rng.shuffle(kinds)
        return " " + " ".join(rng.choice(pool).format(verb=verb, thing=thing) for pool in kinds)

    rows = []
    for _ in range(count):
        verb, thing = rng.choice(learning.VERBS), rng.choice(learning.THINGS)
        question = rng.choice(learning.QUESTIONS).format(verb=verb, thing=thing)
        sentences = rng.randint(1, learning.MAX_SENTENCES)
        worse, better = sorted(rng.sample(range(sentences + 1), 2))
        rows.append({"instruction": learning.hh_prompt(question), "chosen": reply(sentences, better, verb, thing),
                     "rejected": reply(sentences, worse, verb, thing)})
    write_jsonl(path, rows)
    return path


def training_pairs(all_pairs: Path, folder: Path, seed: int, steps: int) -> Path:
    """The first ``steps x GLOBAL_BATCH`` pairs of ``all_pairs`` in a ``seed``-shuffled order (written once): a
    seed's shorter runs train on a prefix of its longer runs' pairs."""
    path = folder / f"pairs-seed{seed}-{steps}steps.jsonl"
    if not path.exists():
        rows = [json.loads(line) for line in all_pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
        random.Random(seed).shuffle(rows)
        needed = steps * GLOBAL_BATCH
        if needed > len(rows):
            raise ValueError(f"{steps} steps need {needed} pairs; {all_pairs} has {len(rows)}")
        write_jsonl(path, rows[:needed])
    return path


def judge_accuracy(policy_dir: Path, reference_dir: Path, pairs: Path) -> dict:
    """``heldout.py dpo --rewards`` in its own process: ``{"accuracy", "margin", "pairs", "rewards"}``."""
    command = [sys.executable, str(JUDGE), "dpo", str(policy_dir), str(reference_dir), str(pairs), "--beta",
               str(BETA), "--rewards"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=rlhfctl_env(),
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def largest_reward_difference(mine: dict | None, theirs: dict | None) -> float | None:
    """The largest ``|reward_rlhfctl - reward_trl|`` over every reply of one held-out set (judge verdicts with
    ``"rewards"``): ~1e-6 when the two policies are the same up to float rounding."""
    if not mine or not theirs:
        return None
    return max(abs(a - b) for pair_a, pair_b in zip(mine["rewards"], theirs["rewards"]) for a, b in zip(pair_a, pair_b))


def exported_policy(run: ToolRun) -> Path | None:
    """Where the run saved its trained policy (HF format): rlhfctl's export, TRL's ``save_model`` folder."""
    if not run.ok or run.run_dir is None:
        return None
    return run.run_dir / ("export" if run.tool == "rlhfctl" else "output/final")


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("dpo-learning")
    root = ctx.work / "learning"
    data = learning.write_learning_data(root / "data")
    start = learning.prepare_models(root, data, rlhfctl_env(), REPO_ROOT)
    heldout_sets = {"novel sentences": novel_sentence_pairs(root / "dpo" / "heldout-novel-sentences.jsonl"),
                    "in-distribution": data.rm_validation}
    validation = heldout_sets["novel sentences"]
    available, reason = rlhfctl_available("dpo", "train")
    judged: dict[str, dict[int, list[dict]]] = {"rlhfctl": {}, "trl": {}}  # tool -> steps -> one verdict per seed
    for steps in STEP_COUNTS:
        for seed in SEEDS:  # A B per seed
            train_file = training_pairs(data.rm_train, root / "dpo", seed, steps)
            label = f"dpo-learning-{steps}steps-seed{seed}"
            if available:
                config = dpo_config(start.sft, train_file, validation)
                config["general"]["seed"] = seed
                mine = run_rlhfctl_train(ctx, "dpo", f"{label}-rlhfctl", config, items_per_step=GLOBAL_BATCH)
            else:
                mine = ToolRun("rlhfctl", "1 worker x 2 CPU", None, error=reason)
            trl_args = ["--model", str(start.sft), "--train", str(train_file), "--validation", str(validation),
                        "--batch-size", str(GLOBAL_BATCH), "--max-length", str(MAX_LENGTH), "--learning-rate",
                        str(LEARNING_RATE), "--beta", str(BETA), "--threads", "2", "--seed", str(seed)]
            theirs = run_trl_script(ctx, "trl_dpo.py", f"{label}-trl", trl_args, trl_dir=TRL_CURRENT_DIR)
            verdicts = {}
            for tool_run in (mine, theirs):
                verdict = {"seed": seed, "own_accuracy_novel": heldout_accuracy(tool_run), "error": tool_run.error}
                policy = exported_policy(tool_run)
                for name, pairs in heldout_sets.items():
                    verdict[name] = judge_accuracy(policy, start.sft, pairs) if policy else None
                verdicts[tool_run.tool] = verdict
            for name in heldout_sets:  # reply by reply, then only the figures are kept
                difference = largest_reward_difference(verdicts["rlhfctl"][name], verdicts["trl"][name])
                for verdict in verdicts.values():
                    if verdict[name]:
                        verdict[name].pop("rewards")
                        verdict[name]["largest_reward_difference"] = difference
            for tool, verdict in verdicts.items():
                judged[tool].setdefault(steps, []).append(verdict)
                print(f"[bench] dpo-learning {steps} steps, seed {seed}, {tool}: {verdict}", file=sys.stderr,
                      flush=True)
    for steps in STEP_COUNTS:
        for name in heldout_sets:
            result.rows.append(_accuracy_row(judged, steps, name, "accuracy"))
        result.rows.append(_accuracy_row(judged, steps, "novel sentences", "margin"))
        differences = [(verdict.get("novel sentences") or {}).get("largest_reward_difference")
                       for verdict in judged["rlhfctl"].get(steps, [])]
        result.rows.append(Row(
            "DPO learning",
            f"largest per-reply reward difference rlhfctl - TRL, novel sentences, after {_steps(steps)}",
            "beta x nats", stats.median(differences), None,
            "median over seeds of max |reward_rlhfctl - reward_trl| over the 512 replies (float rounding: ~1e-6; "
            "grows with the steps as the tools' batch orders differ); per seed "
            + ", ".join("n/a" if value is None else f"{value:.2g}" for value in differences),
            higher_is_better=False))
    result.details = {"sft_policy": str(start.sft), "heldout": {name: str(path) for name, path in heldout_sets.items()},
                      "seeds": list(SEEDS), "step_counts": list(STEP_COUNTS), "judged": judged}
    return result


def _accuracy_row(judged: dict, steps: int, heldout_set: str, figure: str) -> Row:
    """The median over seeds of one judged figure (``accuracy`` or ``margin``) on one held-out set, per tool."""
    per_seed = {tool: [(verdict.get(heldout_set) or {}).get(figure) for verdict in judged[tool].get(steps, [])]
                for tool in ("rlhfctl", "trl")}
    listed = {tool: ", ".join("n/a" if value is None else f"{value:.3f}" for value in values)
              for tool, values in per_seed.items()}
    name = ("implicit-reward accuracy" if figure == "accuracy" else "mean reward margin")
    return Row("DPO learning", f"held-out {name}, {heldout_set}, after {_steps(steps)} (one judge)",
               "fraction" if figure == "accuracy" else "beta x nats",
               stats.median(per_seed["rlhfctl"]), stats.median(per_seed["trl"]),
               f"median of seeds {', '.join(map(str, SEEDS))}: rlhfctl {listed['rlhfctl']}; TRL {listed['trl']}; "
               f"{steps * GLOBAL_BATCH} training pairs, {HELDOUT_PAIRS} held-out",
               samples={tool: [value for value in values if value is not None] for tool, values in per_seed.items()})


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"
