"""rlhfctl's benchmark harness: rlhfctl next to TRL and the machine's own matmul limit, in one run.

    python benchmarks/run.py --quick                      # ~10 minutes on 2 cores, tiny sizes
    python benchmarks/run.py --json benchmarks/results/latest.json
    python benchmarks/run.py --quick --only matmul,cli,rm
    python benchmarks/run.py --only lora-ppo,lora-ppo-kit --repeats 1   # LoRA sections run only when named
    python benchmarks/run.py --only dpo-learning                          # learning, not timing: only when named

Sections: matmul (machine limit), cli (start-up), convert (data convert rows/s), rm, sft, ppo, dpo, grpo (rlhfctl vs
TRL, runs alternating A B A B), scaling (1 -> 2 workers, small model); when named: the LoRA sections and
dpo-learning (held-out DPO accuracy of both tools at several step counts and seeds, one judge). Prints a Markdown
table and writes JSON.
See benchmarks/README.md for what every figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import stats, workspace  # noqa: E402
from benchlib.tools import BENCH_DIR, REPO_ROOT, BenchContext  # noqa: E402

SECTIONS = ("matmul", "cli", "convert", "rm", "sft", "ppo", "dpo", "grpo", "scaling")
TRAINING_SECTIONS = ("rm", "sft", "ppo", "dpo", "grpo", "scaling")  # MFU: these need the measured matmul peak
# Run only when named in --only (each takes several minutes): LoRA next to full-parameter rlhfctl and TRL + peft.
LORA_SECTIONS = ("lora-ppo", "lora-ppo-kit", "lora-sft", "lora-ppo-learning")
# Run only when named (24 training runs; learning figures, not timing: run them under `shared`, not `quiet`).
LEARNING_SECTIONS = ("dpo-learning",)
NAMED_ONLY = LORA_SECTIONS + LEARNING_SECTIONS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and fewer repeats (about 10 minutes).")
    parser.add_argument("--json", type=Path, help="Write every figure, sample and run detail to this JSON file.")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"Comma-separated sections to run (default: all): {','.join(SECTIONS)}.")
    parser.add_argument("--repeats", type=int, help="Runs per tool and figure (default: 2 with --quick, else 3).")
    parser.add_argument("--ppo-tiny-only", action="store_true",
                        help="PPO section: the tiny model only (its 256 episodes without --quick; no small model).")
    parser.add_argument("--install-trl", action="store_true",
                        help="Install TRL 1.12.0, current TRL and accelerate into benchmarks/.trl-* (pip --target, "
                             "--no-deps: the project environment is never changed), then exit.")
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR / "results" / "work",
                        help="Where data, model kits and run folders go (re-used between invocations).")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS + NAMED_ONLY]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS + NAMED_ONLY)}")
    args.sections = [name for name in SECTIONS + NAMED_ONLY if name in chosen]
    return args


def machine_description() -> dict:
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "logical_cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""


def tool_versions() -> dict:
    versions = {}
    for name in ("torch", "transformers", "ray", "datasets"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported as missing, not fatal
            versions[name] = None
    for label, folder in (("trl_ppo", ".trl-1.12.0"), ("trl_current", ".trl-current"),
                          ("accelerate", ".trl-accelerate")):
        found = sorted((BENCH_DIR / folder).glob("*.dist-info"))
        versions[label] = found[0].name.removesuffix(".dist-info") if found else None
    return versions


def build_context(args: argparse.Namespace) -> BenchContext:
    work = args.work_dir.resolve()
    data = workspace.write_data(work / "data", rm_pairs=2048)
    corpus = [data.rm_train, data.sft_train]
    models = {preset: workspace.build_model(work / "models", preset, corpus) for preset in ("tiny", "small")}
    repeats = args.repeats or (2 if args.quick else 3)
    invocation = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return BenchContext(quick=args.quick, ppo_tiny_only=args.ppo_tiny_only, repeats=repeats, work=work, data=data,
                        models=models, invocation=invocation)


def run_sections(ctx: BenchContext, sections: list[str]) -> list:
    from benchlib.sections import cli, dpo, dpo_learning, grpo, lora, machine, ppo, rm, scaling, sft

    runners = {"matmul": machine.run, "cli": cli.run, "convert": cli.run_convert, "rm": rm.run, "sft": sft.run,
               "ppo": ppo.run, "dpo": dpo.run, "grpo": grpo.run, "scaling": scaling.run, "lora-ppo": lora.run_ppo,
               "lora-ppo-kit": lora.run_ppo_kit,
               "lora-sft": lora.run_sft, "lora-ppo-learning": lora.run_ppo_learning,
               "dpo-learning": dpo_learning.run}
    if any(name in sections for name in TRAINING_SECTIONS) and "matmul" not in sections:
        sections = ["matmul", *sections]  # MFU needs the measured peak
    results = []
    for name in sections:
        started = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        if name in TRAINING_SECTIONS:
            machine.reprobe_fp32_peak(ctx)  # MFU uses the best peak seen so far
        section = runners[name](ctx)
        section.details["section_seconds"] = time.perf_counter() - started
        section.details["load_average_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
        print(f"[bench] {name} done in {section.details['section_seconds']:.0f} s", file=sys.stderr, flush=True)
        results.append(section)
    return results


def install_trl() -> int:
    """pip-install the TRL versions the harness compares with into their own folders (never the project env)."""
    import subprocess

    from benchlib.tools import ACCELERATE_DIR, TRL_CURRENT_DIR, TRL_PPO_DIR

    for target, requirement in ((TRL_PPO_DIR, "trl==1.12.0"), (TRL_CURRENT_DIR, "trl"),
                                (ACCELERATE_DIR, "accelerate")):
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", str(target),
                   requirement]
        print("+ " + " ".join(command), file=sys.stderr)
        if subprocess.run(command).returncode != 0:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install_trl:
        return install_trl()
    started = dt.datetime.now().astimezone()
    ctx = build_context(args)
    results = run_sections(ctx, args.sections)
    rows = [row for section in results for row in section.rows]
    for threads in (1, 2):
        best = ctx.peak_gflops.get(f"fp32@{threads}")
        if best and any(section.name in TRAINING_SECTIONS for section in results):
            rows.append(stats.Row("machine", f"fp32 peak used for MFU, {threads} thread(s)", "GFLOP/s", best, None,
                                  "best of every matmul probe in this run"))
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"rlhfctl benchmarks — {started:%Y-%m-%d %H:%M %Z}, {machine_description()['cpu']}, "
              f"{os.cpu_count()} logical CPUs — `{command.strip()}`")
    print(header)
    print()
    print(stats.markdown_table(rows))
    if args.json:
        report = {
            "started": started.isoformat(), "command": command.strip(), "quick": args.quick,
            "repeats": ctx.repeats, "machine": machine_description(), "versions": tool_versions(),
            "models": {preset: {"path": str(path), "parameters": workspace.count_parameters(path).total}
                       for preset, path in ctx.models.items()},
            "peak_gflops": ctx.peak_gflops,
            "rows": [row.to_json() for row in rows],
            "sections": {section.name: section.details for section in results},
            "repo": str(REPO_ROOT),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print(f"\nJSON written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
