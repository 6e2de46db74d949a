"""Shared fixtures: tiny random-weight checkpoints for the seven tasks, and settings pointing at them.

Everything runs offline: the checkpoints are built locally (bot.synthetic) and loaded through the
same Auto-class path the product uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before transformers is imported anywhere: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bot.settings import load_settings  # noqa: E402
from bot.synthetic import build_checkpoints  # noqa: E402

CACHE = Path(os.environ.get("AUTOMODEL_TEST_CACHE", Path(__file__).resolve().parent.parent / ".test-models"))


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, Path]:
    return build_checkpoints(CACHE, "tiny")


@pytest.fixture(scope="session")
def peaked_checkpoints() -> dict[str, Path]:
    """Tiny shapes with a large init std: sharp attention, so outputs depend on context (and would
    depend on padding if a mask were missing). For the batch-invariance tests (#10)."""
    return build_checkpoints(CACHE, "peaked")


@pytest.fixture(scope="session")
def peaked_settings(peaked_checkpoints, tmp_path_factory):
    env = {f"MODEL_{task.upper()}": str(path) for task, path in peaked_checkpoints.items()}
    return load_settings({**env, "DEVICE": "cpu", "STATE_DIR": str(tmp_path_factory.mktemp("state"))})


@pytest.fixture(scope="session")
def tiny_env(tiny_checkpoints, tmp_path_factory) -> dict[str, str]:
    """Environment (as a mapping) that points every task at its tiny checkpoint."""
    env = {f"MODEL_{task.upper()}": str(path) for task, path in tiny_checkpoints.items()}
    env["DEVICE"] = "cpu"
    env["STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    return env


@pytest.fixture(scope="session")
def tiny_settings(tiny_env):
    return load_settings(tiny_env)
from tests.fake_discord import bot_executor, bot_extensions, bot_settings, discord_bot, fake_discord  # noqa: E402,F401
