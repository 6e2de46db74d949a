#!/usr/bin/env bash
# Rewrite constraints.txt from .venv: the exact versions the image and scripts/install.sh install.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions the Docker image and scripts/install.sh install (pip -c): an image rebuilt next"
  echo "# month gets the same libraries. The package's own ranges (pyproject.toml) stay open for library"
  echo "# users. Refresh: scripts/install.sh \"[test,ray]\" in a fresh .venv, then scripts/freeze.sh."
  .venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$//'  # the CUDA build has the same version
} > constraints.txt
