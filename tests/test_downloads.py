"""First use of a hub checkpoint (#13): progress in the reply, the log and `automodel-bot download`,
through unmodified huggingface_hub and transformers talking to tests/fake_hub.py on 127.0.0.1.

`download` runs in a subprocess (HF_ENDPOINT is read at import); the bot runs in this process with
the hub patched in (FakeHub.patch_in_process), driven through the fake Discord.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.client import EXTENSIONS
from bot.inference import hub as hub_module
from bot.inference.executor import Executor
from bot.inference.local import LocalBackend
from bot.settings import load_settings
from tests.fake_discord import GUILD_ID, TOKEN, USER_ID
from tests.fake_hub import FakeHub
from tests.test_cogs import _every_sent_message_is_safe  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
REPO = "fake-org/tiny-sst2"
PROGRESS = re.compile(r"⏬ Downloading fake-org/tiny-sst2: (\d+) % of \d+ MB")


@pytest.fixture
def hub(tiny_checkpoints):
    with FakeHub({REPO: tiny_checkpoints["sentiment"]}) as served:
        yield served
    hub_module.forget_probe()  # the next test's hub is elsewhere (or offline)


def download(hub: FakeHub, home: Path, tiny_env: dict[str, str], **models: str) -> subprocess.CompletedProcess:
    env = hub.env(home) | {k: v for k, v in tiny_env.items() if k.startswith("MODEL_")} | models
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "bot.cli", "download"], env=env, cwd=home, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=300)


def test_download_shows_progress_and_resumes_an_interrupted_file(hub, tiny_env, tmp_path):
    hub.chunk_size, hub.chunk_delay = 16 * 1024, 0.01
    hub.cut(REPO, "model.safetensors", after_bytes=100_000)  # the connection drops once, mid-file
    done = download(hub, tmp_path, tiny_env, MODEL_SENTIMENT=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    shares = [int(m.group(1)) for m in PROGRESS.finditer(done.stdout)]
    assert shares and shares == sorted(shares) and shares[-1] == 100, done.stdout
    assert re.search(rf"^{REPO}: ready in .*snapshots", done.stdout, re.MULTILINE), done.stdout
    weights = [r for r in hub.gets("model.safetensors")]
    assert len(weights) == 2  # the cut one, and the retry that completed it
    assert not done.stderr.strip(), done.stderr  # no bars, no retry chatter at INFO


def test_download_of_an_unknown_repo_is_one_line(hub, tiny_env, tmp_path):
    done = download(hub, tmp_path, tiny_env, MODEL_SENTIMENT="fake-org/no-such-model")
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "automodel-bot: MODEL_SENTIMENT='fake-org/no-such-model': no such model on the Hugging Face hub. Check the "
        "spelling (org/name); a private or gated model also needs HF_TOKEN.",
        "automodel-bot: 1 of 6 checkpoint(s) not ready (see above).",
    ]


# -- the reply of a request waiting for the first download ------------------------------------------


@pytest.fixture
def bot_settings(tiny_env, tmp_path):
    return load_settings(tiny_env | {
        "MODEL_SENTIMENT": REPO,
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_GUILD_ID": str(GUILD_ID),
        "STATE_DIR": str(tmp_path / "state"),
        "USER_COOLDOWN": "0",
        "OWNER_IDS": str(USER_ID),
    })


@pytest.fixture
def bot_extensions():
    return EXTENSIONS


@pytest.fixture
def bot_executor(bot_settings, hub, monkeypatch, tmp_path):
    hub.patch_in_process(monkeypatch, tmp_path / "hf-cache")
    hub_module.forget_probe()
    return Executor(bot_settings, LocalBackend(bot_settings))


async def test_the_reply_shows_download_progress_then_the_result(hub, fake_discord, discord_bot, caplog):
    hub.chunk_size, hub.chunk_delay = 16 * 1024, 0.1  # the weights take ~5 s: past the 2 s acknowledgement
    caplog.set_level(logging.INFO, logger="bot.inference.local")
    interaction = await fake_discord.invoke_slash("sentiment", {"text": "I love this"})
    reply = await interaction.wait_final(60, until=lambda message: bool(message.embeds))  # past the progress edits
    assert re.match(r"(POSITIVE|NEGATIVE) \(", reply.embeds[0]["title"])
    shown = [edit.get("content") or "" for edit in reply.edits]
    shares = [int(m.group(1)) for text in shown if (m := PROGRESS.fullmatch(text))]
    assert shares and shares == sorted(shares), shown
    logged = [r.getMessage() for r in caplog.records if r.name == "bot.inference.local"]
    assert any(PROGRESS.fullmatch(line) for line in logged), logged
    assert hub.gets("model.safetensors")  # it really came from the (fake) hub
