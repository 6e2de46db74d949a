"""Operations (#6): the image and compose files, `download`, metrics and health endpoints, the
request log and secret redaction, graceful shutdown (a real `automodel-bot run` process against
the fake Discord), sharding."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import discord
import pytest
import yaml
from discord.ext import commands

from bot import cli
from bot import client as client_module
from bot.client import (
    EXTENSIONS,
    IDENTIFY_SPACING,
    AutoModelBot,
    ShardedAutoModelBot,
    create_bot,
    identify_delay,
)
from bot.inference.errors import BotError
from bot.inference.executor import Executor
from bot.logs import REDACTED, JsonFormatter, configure_logging, hash_user
from bot.settings import SettingsError, load_settings
from tests.fake_discord import DEFERRED_CHANNEL_MESSAGE, GUILD_ID, OTHER_USER_ID, TOKEN, USER_ID

ROOT = Path(__file__).resolve().parent.parent
SALT = "test-salt-for-user-hashes"
SECRET = "MTE0NTE0.fake-secret-token.for-redaction-tests"  # recognisable, never a real token


# -- the image --------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def final_stage() -> list[tuple[str, str]]:
    rows = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(rows) if word == "FROM")
    return rows[last_from:]


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_user():
    stages = [args for word, args in dockerfile() if word == "FROM"]
    assert len(stages) >= 2 and all(s.split()[0] == "python:3.11-slim" for s in stages)
    users = [args for word, args in final_stage() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_weights_live_in_the_data_volume_not_in_the_image():
    final = final_stage()
    env = " ".join(args for word, args in final if word == "ENV")
    assert re.search(r"\bHF_HOME=/data\b", env)
    assert any(word == "VOLUME" and "/data" in args for word, args in final)
    runs = " ".join(args for word, args in dockerfile() if word == "RUN")
    assert "download" not in runs.replace("download.pytorch.org", "") and "from_pretrained" not in runs
    copied = " ".join(args for word, args in dockerfile() if word == "COPY")
    assert ".test-models" not in copied and not re.search(r"(^|\s)\.\s", copied + " ")


def test_torch_build_argument_picks_the_cpu_wheel_index():
    rows = dockerfile()
    assert ("ARG", "TORCH_BUILD=cpu") in rows
    runs = " ".join(args for word, args in rows if word == "RUN")
    assert "https://download.pytorch.org/whl/cpu" in runs and "cuda)" in runs


def test_healthcheck_and_cmd_match_the_entry_point_the_tests_run():
    final = final_stage()
    [healthcheck] = [args for word, args in final if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "METRICS_PORT" in healthcheck
    env = " ".join(args for word, args in final if word == "ENV")
    assert re.search(r"\bMETRICS_PORT=\d+", env) and "METRICS_HOST=0.0.0.0" in env
    [cmd] = [json.loads(args) for word, args in final if word == "CMD"]
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("[")[0]
    assert re.search(rf'^{re.escape(cmd[0])} = "bot.cli:main"$', scripts, re.MULTILINE)
    assert cmd[1:] == ["run"] and cli.build_parser().parse_args(cmd[1:]).command == "run"


def test_dockerignore_keeps_secrets_environments_and_test_models_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".test-models", ".git", "**/__pycache__"} <= ignored


def test_compose_uses_env_file_the_volume_the_port_and_time_to_drain():
    text = (ROOT / "docker-compose.yml").read_text()
    service = yaml.safe_load(text)["services"]["bot"]
    assert service["env_file"] == ".env"
    assert any(v.endswith(":/data") for v in service["volumes"])
    port = service["environment"]["METRICS_PORT"]
    assert any(p.split(":")[-1] == port for p in service["ports"])
    assert int(service["stop_grace_period"].rstrip("s")) > load_settings({}).shutdown_grace
    assert "# deploy:" in text and "driver: nvidia" in text  # the GPU reservation, commented


# -- download ---------------------------------------------------------------------------------------


def test_download_offline_reports_one_line_per_checkpoint(monkeypatch, tiny_env, tmp_path, capsys, restore_logging):
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    env = tiny_env | {"MODEL_GENERATE": "no-such-org/no-such-model", "MODEL_NER": "./missing/checkpoint"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["download"]) == 3
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = err.strip().splitlines()
    assert errors[0] == (
        "automodel-bot: MODEL_GENERATE='no-such-org/no-such-model' is not in the Hugging Face cache, and "
        "HF_HUB_OFFLINE=1 forbids downloading it. Run `automodel-bot download` where the hub is reachable "
        "(same HF_HOME), or set MODEL_GENERATE to a local folder."
    )
    assert errors[1].startswith("automodel-bot: MODEL_NER='./missing/checkpoint': directory not found (")
    assert errors[2] == "automodel-bot: 2 of 6 checkpoint(s) not ready (see above)." and len(errors) == 3
    local = [line for line in out.splitlines() if "local directory, nothing to download" in line]
    assert len(local) == len(set(tiny_env[k] for k in tiny_env if k.startswith("MODEL_"))) - 2


def test_download_skips_pytorch_bin_weights_when_safetensors_exist():
    from bot.inference.fetch import ignore_patterns
    from bot.inference.hub import looks_like_path

    assert "*.bin" in ignore_patterns(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert "*.bin" not in ignore_patterns(["config.json", "pytorch_model.bin"])
    assert not looks_like_path("gpt2") and not looks_like_path("Helsinki-NLP/opus-mt-en-de")
    assert looks_like_path("/models/gpt2") and looks_like_path("./gpt2") and looks_like_path("a/b/c")


# -- the bot under test: real cogs and executor, metrics on an OS-chosen port -----------------------


@pytest.fixture
def env_overrides() -> dict[str, str]:
    return {}


@pytest.fixture
def bot_settings(tiny_env, tmp_path, env_overrides):
    env = tiny_env | {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_GUILD_ID": str(GUILD_ID),
        "STATE_DIR": str(tmp_path / "state"),
        "USER_COOLDOWN": "0",
        "LOG_USER_SALT": SALT,
    }
    # METRICS_PORT must be 1..65535 in the environment; 0 (the OS picks a free port) is for tests.
    return dataclasses.replace(load_settings(env | env_overrides), metrics_port=0)


@pytest.fixture
def bot_extensions():
    return EXTENSIONS


async def get(bot: AutoModelBot, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{bot.metrics_server.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def sample(metrics: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels in any order), or None."""
    for line in metrics.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if found == labels:
                return float(match[3])
    return None


