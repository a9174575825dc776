"""Issue #19's PPO learning check: reward gain per nat of KL on held-out prompts, rlhfctl next to TRL 1.12.

    python benchmarks/learn_ppo.py prepare                   # data, SFT policy, reward model, SFT baseline (~1 min)
    python benchmarks/learn_ppo.py run --tool rlhfctl --seed 0
    python benchmarks/learn_ppo.py run --tool trl --seed 0
    python benchmarks/learn_ppo.py table                     # every recorded run as a Markdown table

``run --tool rlhfctl`` writes the PPO config with ``rlhfctl init --stage ppo --defaults``, setting only the paths,
``--learning-rate 1e-4`` and ``--epochs 4`` (512 prompts x 4 = 2,048 episodes), then runs
``rlhfctl ppo train CONFIG general.seed=SEED --quiet`` (``--set key=value`` adds overrides, for experiments; the
table marks such runs). ``run --tool trl`` runs TRL 1.12.0's PPOTrainer (``trl_scripts/trl_ppo.py``) for 1,024
episodes: lr 1e-4, kl coefficient 0.05, 8 rollouts per update, 4 PPO epochs, 32-token responses at T 0.7, the
value model from the reward model, ``seed = SEED``, the policy saved at the end (inside the timed run).

Wall time: process start to exit, as the harness sees it (run under ``/work/wt/bin/quiet`` for figures that
count). The check (``benchlib/learning.py``): each trained policy samples 4 responses to each of 64 held-out prompts
at T = 1.0; gain = (mean RM score - the SFT policy's) / std of the SFT policy's scores; KL = mean over responses of
sum_t log pi(y_t) - log pi_sft(y_t) for the sampled tokens. Every run is appended to
``benchmarks/results/learning/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import learning  # noqa: E402
from benchlib.procmon import run_measured  # noqa: E402
from benchlib.tools import BENCH_DIR, REPO_ROOT, TRL_PPO_DIR, TRL_SCRIPTS, trl_available, trl_env  # noqa: E402

WORK = BENCH_DIR / "results" / "learning"
RESULTS = WORK / "runs.jsonl"
SAMPLES_PER_PROMPT = 4
CHECK_SEED = 1234
RLHFCTL_EPISODES = 4 * learning.TRAIN_PROMPTS  # epochs = 4
TRL_EPISODES = 1024
TRL_SETTINGS = {"learning_rate": 1e-4, "kl_coef": 0.05, "rollouts_per_update": 8, "ppo_epochs": 4,
                "response_length": 32, "temperature": 0.7}


def rlhfctl_env() -> dict[str, str]:
    """This checkout's rlhfctl for the CLI and every Ray worker it starts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def prepare() -> tuple[learning.LearningData, learning.StartingPoint]:
    data = learning.write_learning_data(WORK / "data")
    start = learning.prepare_models(WORK, data, rlhfctl_env(), REPO_ROOT)
    return data, start


def heldout_prompts(data: learning.LearningData) -> list[str]:
    return [json.loads(line)["prompt"] for line in data.heldout.read_text(encoding="utf-8").splitlines() if line]


def sft_baseline(data: learning.LearningData, start: learning.StartingPoint) -> learning.PolicyCheck:
    path = WORK / f"baseline_sft_{SAMPLES_PER_PROMPT}x{learning.HELDOUT_PROMPTS}_seed{CHECK_SEED}.json"
    if path.exists():
        return learning.PolicyCheck(**json.loads(path.read_text(encoding="utf-8")))
    check = learning.evaluate_policy(start.sft, start.sft, start.rm, heldout_prompts(data),
                                     samples_per_prompt=SAMPLES_PER_PROMPT, seed=CHECK_SEED)
    path.write_text(json.dumps(asdict(check)), encoding="utf-8")
    return check


def rlhfctl_run(run_dir: Path, data: learning.LearningData, start: learning.StartingPoint, seed: int,
                overrides: list[str]):
    config = run_dir / "ppo.toml"
    init = [sys.executable, "-m", "rlhfctl", "init", "--stage", "ppo", "--defaults", "--force", "-o", str(config),
            "--model", str(start.kit), "--model-pretrain", str(start.sft), "--rm-model", str(start.kit),
            "--rm-pretrain", str(start.rm), "--train-file", str(data.ppo_train),
            "--validation-file", str(data.heldout), "--output-dir", str(run_dir / "output"),
            "--checkpoint-dir", str(run_dir / "export"), "--learning-rate", "1e-4", "--epochs", "4"]
    subprocess.run(init, env=rlhfctl_env(), cwd=REPO_ROOT, check=True, capture_output=True)
    command = [sys.executable, "-m", "rlhfctl", "ppo", "train", str(config), f"general.seed={seed}", *overrides,
               "--quiet", "--force"]
    measured = run_measured(command, env=rlhfctl_env(), cwd=REPO_ROOT, timeout_s=1800,
                            log_file=run_dir / "log.txt", sample_interval_s=5.0)
    return measured, run_dir / "export", RLHFCTL_EPISODES


