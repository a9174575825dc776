"""Does the harness's own monitoring slow rlhfctl's GRPO steps? The grpo section's speed run, three ways.

    python benchmarks/bench_grpo_steps.py [--episodes 1024] [--repeats 3] [--modes bare,watch,harness]

Runs ``rlhfctl grpo train`` on the ``grpo`` section's speed config (the tiny kit model as policy and reward model,
8 prompts x 4 completions per step, 32 tokens; ``benchlib.sections.grpo.grpo_config``), alternating the modes
A B C A B C:

- ``bare``: a plain subprocess; ``metrics.jsonl`` is read after it exits;
- ``watch``: the harness's ``run_measured`` with its metrics watcher (a ``stat`` every 0.05 s) and the PSS sampler
  taking one sample at start only;
- ``harness``: ``run_measured`` as the ``grpo`` section calls it (the PSS of every process of the run every 0.2 s).

``--generate N`` instead times the step's generate phase in this process, N calls (after 5 untimed): the same
model, 8 prompts x 4 completions, 32 tokens at temperature 0.7, 2 threads, ``torch.manual_seed(call)`` before each
call; it prints min / median ms and a hash of every call's tokens, so two checkouts can be compared for speed and
for sampling the same tokens (``PYTHONPATH=<checkout> python benchmarks/bench_grpo_steps.py --generate 40``).

Per run it prints the step durations from the records' own ``time`` fields (exact, as the harness uses them), the
steady-state rate the harness would compute from them (``stats.steady_state_rate``), the median step, the slowest
step and the wall time; then one JSON line with every run. Work folders go to ``--work-dir`` (the harness's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlhfctl.runfiles import METRICS_FILE  # noqa: E402

from benchlib import stats, workspace  # noqa: E402
from benchlib.metrics_watch import read_records  # noqa: E402
from benchlib.procmon import run_measured  # noqa: E402
from benchlib.sections.grpo import NUM_GENERATIONS, PROMPTS_PER_STEP, grpo_config  # noqa: E402
from benchlib.tools import BENCH_DIR, REPO_ROOT, rlhfctl_command, rlhfctl_env  # noqa: E402
from benchlib.workspace import write_toml  # noqa: E402

MODES = ("bare", "watch", "harness")
NEVER_AGAIN_S = 1e6  # a PSS sampler interval longer than any run: one sample at start, none after


def prompts_for(work: Path, episodes: int) -> Path:
    data = workspace.write_data(work / "data", rm_pairs=2048)
    path = work / "data" / f"ppo_prompts_first_{episodes // NUM_GENERATIONS}.jsonl"
    if not path.exists():
        lines = data.ppo_prompts.read_text(encoding="utf-8").splitlines()[: episodes // NUM_GENERATIONS]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_once(mode: str, run_dir: Path, model_dir: Path, prompts: Path) -> dict:
    config = grpo_config(model_dir, model_dir, prompts)
    config["general"].update(output_dir=str(run_dir / "output"), checkpoint_dir=str(run_dir / "export"))
    path = write_toml(run_dir / "grpo.toml", config)
    command = rlhfctl_command("grpo", "train", str(path), "--quiet", "--force")
    metrics = run_dir / "output" / METRICS_FILE
    if mode == "bare":
        started = time.perf_counter()
        with open(run_dir / "log.txt", "w", encoding="utf-8") as log:
            returncode = subprocess.run(command, env=rlhfctl_env(), cwd=REPO_ROOT, stdout=log,
                                        stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - started
    else:
        measured = run_measured(command, env=rlhfctl_env(), cwd=REPO_ROOT, log_file=run_dir / "log.txt",
                                watch_metrics=metrics,
                                sample_interval_s=0.2 if mode == "harness" else NEVER_AGAIN_S)
        returncode, wall = measured.returncode, measured.wall_time_s
    if returncode != 0:
        raise SystemExit(f"{mode}: exit {returncode}, see {run_dir / 'log.txt'}")
    train = [record for record in read_records(metrics) if record.get("split", "train") == "train"]
    ends = [float(record["time"]) for record in train]
    steps = [later - earlier for earlier, later in zip(ends, ends[1:])]
    completions = PROMPTS_PER_STEP * NUM_GENERATIONS
    return {
        "mode": mode, "wall_s": round(wall, 3), "steps": len(train),
        "rate_episodes_per_s": stats.steady_state_rate(ends, [completions] * len(ends)),
        "step_ms": [round(1000 * value, 1) for value in steps],
        "median_step_ms": round(1000 * stats.median(steps), 1), "slowest_step_ms": round(1000 * max(steps), 1),
    }


def time_generate(work: Path, model_dir: Path, calls: int) -> dict:
    """The generate phase of one step, in process (see the module docstring)."""
    import hashlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rlhfctl
    from rlhfctl.models.generation import SamplingSettings, generate_responses, tokenize_prompts
    from benchlib.sections.grpo import RESPONSE_LENGTH, TEMPERATURE

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = prompts_for(work, 1024).read_text(encoding="utf-8").splitlines()[:PROMPTS_PER_STEP]
    ids, mask = tokenize_prompts([json.loads(row)["prompt"] for row in rows], tokenizer, 96)
    sampling = SamplingSettings(RESPONSE_LENGTH, TEMPERATURE, 0, 1.0, True, (tokenizer.eos_token_id,),
                                tokenizer.pad_token_id)
    digest, seconds = hashlib.sha256(), []
    for call in range(-5, calls):
        torch.manual_seed(max(call, 0))
        started = time.perf_counter()
        generation = generate_responses(policy, ids, mask, sampling, repeats=NUM_GENERATIONS)
        if call >= 0:
            seconds.append(time.perf_counter() - started)
            digest.update(generation.query_responses.numpy().tobytes())
    return {"rlhfctl": str(Path(rlhfctl.__file__).parent), "calls": calls,
            "min_ms": round(1000 * min(seconds), 2), "median_ms": round(1000 * stats.median(seconds), 2),
            "tokens_sha256": digest.hexdigest()[:16]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1024, help="Completions per run (32 per step).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "results" / "work")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="Time N in-process generate calls instead of training runs.")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    work = args.work_dir.resolve()
    data = workspace.write_data(work / "data", rm_pairs=2048)
    model_dir = workspace.build_model(work / "models", "tiny", [data.rm_train, data.sft_train])  # as run.py
    if args.generate:
        print(json.dumps(time_generate(work, model_dir, args.generate)))
        return 0
    prompts = prompts_for(work, args.episodes)
    runs = []
    for repeat in range(args.repeats):
        for mode in modes:
            run_dir = work / "runs" / "grpo-steps" / f"{repeat}-{mode}"
            run_dir.mkdir(parents=True, exist_ok=True)
            result = run_once(mode, run_dir, model_dir, prompts)
            runs.append(result)
            print(f"{mode:8s} wall {result['wall_s']:.2f} s, {result['steps']} steps, rate "
                  f"{result['rate_episodes_per_s']:.0f}/s, median step {result['median_step_ms']} ms, slowest "
                  f"{result['slowest_step_ms']} ms", file=sys.stderr, flush=True)
    print(json.dumps({"episodes": args.episodes, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
