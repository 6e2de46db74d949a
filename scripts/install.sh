#!/usr/bin/env bash
# Create .venv (if missing) and install the bot with the CPU build of torch first, so the package's
# torch range is already met and pip never pulls the multi-GB CUDA build. Extra args: pip extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${TORCH_BUILD:-cpu}" = cpu ]; then
  .venv/bin/python -m pip install --quiet -r requirements-cpu.txt
fi
.venv/bin/python -m pip install --quiet -e ".${1:-}"
