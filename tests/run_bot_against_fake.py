"""Test-only launcher: the real `automodel-bot run`, in a process of its own, against the loopback
fake Discord of the calling test, to test signals and the exit code (tests/test_ops.py) and bot
processes by shard range (tests/test_ray.py).

    python tests/run_bot_against_fake.py API_BASE GATEWAY_URL

Production code is untouched: like the fake_discord fixture, this only points discord.py at the
fake. With AUTOMODEL_TEST_GATE=<dir>, every batch writes <dir>/held and then waits until the test
creates <dir>/open, so a test can hold one batch running while others queue behind it. With
AUTOMODEL_TEST_IDENTIFY_SPACING=<seconds>, processes by shard range stagger their connections by
that instead of Discord's 5.5 s, to keep a test short.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import discord
import yarl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot import cli  # noqa: E402
from bot import client as client_module  # noqa: E402
from bot.inference.local import LocalBackend  # noqa: E402


def hold_batches(gate: Path) -> None:
    run = LocalBackend.run

    def gated_run(self, task, batch, ctx):
        (gate / "held").write_text(f"{task} {len(batch)}")
        deadline = time.monotonic() + 60
        while not (gate / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return run(self, task, batch, ctx)

    LocalBackend.run = gated_run


if __name__ == "__main__":
    api_base, gateway_url = sys.argv[1:3]
    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    if os.environ.get("AUTOMODEL_TEST_IDENTIFY_SPACING"):
        client_module.IDENTIFY_SPACING = float(os.environ["AUTOMODEL_TEST_IDENTIFY_SPACING"])
    if os.environ.get("AUTOMODEL_TEST_GATE"):
        hold_batches(Path(os.environ["AUTOMODEL_TEST_GATE"]))
    raise SystemExit(cli.main(["run"]))
