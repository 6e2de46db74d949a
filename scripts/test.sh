#!/usr/bin/env bash
# The test command (README Quick start, and CI): install, lint, then the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
export HF_HUB_OFFLINE=1
.venv/bin/python -m ruff check bot cogs tests
.venv/bin/python -m pytest "$@"