async def test_health_readiness_and_metrics_of_a_connected_bot(fake_discord, discord_bot):
    assert (await get(discord_bot, "/healthz"))[0] == 200
    status, body = await get(discord_bot, "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})

    interaction = await fake_discord.invoke_slash("sentiment", {"text": "I love this"})
    await interaction.wait_final(30, until=lambda m: bool(m.embeds))
    refused = await fake_discord.invoke_slash("mask", {"text": "no mask here"})
    await refused.wait_final(30)
    status, metrics = await get(discord_bot, "/metrics")
    assert status == 200
    assert sample(metrics, "automodel_refused_requests_total", task="mask", reason="InputError") == 1
    assert sample(metrics, "automodel_requests_total", task="sentiment", outcome="ok") == 1
    assert sample(metrics, "automodel_queue_wait_seconds_count", task="sentiment") == 1
    assert sample(metrics, "automodel_compute_seconds_count", task="sentiment") == 1
    assert sample(metrics, "automodel_batch_size_sum", task="sentiment") == 1
    assert sample(metrics, "automodel_tokens_total", task="sentiment") >= 3
    assert sample(metrics, "automodel_queue_depth", task="generate") == 0
    assert sample(metrics, "automodel_running_requests", task="sentiment") == 0
    checkpoint = discord_bot.settings.checkpoints["sentiment"]
    assert sample(metrics, "automodel_model_loaded", task="sentiment", checkpoint=checkpoint) == 1
    assert sample(metrics, "automodel_model_loaded", task="generate", checkpoint=discord_bot.settings.checkpoints["generate"]) == 0
    assert sample(metrics, "automodel_loaded_weights_bytes") > 0
    assert sample(metrics, "automodel_ready") == 1 and sample(metrics, "automodel_discord_connected") == 1
    assert sample(metrics, "automodel_accepting_jobs") == 1 and sample(metrics, "automodel_guilds") == 1
    assert sample(metrics, "automodel_device_memory_bytes", kind="total") is None  # CPU: no device memory


@contextlib.asynccontextmanager
async def started_bot(fake, settings, **options):
    """An AutoModelBot logged in (setup_hook done) but not yet connected; closed on exit."""
    bot = create_bot(settings, extensions=("tests.harness_cog",), guild_ready_timeout=0.05, **options)
    await bot.login(fake.token)
    try:
        yield bot
    finally:
        await bot.close()


async def connect(bot) -> asyncio.Task:
    task = asyncio.create_task(bot.connect())
    await asyncio.wait({task, asyncio.create_task(bot.wait_until_ready())}, timeout=10,
                       return_when=asyncio.FIRST_COMPLETED)
    assert bot.is_ready(), f"the bot did not become ready: {task}"
    return task


async def test_readiness_follows_the_gateway_and_the_executor(fake_discord, bot_settings):
    async with started_bot(fake_discord, bot_settings) as bot:
        status, body = await get(bot, "/readyz")  # logged in, executor running, gateway not yet
        assert status == 503 and json.loads(body) == {"ready": False,
                                                      "reason": "starting: not connected to the Discord gateway yet"}
        assert (await get(bot, "/healthz"))[0] == 200
        task = await connect(bot)
        assert (await get(bot, "/readyz"))[0] == 200

        await bot.executor.shutdown(grace=1)  # what close() does first
        status, body = await get(bot, "/readyz")
        assert status == 503 and "shutting down" in json.loads(body)["reason"]
        assert sample((await get(bot, "/metrics"))[1], "automodel_accepting_jobs") == 0
        port = bot.metrics_server.port
    await asyncio.wait({task}, timeout=5)
    assert task.done()  # the gateway closed
    with pytest.raises(aiohttp.ClientConnectionError):  # close() stopped the server
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_busy_metrics_port_stops_start_up_with_one_line(fake_discord, bot_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = AutoModelBot(dataclasses.replace(bot_settings, metrics_port=port), extensions=())
        with pytest.raises(BotError, match=rf"METRICS_PORT={port}: cannot listen on 127.0.0.1:{port}"):
            await bot.login(fake_discord.token)
        await bot.close()


@pytest.mark.parametrize("env_overrides", [{"PRELOAD": "true"}])
async def test_preload_logs_each_model_before_connecting(fake_discord, bot_settings, env_overrides, caplog):
    caplog.set_level(logging.INFO)
    async with started_bot(fake_discord, bot_settings) as bot:
        assert all(row["loaded"] for row in bot.executor.backend.describe())
    messages = [r.getMessage() for r in caplog.records]
    distinct = set(bot_settings.checkpoints.values())  # /mask and /embed share one model
    assert len([m for m in messages if m.startswith("Loaded ")]) == len(distinct)
    assert messages.index("PRELOAD: loading every model before connecting to Discord") < next(
        i for i, m in enumerate(messages) if m.startswith("Loading ")
    )
    assert any(re.fullmatch(r"PRELOAD: models ready in [\d.]+s", m) for m in messages)


# -- logs -------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    """configure_logging replaces the root logger's handlers (the CLI calls it): put them back."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.fixture
def captured_logs(restore_logging):
    """configure_logging as `automodel-bot run` does, writing into a StringIO."""
    stream = io.StringIO()

    def configure(**env: str) -> io.StringIO:
        configure_logging(load_settings({"DISCORD_TOKEN": SECRET} | env))
        logging.getLogger().handlers[0].setStream(stream)
        return stream

    return configure


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_token_never_reaches_the_log(captured_logs, log_format):
    stream = captured_logs(LOG_FORMAT=log_format, LOG_LEVEL="DEBUG")
    gateway = logging.getLogger("discord.gateway")
    gateway.debug("Sending IDENTIFY %s", {"op": 2, "d": {"token": SECRET}})
    logging.getLogger("discord.http").warning("Authorization: Bot %(token)s", {"token": SECRET})
    try:
        try:
            raise KeyError(f"lookup of {SECRET}")
        except KeyError as cause:
            raise RuntimeError(f"login with {SECRET} failed") from cause
    except RuntimeError:
        logging.getLogger("bot.client").exception("Unexpected error with %s", SECRET)
    logging.getLogger("bot").info("where: %s", SECRET, stack_info=True)

    output = stream.getvalue()
    assert SECRET not in output
    assert output.count(REDACTED) >= 6  # message, args, both exceptions of the chain, ...
    assert "RuntimeError" in output and "KeyError" in output and "Traceback" in output
    if log_format == "json":
        assert all(json.loads(line)["level"] for line in output.splitlines() if line.startswith("{"))


def test_library_loggers_go_through_the_same_handler(captured_logs):
    # Their warnings are chatter (DEBUG, issue #13); their errors show at any level.
    stream = captured_logs(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    logging.getLogger("transformers.modeling_utils").warning("weights of %s", SECRET)
    logging.getLogger("huggingface_hub.file_download").error("hub error")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("transformers.modeling_utils", "DEBUG", f"weights of {REDACTED}"),
        ("huggingface_hub.file_download", "ERROR", "hub error"),
    ]


def test_settings_repr_hides_the_token_and_the_salt():
    settings = load_settings({"DISCORD_TOKEN": SECRET, "LOG_USER_SALT": SALT})
    assert SECRET not in repr(settings) and SALT not in repr(settings)


async def test_token_in_a_failing_command_is_redacted_live(fake_discord, discord_bot, bot_settings, restore_logging):
    """Logging set up from the settings the running bot logged in with, as `automodel-bot run` does:
    its token is redacted without anything registered by hand."""
    configure_logging(dataclasses.replace(bot_settings, log_level="DEBUG"))
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    assert discord_bot.http.token == fake_discord.token == bot_settings.discord_token

    @discord.app_commands.command(name="boom", description="Fails with the token in its error")
    async def boom(interaction: discord.Interaction) -> None:
        raise RuntimeError(f"token {discord_bot.http.token} leaked into an error")

    discord_bot.tree.add_command(boom)
    reply = await (await fake_discord.invoke_slash("boom")).wait_final()
    assert "Something went wrong" in reply.content
    output = stream.getvalue()
    assert "Unexpected error" in output and "leaked into an error" in output
    assert fake_discord.token not in output and REDACTED in output


async def test_one_request_log_line_per_request_with_a_hashed_user(fake_discord, discord_bot, caplog):
    caplog.set_level(logging.INFO, logger="bot.requests")
    for user in (USER_ID, OTHER_USER_ID):
        interaction = await fake_discord.invoke_slash("sentiment", {"text": "I love this"}, user_id=user)
        await interaction.wait_final(30, until=lambda m: bool(m.embeds))
    lines = [r for r in caplog.records if r.name == "bot.requests"]
    assert len(lines) == 2
    for record, user in zip(lines, (USER_ID, OTHER_USER_ID)):
        text = record.getMessage()
        assert re.fullmatch(
            rf"request task=sentiment outcome=ok wait_ms=\d+ compute_ms=\d+ batch=1 tokens=\d+ user={hash_user(user, SALT)}",
            text,
        ), text
        assert str(user) not in text
        assert json.loads(JsonFormatter().format(record))["user"] == hash_user(user, SALT)


# -- graceful shutdown: a real `automodel-bot run` process, SIGTERM, exit code 0 --------------------


def setting_names() -> list[str]:
    return re.findall(r"^([A-Z][A-Z_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(**settings: str) -> dict[str, str]:
    """A subprocess's environment: every bot setting explicit (empty = default, so a developer's
    .env cannot change the run), none of this process's RAY_* variables, then `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in setting_names() and not k.startswith("RAY_")}
    return env | {name: "" for name in setting_names()} | {"HF_HUB_OFFLINE": "1"} | settings


async def bot_process(fake_discord, env: dict[str, str], cwd: Path, output) -> asyncio.subprocess.Process:
    """The real `automodel-bot run` in a process of its own, against the test's fake Discord."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests" / "run_bot_against_fake.py"), fake_discord.api_base,
        str(fake_discord.gateway_url), env=env, cwd=cwd, stdout=output, stderr=asyncio.subprocess.STDOUT)


async def test_sigterm_drains_tells_queued_users_and_exits_0(fake_discord, tiny_env, tmp_path):
    port = free_port()
    env = process_env(**tiny_env | {
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_GUILD_ID": str(GUILD_ID),
        "STATE_DIR": str(tmp_path / "state"),
        "USER_COOLDOWN": "0",
        "MAX_BATCH_SIZE": "1",  # one running, the others queued behind it
        "METRICS_PORT": str(port),
        "AUTOMODEL_TEST_GATE": str(tmp_path),
    })
    log_path = tmp_path / "bot.log"
    with log_path.open("w") as log_file:
        process = await bot_process(fake_discord, env, tmp_path, log_file)
    try:
        await wait_ready(port, process, log_path)
        users = [USER_ID + n for n in range(4)]
        interactions = [await fake_discord.invoke_slash("sentiment", {"text": "fine"}, user_id=u) for u in users]
        await fake_discord.wait_for(
            lambda: all(i.callback_type == DEFERRED_CHANNEL_MESSAGE for i in interactions), 30, "four deferrals"
        )
        await wait_path(tmp_path / "held")  # one batch of one is running; three requests wait

        process.send_signal(signal.SIGTERM)
        await fake_discord.wait_for(
            lambda: sum("restarting" in (i.message.content if i.message else "") for i in interactions) == 3,
            15, "three queued users told",
        )
        late = await fake_discord.invoke_slash("sentiment", {"text": "too late"}, user_id=USER_ID + 9)
        refusal = await late.wait_final(10)
        assert refusal.ephemeral and "restarting" in refusal.content and "try again shortly" in refusal.content

        (tmp_path / "open").touch()  # the running batch finishes within SHUTDOWN_GRACE
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = log_path.read_text()
    [ran] = [i for i in interactions if "restarting" not in i.message.content]
    assert ran.message.embeds and "%" in ran.message.embeds[0]["title"]  # its result was delivered
    assert all("not run" in i.message.content for i in interactions if i is not ran)
    assert "Received SIGTERM: shutting down" in log
    assert "3 queued job(s) will not run" in log and re.search(r"Executor drained in [\d.]+s", log)
    assert "Traceback" not in log and TOKEN not in log


async def wait_ready(port: int, process, log_path: Path, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            assert process.returncode is None, f"the bot exited early:\n{log_path.read_text()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the bot never became ready:\n{log_path.read_text()}")


async def wait_path(path: Path, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.02)):
        if path.exists():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


# -- sharding ---------------------------------------------------------------------------------------


def test_shards_setting_picks_the_bot_class():
    assert type(create_bot(load_settings({}), extensions=())) is AutoModelBot
    bot = create_bot(load_settings({"SHARDS": "3"}), extensions=())
    assert isinstance(bot, commands.AutoShardedBot) and bot.shard_count == 3
    assert create_bot(load_settings({"SHARDS": "auto"}), extensions=()).shard_count is None
    assert ShardedAutoModelBot.connect is discord.AutoShardedClient.connect
    for bad in ("0", "-1", "many"):
        with pytest.raises(SettingsError, match=rf"SHARDS='{bad}' is invalid: expected empty \(one connection\), auto"):
            load_settings({"SHARDS": bad})


@pytest.mark.parametrize("env_overrides", [{"SHARDS": "auto"}])
async def test_auto_sharded_bot_connects_and_is_ready(fake_discord, bot_settings, env_overrides):
    async with started_bot(fake_discord, bot_settings) as bot:
        assert isinstance(bot, ShardedAutoModelBot)
        await connect(bot)
        assert bot.shard_count == 1 and (await get(bot, "/readyz"))[0] == 200


# -- several bot processes by shard range (#11) ------------------------------------------------------


def test_shard_ranges_per_process():
    settings = load_settings({"SHARD_COUNT": "4", "SHARD_IDS": "2-3"})
    assert settings.shards == 4 and settings.shard_ids == (2, 3)
    bot = create_bot(settings, extensions=())
    assert isinstance(bot, ShardedAutoModelBot) and bot.shard_ids == [2, 3] and bot.shard_count == 4
    assert not bot.syncs_commands and identify_delay(settings) == 2 * IDENTIFY_SPACING
    first = load_settings({"SHARD_COUNT": "4", "SHARD_IDS": "0,1"})
    assert create_bot(first, extensions=()).syncs_commands and identify_delay(first) == 0
    assert load_settings({"SHARDS": "3"}).shards == 3  # the older name still works
    for env, message in (
        ({"SHARD_IDS": "0"}, "SHARD_IDS='0' needs SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "2"}, "expected distinct ids from 0 to 1"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0,0"}, "expected distinct ids"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "a"}, "expected ids like 0,1"),
        ({"SHARD_COUNT": "auto", "SHARD_IDS": "0"}, "not auto"),
        ({"SHARD_COUNT": "2", "SHARDS": "2"}, "both set"),
    ):
        with pytest.raises(SettingsError, match=message):
            load_settings(env)


