"""The package boundary the README draws: bot/inference (executor, backends, tasks, device,
loading, errors) never imports discord, so it can run where Discord is not (a Ray replica)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ALL = """
import importlib, pkgutil, sys
import bot.inference as package
for module in pkgutil.walk_packages(package.__path__, "bot.inference."):
    importlib.import_module(module.name)
print(sorted(name for name in sys.modules if name == "discord" or name.startswith("discord.")))
"""


def test_the_inference_package_never_imports_discord():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
