#!/usr/bin/env bash
# Create .venv (if missing) and install the bot with the CPU build of torch first, so the package's
# torch range is already met and pip never pulls the multi-GB CUDA build. Extra args: pip extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${TORCH_BUILD:-cpu}" = cpu ]; then
  # PyTorch's CPU index; skipped where it can't be resolved (offline mirrors, local wheels).
  index=()
  if getent hosts download.pytorch.org >/dev/null 2>&1; then
    index=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  .venv/bin/python -m pip install --quiet "${index[@]}" -r requirements-cpu.txt
fi
.venv/bin/python -m pip install --quiet -e ".${1:-}"