@pytest.mark.parametrize("env_overrides", [{"SHARD_COUNT": "2", "SHARD_IDS": "1"}])
async def test_a_process_without_shard_0_connects_its_shards_and_does_not_sync(
    fake_discord, bot_settings, env_overrides, monkeypatch
):
    monkeypatch.setattr(client_module, "IDENTIFY_SPACING", 0.2)  # shard 1 waits one spacing
    times: dict[str, float] = {}
    start, identify = Executor.start, fake_discord._identify

    async def slow_start(self):  # a setup longer than the stagger, as PRELOAD or joining Ray can be
        await asyncio.sleep(0.5)
        await start(self)
        times["set up"] = time.monotonic()

    async def timed_identify(ws, data):
        times["identified"] = time.monotonic()
        await identify(ws, data)

    monkeypatch.setattr(Executor, "start", slow_start)
    monkeypatch.setattr(fake_discord, "_identify", timed_identify)
    async with started_bot(fake_discord, bot_settings) as bot:
        await connect(bot)
        assert sorted(bot.shards) == [1] and bot.shard_count == 2
    identifies = [f["d"]["shard"] for f in fake_discord.gateway_frames if f.get("op") == 2]
    assert identifies == [[1, 2]]
    assert times["identified"] - times["set up"] >= 0.2  # the whole stagger, however long the setup took
    assert not [r for r in fake_discord.requests if r.route.startswith("PUT /applications/")]


