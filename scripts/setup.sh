#!/usr/bin/env bash
# Installs rlhfctl and everything it needs into the current Python (a fresh machine needs only Python 3.10+
# and pip). torch is installed first, pinned to the CPU build this machine carries on disk, so pip never
# resolves a multi-GB CUDA build; the project itself does not pin torch for users.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras="${1:-test}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet "torch==${RLHFCTL_TORCH_VERSION:-2.13.0}"
fi
"$PYTHON" -m pip install --quiet -e ".[${extras}]"
