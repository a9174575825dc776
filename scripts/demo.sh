#!/usr/bin/env bash
# README's first command: install rlhfctl, then run the whole workflow on the bundled example
# (tiny offline model kit -> data convert -> SFT -> RM -> PPO -> comparison table) in ./example-run.
# Extra arguments go to `rlhfctl example run`, e.g. `bash scripts/demo.sh --force` to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" -m rlhfctl example run "$@"
