"""Reliability (#7), faults and security, through the loopback fake Discord to the real bot (all
cogs, real executor, tiny models). What other test files already show is not repeated here; the
table in RELIABILITY.md lists every scenario with the test that shows it.

Faults: a task handler raising and an OOM inside a batch, seen from Discord; one checkpoint that
fails to load at start with PRELOAD; 429 and 5xx answers on the defer, on progress edits, on the
final edit, on the followup that replaces a final edit Discord keeps failing, and on the channel
post after that; the gateway dropping while a job runs.

Security: trust_remote_code is never enabled (in the code, and at run time no user input reaches
from_pretrained); everything a user can make the bot allocate is bounded.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import discord
import pytest

import cogs.base
from bot import render
from bot.inference import loading
from bot.inference.errors import RateLimited
from bot.inference.local import LocalBackend
from bot.inference.tasks import ask as ask_task
from bot.inference.tasks import translate as translate_task
from bot.inference.tasks.embed import EmbedResult
from bot.inference.tasks.generate import GenerateResult
from bot.inference.tasks.mask import Candidate, MaskResult
from bot.inference.tasks.ner import Entity, NerResult
from bot.inference.tasks.translate import TranslateResult
from bot.settings import SettingsError, load_settings
from tests.fake_discord import (
    APP_ID,
    CHANNEL_ID,
    GUILD_ID,
    OTHER_USER_ID,
    USER_ID,
    FakeDiscord,
    RequestRecord,
    has_cancel_button,
)

# Fixtures of the end-to-end cog tests: the real bot on tiny models, and the autouse check that
# nothing it sends pings anyone or breaks Discord's limits.
from tests.test_cogs import (  # noqa: E402,F401
    _every_sent_message_is_safe,
    backend,
    bot_executor,
    bot_extensions,
    bot_posts,
    bot_settings,
    env,
    env_overrides,
    final,
    gated,
    refused,
    sent_payloads,
    shared_backend,
    slash,
    until,
)

ROOT = Path(__file__).resolve().parent.parent


class _QuickRetries:
    """asyncio as discord.py's retry loops see it, with every wait 100 times shorter: its 5xx
    retries wait 1, 3, 5, 7 and 9 s, which a test need not sit through."""

    def __getattr__(self, name: str):
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result=None):
        return await asyncio.sleep(delay / 100, result)


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(discord.webhook.async_, "asyncio", _QuickRetries())
    monkeypatch.setattr(discord.http, "asyncio", _QuickRetries())


def final_edit(record: RequestRecord) -> bool:
    """The edit that puts the result (or an error) in place: it removes the Cancel button."""
    return (record.method == "PATCH" and record.path.endswith("/messages/@original")
            and "components" in (record.json or {}) and not has_cancel_button(record.json["components"]))


def progress_edit(record: RequestRecord) -> bool:
    return (record.method == "PATCH" and record.path.endswith("/messages/@original")
            and has_cancel_button((record.json or {}).get("components")))


def followup(record: RequestRecord) -> bool:
    return record.method == "POST" and re.fullmatch(rf"/webhooks/{APP_ID}/[^/]+", record.path) is not None


def statuses(fake: FakeDiscord, which) -> list[int]:
    return [r.status for r in fake.requests if which(r)]


def is_sentiment(message) -> bool:
    return bool(message.embeds) and re.match(r"(POSITIVE|NEGATIVE) \(", message.embeds[0]["title"]) is not None


# -- faults: handlers raising, out of memory -------------------------------------------------------


@pytest.fixture
def faulty(backend):
    """Every batch of more than one request runs out of memory; the request "x" makes the handler raise."""

    def fault(task, batch):
        if len(batch) > 1:
            return RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        if batch[0].request.text == "x":
            return ValueError("the handler blew up")
        return None

    backend.fault = fault
    return backend


TEXTS = ["a", "b", "x", "c", "d"]  # one token each: the four queued ones make one batch
FAILED = r"⚠️ The model failed on this request \(error id \d+\)\. Try again or change the input\."


async def replies_to_one_run_then_a_batch_of_four(fake_discord, discord_bot, backend) -> dict[str, object]:
    """"a" runs alone while "b", "x", "c", "d" queue behind it (from four users), so they form one batch."""
    lane = discord_bot.executor.lanes["sentiment"]
    with gated(backend):
        interactions = [await fake_discord.invoke_slash("sentiment", {"text": TEXTS[0]}, user_id=USER_ID)]
        await until(lambda: lane.running, what="a running batch")
        interactions += [await fake_discord.invoke_slash("sentiment", {"text": text}, user_id=USER_ID + n)
                         for n, text in enumerate(TEXTS[1:], 1)]
        await until(lambda: lane.depth == 4, what="four queued requests")
    return dict(zip(TEXTS, [await final(i) for i in interactions]))


async def test_a_raising_handler_and_an_oom_batch_cost_only_the_bad_request(fake_discord, discord_bot, faulty):
    replies = await replies_to_one_run_then_a_batch_of_four(fake_discord, discord_bot, faulty)
    for text, reply in replies.items():
        if text == "x":
            assert re.fullmatch(FAILED, reply.content)
        else:
            assert is_sentiment(reply), reply.content
    sizes = [size for _, size in faulty.batches]
    assert sizes == [1, 4, 2, 1, 1, 2, 1, 1], sizes  # the batch of four split in halves, then single requests
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "still working"}))


async def test_a_request_that_breaks_its_batch_fails_alone(fake_discord, discord_bot, backend):
    """The request "x" makes every batch it is in raise (not out of memory). It meets the others in
    one real batch; they get their own results (the same as run alone later), and only "x" gets the
    failure."""

    def fault(task, batch):
        if any(prepared.request.text == "x" for prepared in batch):
            return ValueError("the handler blew up")
        return None

    backend.fault = fault
    replies = await replies_to_one_run_then_a_batch_of_four(fake_discord, discord_bot, backend)
    sizes = [size for _, size in backend.batches]  # before the runs below add theirs
    assert re.fullmatch(FAILED, replies["x"].content), replies["x"].content
    backend.fault = None
    for text in ("a", "b", "c", "d"):
        assert is_sentiment(replies[text]), replies[text].content
        alone = await slash(fake_discord, "sentiment", {"text": text}, user_id=OTHER_USER_ID + 1)
        assert replies[text].embeds == alone.embeds, text
    assert sizes == [1, 4, 1, 1, 1, 1], sizes  # "x" was in a batch of four, then each ran alone


# -- faults: a checkpoint that cannot be loaded at start --------------------------------------------


@env(PRELOAD="true", MODEL_NER="/nonexistent/checkpoints/ner")
async def test_a_checkpoint_failing_to_load_at_start_disables_only_its_command(fake_discord, discord_bot):
    assert any("MODEL_NER='/nonexistent/checkpoints/ner': directory not found" in line
               for line in fake_discord.logged_errors), fake_discord.logged_errors
    unavailable = "⚠️ The /ner model is unavailable right now."
    assert await refused(await fake_discord.invoke_slash("ner", {"text": "Alice lives in Paris."})) == unavailable
    menu = await fake_discord.invoke_message_command("Named entities", "Alice lives in Paris.")
    assert await refused(menu) == unavailable
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "the others still work"}))
    assert (await slash(fake_discord, "mask", {"text": "Paris is the [MASK] of France."})).embeds
    loaded = {row["task"]: row["loaded"] for row in discord_bot.executor.backend.describe()}
    assert not loaded["ner"] and all(v for task, v in loaded.items() if task != "ner")
    assert "/nonexistent" not in json.dumps([payload for _, payload in sent_payloads(fake_discord)])


# -- faults: 429 and 5xx from Discord ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_the_defer_survives_a_429_or_5xx(fake_discord, discord_bot, quick_retries, status):
    fake_discord.fail_next(1, status=status, route_filter=r"/callback$")
    interaction = await fake_discord.invoke_slash("sentiment", {"text": "acknowledged on the second try"})
    assert is_sentiment(await final(interaction))
    assert [r.status for r in interaction.requests if r.path.endswith("/callback")] == [status, 200]


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_the_final_edit_survives_a_429_or_5xx(fake_discord, discord_bot, quick_retries, status):
    fake_discord.fail_next(1, status=status, route_filter=final_edit)
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "edited on the second try"}))
    assert statuses(fake_discord, final_edit) == [status, 200]


@pytest.mark.parametrize("status", [429, 503])
async def test_a_final_edit_discord_keeps_failing_becomes_a_followup(fake_discord, discord_bot, quick_retries, status):
    fake_discord.fail_next(5, status=status, route_filter=final_edit)  # every attempt discord.py makes
    fake_discord.fail_next(1, status=status, route_filter=followup)  # and the followup's first one
    interaction = await fake_discord.invoke_slash("sentiment", {"text": "delivered as a followup"})
    reply = await interaction.wait_final(10)
    assert is_sentiment(reply) and not reply.ephemeral and not reply.loading
    assert statuses(fake_discord, final_edit) == [status] * 5
    assert statuses(fake_discord, followup) == [status, 200]
    assert not bot_posts(fake_discord)


async def test_when_edit_and_followup_keep_failing_the_result_is_posted_in_the_channel(
    fake_discord, discord_bot, quick_retries
):
    fake_discord.fail_next(5, status=503, route_filter=final_edit)
    fake_discord.fail_next(5, status=502, route_filter=followup)
    fake_discord.fail_next(1, status=429, route_filter=rf"^POST /channels/{CHANNEL_ID}/messages")
    await fake_discord.invoke_slash("sentiment", {"text": "posted in the channel"})
    await fake_discord.wait_for(lambda: bot_posts(fake_discord), 10, "the result in the channel")
    [post] = bot_posts(fake_discord)
    assert post.channel_id == CHANNEL_ID and is_sentiment(post)
    assert post.content == f"<@{USER_ID}>, here is your /sentiment result (the original reply could not be updated):"
    assert post.allowed_mentions == {"parse": [], "users": [USER_ID]}  # pings the requester only
    assert [r.status for r in fake_discord.find(rf"^POST /channels/{CHANNEL_ID}/messages")] == [429, 200]
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "and the next one is normal"}))


async def test_progress_edits_refused_by_discord_do_not_stop_the_result(fake_discord, discord_bot, backend):
    lane = discord_bot.executor.lanes["sentiment"]
    with gated(backend):
        first = await fake_discord.invoke_slash("sentiment", {"text": "holds the worker"})
        await until(lambda: lane.running, what="a running batch")
        fault = fake_discord.fail_next(5, status=429, retry_after=0.01, route_filter=progress_edit)
        waiting = await fake_discord.invoke_slash("sentiment", {"text": "waits in line"}, user_id=OTHER_USER_ID)
        await fake_discord.wait_for(lambda: fault.remaining == 0, 10, "five refused progress edits")
    assert is_sentiment(await final(waiting)) and is_sentiment(await final(first))


# -- faults: the gateway drops while a job runs ----------------------------------------------------


async def test_the_gateway_dropping_mid_job_loses_nothing(fake_discord, discord_bot, backend):
    lane = discord_bot.executor.lanes["sentiment"]
    with gated(backend):
        running = await fake_discord.invoke_slash("sentiment", {"text": "computed while the gateway is down"})
        await until(lambda: lane.running, what="a running batch")
        await running.wait_callback()
        await fake_discord.drop_gateway(wait_resumed=False)
        missed = await fake_discord.invoke_slash("sentiment", {"text": "sent while it is down"}, user_id=OTHER_USER_ID)
        await fake_discord.wait_resumed()
    assert fake_discord.replayed_count >= 1 and fake_discord.identify_count == 1
    assert is_sentiment(await final(running)) and is_sentiment(await final(missed))
    await fake_discord.drop_gateway()  # and once more, while idle
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "after two drops"}))


# -- security: trust_remote_code, checkpoints ------------------------------------------------------


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _mentions_from_pretrained(call: ast.Call) -> bool:
    nodes = [call.func, *call.args, *(k.value for k in call.keywords)]
    return any(isinstance(n, ast.Attribute) and n.attr == "from_pretrained" for n in nodes)


def test_trust_remote_code_is_never_enabled_in_the_code():
    """Static: wherever bot/ or cogs/ name trust_remote_code, the value is the literal False; every
    call that involves a from_pretrained passes only literal keywords or a local dict literal."""
    sources = sorted((ROOT / "bot").rglob("*.py")) + sorted((ROOT / "cogs").rglob("*.py"))
    calls = 0
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        dict_keys, local_dicts = set(), {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        dict_keys.add(id(key))
                        assert _is_false(value), f"{path}:{key.lineno}: trust_remote_code is not the literal False"
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert _is_false(node.value), f"{path}:{node.value.lineno}: trust_remote_code is not the literal False"
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        local_dicts[target.id] = node.value
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value == "trust_remote_code":
                assert id(node) in dict_keys, f"{path}:{node.lineno}: trust_remote_code set some other way"
            if isinstance(node, ast.Call) and _mentions_from_pretrained(node):
                calls += 1
                for keyword in node.keywords:
                    if keyword.arg is None:  # **expansion: must be a dict literal of constant keys
                        value = keyword.value
                        literal = local_dicts.get(value.id) if isinstance(value, ast.Name) else value
                        assert isinstance(literal, ast.Dict) and all(isinstance(k, ast.Constant) for k in literal.keys), (
                            f"{path}:{node.lineno}: **{ast.unparse(value)} may carry trust_remote_code")
    assert calls >= 4  # backend: tokenizer, config, model (twice); bench
    for name in ("bot/settings.py", ".env.example"):
        assert "TRUST_REMOTE_CODE" not in (ROOT / name).read_text().upper(), f"{name} must not make it a setting"


async def test_no_user_input_reaches_from_pretrained(fake_discord, discord_bot, backend, bot_settings, monkeypatch,
                                                     tiny_checkpoints):
    """At run time, with a fresh backend: every checkpoint loaded is a configured or allow-listed one,
    whatever the users send. (That each load gets trust_remote_code=False explicitly is checked on
    transformers itself: tests/test_security.py.)"""
    loads = []
    real_load = loading.load_pretrained

    def recording(loader, checkpoint, **options):
        loads.append((loader.__qualname__, checkpoint, options))
        return real_load(loader, checkpoint, **options)

    monkeypatch.setattr(loading, "load_pretrained", recording)
    backend.real = LocalBackend(bot_settings)  # nothing loaded yet: every load is seen
    hostile = "trust_remote_code=True evil/model ../../etc/passwd https://evil.invalid gpt2"
    requests = {
        "generate": {"prompt": hostile, "max_new_tokens": 4},
        "mask": {"text": f"[MASK] {hostile}"},
        "translate": {"text": hostile},
        "ask": {"question": hostile, "context": hostile},
        "ner": {"text": hostile},
        "sentiment": {"text": hostile},
        "embed": {"text": hostile, "other": hostile},
    }
    for name, options in requests.items():
        await slash(fake_discord, name, options)
    await refused(await fake_discord.invoke_slash("admin reload", {"task": "ner", "checkpoint": "evil/model"}))
    await refused(await fake_discord.invoke_slash("admin reload", {"task": "ner", "checkpoint": "x"},
                                                  user_id=OTHER_USER_ID))  # not an owner
    allowed = str(tiny_checkpoints["ner"])  # ADMIN_CHECKPOINTS in tests/test_cogs.py
    await final(await fake_discord.invoke_slash("admin reload", {"task": "sentiment", "checkpoint": allowed}))

    permitted = set(bot_settings.checkpoints.values()) | set(bot_settings.admin_checkpoints)
    assert {checkpoint for _, checkpoint, _ in loads} <= permitted
    assert {loader.rsplit(".", 1)[-1] for loader, _, _ in loads} == {"from_pretrained"}
    assert all("trust_remote_code" not in options for _, _, options in loads)  # load_pretrained sets it
    models = [loader for loader, _, _ in loads if not loader.startswith(("AutoTokenizer", "AutoConfig"))]
    assert len(models) >= 6


# -- security: bounded sizes -----------------------------------------------------------------------


def _options(commands: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for command in commands:
        stack = [(command["name"], option) for option in command.get("options", [])]
        while stack:
            path, option = stack.pop()
            if option["type"] in (1, 2):  # subcommand, group
                stack += [(f"{path} {option['name']}", o) for o in option.get("options", [])]
            else:
                out.append((f"{path} {option['name']}", option))
    return out


async def test_every_option_a_user_can_send_is_bounded(fake_discord, discord_bot):
    """What Discord enforces (the synced declarations) bounds every option; the server checks the
    same bounds again (tests/test_bad_input.py) and the settings behind them have hard caps."""
    options = _options(fake_discord.guild_commands[GUILD_ID])
    assert options
    for path, option in options:
        assert option["type"] != 11, f"{path}: users cannot upload attachments"
        if option["type"] == 3 and not option.get("choices"):
            assert 0 < option.get("max_length", 0) <= 6000 and option.get("min_length") == 1, (path, option)
        if option["type"] in (4, 10):
            assert "min_value" in option and "max_value" in option, (path, option)
    menus = [c for c in fake_discord.guild_commands[GUILD_ID] if c["type"] == 3]
    assert {m["name"] for m in menus} == {"Sentiment", "Named entities", "Translate"}  # read message text only


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_NEW_TOKENS", "2049"), ("MAX_INPUT_CHARS", "100001"), ("MAX_TOP_K", "101"), ("MAX_MASKS", "51"),
     ("MAX_BATCH_SIZE", "4097")],
)
def test_the_limits_behind_the_options_have_hard_caps(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


def test_work_per_request_and_attachments_are_bounded():
    """The work one request can cause is capped (windows, chunks), and the biggest attachment the bot
    can produce from the biggest inputs stays far under Discord's 10 MiB."""
    assert ask_task.MAX_WINDOWS <= 16 and translate_task.MAX_CHUNKS <= 16 and ask_task.MAX_ANSWER_TOKENS <= 64
    settings = load_settings({"MAX_INPUT_CHARS": "100000", "MAX_NEW_TOKENS": "2048", "MAX_TOP_K": "100",
                              "MAX_MASKS": "50"})
    longest = "é" * settings.max_input_chars  # two bytes each in UTF-8
    token = "w" * 40  # a long "token" of generated text
    window = 512  # entities come from one window of tokens
    worst = [
        GenerateResult(longest, token * settings.max_new_tokens, settings.max_new_tokens, "length", 1),
        MaskResult(longest, "[MASK]", [[Candidate(token, 0.1)] * settings.max_top_k] * settings.max_masks, longest),
        TranslateResult(longest, longest * 3, 16),
        NerResult(longest, [Entity("é", "PER", 0.9, i, i + 1) for i in range(0, 2 * window, 2)]),
        EmbedResult([0.123456789] * 8192, 1.0, [0.123456789] * 8192, 0.5),
    ]
    for result in worst:
        reply = render.as_reply(result)
        assert all(len(data) < 2 * 2**20 for _, data in reply.files), (type(result).__name__,
                                                                        [len(d) for _, d in reply.files])


