#!/usr/bin/env bash
# Create .venv (if missing) and install the bot with the CPU build of torch first, so the package's
# torch range is already met and pip never pulls the multi-GB CUDA build. Versions come from
# constraints.txt. Extra args: pip extras. Skipped when nothing it installs from has changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=$(cat pyproject.toml requirements-cpu.txt constraints.txt | sha256sum | cut -c1-16)-${TORCH_BUILD:-cpu}-${1:-none}
if [ -f .venv/.installed ] && [ "$(cat .venv/.installed)" = "$stamp" ] && [ -x .venv/bin/automodel-bot ]; then
  exit 0  # installed from these very files already (7 s of pip saved at every start)
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${TORCH_BUILD:-cpu}" = cpu ]; then
  # PyTorch's CPU index; skipped where it can't be resolved (offline mirrors, local wheels).
  index=()
  if getent hosts download.pytorch.org >/dev/null 2>&1; then
    index=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  .venv/bin/python -m pip install --quiet "${index[@]}" -c constraints.txt -r requirements-cpu.txt
fi
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".${1:-}"
echo "$stamp" > .venv/.installed