@pytest.mark.parametrize("env_overrides", [{"SHARD_COUNT": "4", "SHARD_IDS": "0,2"}])
async def test_each_event_reaches_the_shard_discord_sends_it_to(fake_discord, bot_settings, env_overrides, monkeypatch):
    """The fake routes as Discord does: the guild's events to shard (guild_id >> 22) % 4 = 2, DMs
    to shard 0. A dropped shard resumes its own session and gets what was sent to it meanwhile."""
    async with started_bot(fake_discord, bot_settings) as bot:
        async def at_once(shard_id, *, initial=False):  # discord.py waits 5 s between a process's shards
            pass

        monkeypatch.setattr(bot, "before_identify_hook", at_once)
        await connect(bot)
        assert sorted(fake_discord.sessions) == [0, 2] and fake_discord.shard_of(GUILD_ID) == 2
        in_guild = await fake_discord.invoke_slash("ping", {"text": "guild"})
        in_dm = await fake_discord.invoke_slash("ping", {"text": "dm"}, guild=False)
        assert (in_guild.shard, in_dm.shard) == (2, 0)
        assert [(await i.wait_final()).content for i in (in_guild, in_dm)] == ["pong: guild", "pong: dm"]

        await fake_discord.drop_gateway(shard=2, wait_resumed=False)
        meanwhile = await fake_discord.invoke_slash("ping", {"text": "meanwhile"})
        await fake_discord.wait_resumed()
        assert (await meanwhile.wait_final()).content == "pong: meanwhile" and fake_discord.replayed_count >= 1
        assert fake_discord.sessions[0].ws is not None and fake_discord.identify_count == 2  # shard 0 untouched


def test_the_ray_compose_file_runs_a_head_the_models_and_bots_by_shard_range():
    services = yaml.safe_load((ROOT / "docker-compose.ray.yml").read_text())["services"]
    assert set(services) == {"ray-head", "serve", "bot-shards-0-1", "bot-shards-2-3"}
    assert "--head" in services["ray-head"]["command"] and "env_file" not in services["ray-head"]  # no token there
    assert "automodel-bot serve" in services["serve"]["command"]
    bots = [s for name, s in services.items() if name.startswith("bot-")]
    shards = [load_settings({k: str(v) for k, v in bot["environment"].items()}) for bot in bots]
    assert {s.shards for s in shards} == {4} and {s.inference for s in shards} == {"ray"}
    assert sorted(i for s in shards for i in s.shard_ids) == [0, 1, 2, 3]  # each shard once
    assert sum(create_bot(s, extensions=()).syncs_commands for s in shards) == 1
    assert all("automodel-bot run" in bot["command"] and bot["build"]["args"]["EXTRAS"] == "[ray]" for bot in bots)
    assert 'ARG EXTRAS=""' in (ROOT / "Dockerfile").read_text() and 'pip install -c constraints.txt ".${EXTRAS}"' in (ROOT / "Dockerfile").read_text()
