"""Benchmark `rlhfctl data convert`: HH-RLHF transcripts -> RM rows, rows/s and peak memory.

    python benchmarks/bench_convert.py [--rows 100000] [--quick] [--seed 0]

Generates an HH-style file (one to three turns per transcript, ~0.8 kB per row), converts it in a fresh
process (one core: the converter is single-threaded) and prints one JSON line: rows/s of the conversion itself
(`convert_file`, start-up excluded), peak RSS, and the peak RSS of the same conversion on a quarter of the file,
which shows whether memory stays flat as the input grows. Target: >= 50,000 rows/s.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

TOPICS = ("plants", "bike", "kitchen", "garden", "car", "dog", "shoes", "laptop", "bread", "window")
QUESTIONS = ("How do I clean my {t}?", "What is the best way to fix my {t}?", "Can you help me with my {t}?",
             "Why does my {t} look strange?", "Any tips for my {t} this winter?")
REPLIES = (" Sure! Start slowly and look at the {t} from every side before you change anything.",
           " You could ask a friend who knows about {t} care, or read the manual that came with it.",
           " No idea.", " I think the {t} needs a little more attention every week; keep notes.",
           " Sure! Here are three steps: clean the {t}, dry it well, and check it again tomorrow morning.")

CHILD = """
import json, resource, sys, time
from pathlib import Path
from rlhfctl.data.convert import ConvertRequest, convert_file
source, output = sys.argv[1], Path(sys.argv[2])
started = time.perf_counter()
report = convert_file(ConvertRequest(source, output, "rm", force=True))
seconds = time.perf_counter() - started
print(json.dumps({"rows_read": report.rows_read, "rows_written": report.rows_written, "seconds": seconds,
                  "format": report.source_format,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def hh_rows(count: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        topic = rng.choice(TOPICS)
        prompt = ""
        for turn in range(rng.randint(1, 3)):
            prompt += f"\n\nHuman: {rng.choice(QUESTIONS).format(t=topic)}\n\nAssistant:"
            if turn < 2 and rng.random() < 0.5:
                break
            prompt += rng.choice(REPLIES).format(t=topic)
        chosen, rejected = rng.sample(REPLIES, 2)
        yield {"chosen": prompt + chosen.format(t=topic), "rejected": prompt + rejected.format(t=topic)}


def write_source(path: Path, count: int, seed: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in hh_rows(count, seed):
            handle.write(json.dumps(row) + "\n")


def convert_in_child(source: Path, output: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(source), str(output)], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = 20_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as folder:
        work = Path(folder)
        full, quarter = work / "hh.jsonl", work / "hh_quarter.jsonl"
        write_source(full, rows, args.seed)
        write_source(quarter, rows // 4, args.seed)
        small = convert_in_child(quarter, work / "rm_quarter.jsonl")
        big = convert_in_child(full, work / "rm.jsonl")
        print(json.dumps({
            "benchmark": "data convert hh-rlhf -> rm",
            "rows": big["rows_read"],
            "rows_written": big["rows_written"],
            "input_mb": round(full.stat().st_size / 1e6, 1),
            "seconds": round(big["seconds"], 3),
            "rows_per_s": round(big["rows_read"] / big["seconds"]),
            "peak_rss_mb": round(big["peak_rss_mb"], 1),
            "peak_rss_mb_quarter_input": round(small["peak_rss_mb"], 1),
            "target_rows_per_s": 50_000,
        }))


if __name__ == "__main__":
    main()
