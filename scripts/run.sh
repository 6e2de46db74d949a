#!/usr/bin/env bash
# Install (first time) and start the Discord bot; reads .env (see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/automodel-bot run