def trl_run(run_dir: Path, data: learning.LearningData, start: learning.StartingPoint, seed: int):
    available, reason = trl_available(TRL_PPO_DIR)
    if not available:
        raise SystemExit(reason)
    s = TRL_SETTINGS
    command = [sys.executable, str(TRL_SCRIPTS / "trl_ppo.py"), "--policy", str(start.sft),
               "--reward-model", str(start.rm), "--prompts", str(data.ppo_train), "--episodes", str(TRL_EPISODES),
               "--response-length", str(s["response_length"]), "--temperature", str(s["temperature"]),
               "--learning-rate", str(s["learning_rate"]), "--kl-coef", str(s["kl_coef"]),
               "--rollouts-per-update", str(s["rollouts_per_update"]), "--ppo-epochs", str(s["ppo_epochs"]),
               "--seed", str(seed), "--save-merged", str(run_dir / "export"), "--out", str(run_dir / "output"),
               "--result", str(run_dir / "result.json")]
    measured = run_measured(command, env=trl_env(TRL_PPO_DIR), cwd=run_dir, timeout_s=1800,
                            log_file=run_dir / "log.txt", sample_interval_s=5.0)
    return measured, run_dir / "export", TRL_EPISODES


def run(tool: str, seed: int, overrides: list[str], label: str | None) -> dict:
    data, start = prepare()
    baseline = sft_baseline(data, start)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = WORK / "runs" / f"{stamp}-{tool}-seed{seed}"
    run_dir.mkdir(parents=True)
    if tool == "rlhfctl":
        measured, export, episodes = rlhfctl_run(run_dir, data, start, seed, overrides)
    else:
        measured, export, episodes = trl_run(run_dir, data, start, seed)
    if not measured.ok:
        raise SystemExit(f"{tool} run failed (exit {measured.returncode}); see {run_dir / 'log.txt'}:\n"
                         f"{measured.output_tail[-2000:]}")
    check = learning.evaluate_policy(export, start.sft, start.rm, heldout_prompts(data),
                                     samples_per_prompt=SAMPLES_PER_PROMPT, seed=CHECK_SEED)
    record = {
        "time": stamp, "tool": tool, "seed": seed, "label": label or ("defaults" if not overrides else "custom"),
        "overrides": overrides, "episodes": episodes, "wall_time_s": round(measured.wall_time_s, 2),
        "peak_pss_gb": round(measured.peak_pss_gb, 3), "sigma_gain": round(learning.sigma_gain(check, baseline), 4),
        "kl_nats": round(check.kl_mean, 4), "score_mean": round(check.score_mean, 4),
        "sft_score_mean": round(baseline.score_mean, 4), "sft_score_std": round(baseline.score_std, 4),
        "eos_rate": round(check.eos_rate, 3), "length_mean": round(sum(check.lengths) / len(check.lengths), 2),
        "commit": _commit(), "run_dir": str(run_dir), "load_average": os.getloadavg()[0],
        "samples": check.samples[:3],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return record


def _commit() -> str:
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True).stdout.strip()
    return completed.stdout.strip() + ("+dirty" if dirty else "")


def table(records: list[dict]) -> str:
    lines = ["| tool | label | seed | episodes | sigma gain | KL (nats) | wall time (s) | EOS rate | mean length | "
             "overrides |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rec in records:
        lines.append(f"| {rec['tool']} | {rec['label']} | {rec['seed']} | {rec['episodes']} | "
                     f"{rec['sigma_gain']:+.2f} | {rec['kl_nats']:.2f} | {rec['wall_time_s']:.0f} | "
                     f"{rec['eos_rate']:.2f} | {rec['length_mean']:.1f} | {' '.join(rec['overrides'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="Data, SFT policy, reward model and the SFT baseline (cached).")
    run_parser = commands.add_parser("run", help="One PPO run of one tool and seed, then the held-out check.")
    run_parser.add_argument("--tool", choices=("rlhfctl", "trl"), required=True)
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="rlhfctl only: an extra config override (experiments; the defaults run has none).")
    run_parser.add_argument("--label", help="Name of this variant in the table.")
    table_parser = commands.add_parser("table", help="The recorded runs as a Markdown table.")
    table_parser.add_argument("--label", help="Only runs with this label.")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        data, start = prepare()
        baseline = sft_baseline(data, start)
        print(json.dumps({"rm_accuracy": start.rm_accuracy, "sft_score_mean": baseline.score_mean,
                          "sft_score_std": baseline.score_std, "sft_eos_rate": baseline.eos_rate}))
    elif args.command == "run":
        if args.tool == "trl" and args.overrides:
            parser.error("--set applies to rlhfctl runs only")
        record = run(args.tool, args.seed, args.overrides, args.label)
        print(json.dumps({key: value for key, value in record.items() if key != "samples"}))
    else:
        records = [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]
        print(table([rec for rec in records if args.label is None or rec["label"] == args.label]))


if __name__ == "__main__":
    main()
