"""Issue #19's Ray Train path: command start to the first optimizer step, checkouts alternated.

    python benchmarks/bench_ray_path.py --code /work/main [--code /work/wt/branch ...] [--rounds 4] [--json out.json]

The workload every Ray-path section of benchmarks/README.md used: ``rlhfctl rm train`` on the tiny kit model, the
first 128 RM pairs of the harness's data, 2 workers x 1 CPU asked for explicitly, 4 pairs per worker, one epoch,
``--quiet``. Each run is a fresh ``python -m rlhfctl`` process with ``PYTHONPATH`` set to one checkout (so the
checkouts' own code runs in the driver and in every Ray process) and its own ``RAY_TMPDIR``; the checkouts
alternate within each round (A B A B ...), so machine drift reaches all of them alike. Per run it prints the
seconds from launching the command to the first train record's ``time`` in ``metrics.jsonl`` and to the command's
exit; at the end the median per checkout. Run it under ``/work/wt/bin/quiet`` (timing).

The model and data are built once under ``--work-dir`` (the harness's work folder by default) and re-used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import workspace  # noqa: E402
from benchlib.sections.rm import rm_config, train_subset  # noqa: E402

PAIRS = 128
BATCH_PER_WORKER = 4


def prepare(work: Path) -> Path:
    """The run config (tiny model, 128 pairs, 2 workers x 1 CPU); model and data built once."""
    data = workspace.write_data(work / "data", rm_pairs=2048)
    model_dir = workspace.build_model(work / "models", "tiny", [data.rm_train, data.sft_train])

    train_file = train_subset(SimpleNamespace(work=work, data=data), PAIRS)  # the harness context's two fields
    config = rm_config(model_dir, train_file, data.rm_validation, workers=2, cpus_per_worker=1.0,
                       batch_per_worker=BATCH_PER_WORKER)
    return workspace.write_toml(work / "ray_path_rm.toml", config)


def first_train_time(metrics_file: Path) -> float | None:
    if not metrics_file.exists():
        return None
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "time" in record:
            return float(record["time"])
    return None


def run_once(code: Path, config: Path, output_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    with tempfile.TemporaryDirectory(prefix="rp", dir="/tmp") as ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
        command = [sys.executable, "-m", "rlhfctl", "rm", "train", str(config), "--quiet", "--force",
                   f"general.output_dir={output_dir}", f"general.checkpoint_dir={output_dir / 'export'}"]
        start = time.time()
        finished = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True)
        total = time.time() - start
    first = first_train_time(output_dir / "metrics.jsonl")
    if finished.returncode != 0 or first is None:
        tail = (finished.stderr or finished.stdout)[-2000:]
        raise SystemExit(f"run with {code} failed (exit {finished.returncode}):\n{tail}")
    return {"first_step_s": round(first - start, 3), "total_s": round(total, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", type=Path, required=True,
                        help="A checkout to run (repeat to alternate several); its folder name labels it.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=HERE / "results" / "work")
    parser.add_argument("--json", type=Path, help="Write every run's figures here.")
    args = parser.parse_args()
    config = prepare(args.work_dir)
    runs: dict[str, list[dict]] = {str(code): [] for code in args.code}
    for round_number in range(1, args.rounds + 1):
        for code in args.code:
            output_dir = args.work_dir / "runs" / f"ray-path-{code.name}"
            figures = run_once(code.resolve(), config, output_dir)
            figures["utc"] = time.strftime("%H:%M:%S", time.gmtime())
            runs[str(code)].append(figures)
            print(f"round {round_number} {code}: first step {figures['first_step_s']:.2f} s, "
                  f"whole command {figures['total_s']:.2f} s ({figures['utc']} UTC)", flush=True)
    for code, figures in runs.items():
        firsts = [f["first_step_s"] for f in figures]
        print(f"{code}: first step median {statistics.median(firsts):.2f} s "
              f"({', '.join(f'{x:.2f}' for x in firsts)}); whole command median "
              f"{statistics.median(f['total_s'] for f in figures):.2f} s")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
