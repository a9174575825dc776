"""CLI start-up (``rlhfctl --help``, ``validate-config``) and ``data convert`` throughput.

Start-up is the median of 10 runs of the installed ``rlhfctl`` console script (``python -m rlhfctl`` when it is
not on PATH), measured from process start to exit. ``data convert`` turns a generated Anthropic-HH-style file into
RM rows; rows/s is over the whole command (start-up included); the data helper's ``benchmarks/bench_convert.py``,
when present, is run too and its own output kept in the JSON details.
"""

from __future__ import annotations

import json
import shutil
import sys

from benchlib import stats, workspace
from benchlib.procmon import run_measured, run_quiet
from benchlib.sections import SectionResult
from benchlib.sections.rm import rm_config
from benchlib.stats import Row
from benchlib.tools import BENCH_DIR, REPO_ROOT, BenchContext, rlhfctl_available, rlhfctl_env

STARTUP_RUNS = 10


def _rlhfctl_executable() -> list[str]:
    found = shutil.which("rlhfctl")
    return [found] if found else [sys.executable, "-m", "rlhfctl"]


def _median_ms(command: list[str], runs: int) -> tuple[float | None, str]:
    timings = []
    for _ in range(runs):
        code, seconds, output = run_quiet(command, env=rlhfctl_env(), cwd=REPO_ROOT)
        if code != 0:
            return None, f"exit {code}: {output.strip().splitlines()[-1][:160] if output.strip() else ''}"
        timings.append(seconds * 1000)
    return stats.median(timings), f"median of {runs}; min {min(timings):.0f}, max {max(timings):.0f}"


def run(ctx: BenchContext) -> SectionResult:
    result = SectionResult("cli")
    executable = _rlhfctl_executable()
    help_ms, help_note = _median_ms(executable + ["--help"], STARTUP_RUNS)
    result.rows.append(Row("CLI", "`rlhfctl --help` start-up", "ms", help_ms, None, help_note + "; target <= 300",
                           higher_is_better=False))
    config = rm_config(ctx.models["tiny"], ctx.data.rm_train, ctx.data.rm_validation, workers=2,
                       cpus_per_worker=1.0, batch_per_worker=4)
    run_dir = ctx.run_dir("validate-config")
    config["general"].update({"output_dir": str(run_dir / "output"), "checkpoint_dir": str(run_dir / "export")})
    config_path = workspace.write_toml(run_dir / "rm.toml", config)
    validate_ms, validate_note = _median_ms(executable + ["validate-config", str(config_path)], STARTUP_RUNS)
    result.rows.append(Row("CLI", "`rlhfctl validate-config rm.toml` start-up", "ms", validate_ms, None,
                           validate_note + "; target <= 500", higher_is_better=False))
    result.details["executable"] = executable
    return result


def run_convert(ctx: BenchContext) -> SectionResult:
    result = SectionResult("convert")
    result.rows.extend(_convert_rows(ctx, result.details))
    return result


def _convert_rows(ctx: BenchContext, details: dict) -> list[Row]:
    available, reason = rlhfctl_available("data", "convert")
    rows_in = 50_000 if ctx.quick else 100_000
    if not available:
        return [Row("data convert", "HH transcripts -> RM rows", "rows/s", None, None, reason)]
    source = ctx.work / "data" / f"hh_{rows_in}.jsonl"
    if not source.exists():
        workspace.write_jsonl(source, workspace.hh_rows(rows_in, seed=7))
    run_dir = ctx.run_dir("data-convert")
    measured = run_measured(_rlhfctl_executable() + ["data", "convert", str(source), "--to", "rm", "-o",
                                                     str(run_dir / "rm.jsonl")],
                            env=rlhfctl_env(), cwd=REPO_ROOT, log_file=run_dir / "log.txt", timeout_s=900)
    rows: list[Row] = []
    if measured.ok:
        rows.append(Row("data convert", f"HH transcripts -> RM rows ({rows_in:,} rows, 1 process)", "rows/s",
                        rows_in / measured.wall_time_s, None,
                        f"whole command incl. start-up ({measured.wall_time_s:.1f} s); target >= 50,000"))
        rows.append(Row("data convert", "peak PSS of `data convert`", "GB", measured.peak_pss_gb, None,
                        f"{rows_in:,}-row input ({source.stat().st_size / 1e6:.0f} MB)", higher_is_better=False))
    else:
        rows.append(Row("data convert", "HH transcripts -> RM rows", "rows/s", None, None,
                        f"exit {measured.returncode}: {measured.output_tail.strip()[-160:]}"))
    helper_script = BENCH_DIR / "bench_convert.py"
    if not helper_script.exists():
        details["bench_convert"] = {"note": "benchmarks/bench_convert.py not present"}
        return rows
    args = [sys.executable, str(helper_script)] + (["--quick"] if ctx.quick else [])
    code, seconds, output = run_quiet(args, env=rlhfctl_env(), cwd=REPO_ROOT, timeout_s=900)
    details["bench_convert"] = {"exit": code, "seconds": seconds, "output": output[-3000:]}
    figures = parse_last_json_line(output) if code == 0 else None
    if figures and figures.get("rows_per_s"):
        rows.append(Row("data convert", f"conversion only, bench_convert.py ({figures.get('rows', 0):,} rows)",
                        "rows/s", float(figures["rows_per_s"]), None,
                        f"start-up excluded; peak RSS {figures.get('peak_rss_mb')} MB vs "
                        f"{figures.get('peak_rss_mb_quarter_input')} MB on a quarter of the input"))
    else:
        rows.append(Row("data convert", "conversion only, bench_convert.py", "rows/s", None, None,
                        f"bench_convert.py exit {code}"))
    return rows


def parse_last_json_line(output: str) -> dict | None:
    """The last line of ``output`` that parses as a JSON object (scripts print their figures last)."""
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