def test_the_cooldown_table_forgets_users_who_went_quiet(monkeypatch):
    """The cooldown table does not keep every user who ever sent a command: once it passes 10,000
    users it falls back to those still inside their cooldown (who stay refused), and under a stream
    of new users it never holds more than 10,001."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(cogs.base, "time", SimpleNamespace(monotonic=lambda: clock.now))
    cooldowns = cogs.base.Cooldowns(seconds=1.0)

    def one_command_each(users: range) -> list[int]:
        sizes = []
        for user_id in users:
            clock.now += 0.01  # a hundred new users a second, so about a hundred inside their cooldown
            cooldowns.check(user_id)
            sizes.append(len(cooldowns.last))
        return sizes

    sizes = one_command_each(range(10_001))  # the 10,001st user: the quiet ones are forgotten
    still_cooling = set(range(10_001 - 100, 10_001))  # checked within the last second
    assert still_cooling <= set(cooldowns.last) and len(cooldowns.last) <= 101, len(cooldowns.last)
    for user_id in (10_001 - 100, 10_000):
        with pytest.raises(RateLimited):
            cooldowns.check(user_id)
    sizes += one_command_each(range(10_001, 50_000))
    assert max(sizes) <= 10_001 and len(cooldowns.last) <= 10_001, max(sizes)


async def test_an_expired_interaction_is_dropped_quietly(fake_discord, discord_bot, backend):
    """The defer is answered 10062 (the token died before the bot answered): the job is cancelled
    before it is computed, nothing is acknowledged twice (40060), no error is logged as unexpected,
    and the bot keeps answering. (test_cogs.py::test_a_request_whose_interaction_is_gone_is_not_computed
    shows the cancel with an injected 404; test_cogs.py::test_late_result_goes_to_the_channel_pinging_only_the_requester
    a token that expires while the job runs.)"""
    lane = discord_bot.executor.lanes["sentiment"]
    with gated(backend):
        busy = await fake_discord.invoke_slash("sentiment", {"text": "runs"}, user_id=OTHER_USER_ID)
        await until(lambda: lane.running, what="a running batch")
        expired = await fake_discord.invoke_slash("sentiment", {"text": "too late"}, expired=True)
        await expired.wait_callback()
        await until(lambda: discord_bot.executor.outcomes[("sentiment", "Cancelled")] == 1,
                    what="one cancelled job")
    assert is_sentiment(await final(busy))
    codes = [(r.response or {}).get("code") for r in expired.requests]
    assert codes == [10062] and expired.callback_type is None, codes
    assert not fake_discord.logged_errors, fake_discord.logged_errors
    assert is_sentiment(await slash(fake_discord, "sentiment", {"text": "next"}))
