"""End to end: the real AutoModelBot, the real cogs and the real executor with tiny random-weight
models, driven through the loopback fake Discord (tests/fake_discord.py).

Every test also checks, at teardown, that nothing the bot sent could ping anyone (see
`assert_no_pings`). The models are loaded once per module (`shared_backend`); each test gets its
own bot, executor and settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import cogs.base
from bot import render
from bot.client import EXTENSIONS, AutoModelBot
from bot.inference.executor import Executor
from bot.inference.local import LocalBackend
from bot.inference.tasks.ask import AskResult
from bot.inference.tasks.embed import EmbedResult
from bot.inference.tasks.generate import GenerateResult
from bot.inference.tasks.mask import Candidate, MaskResult
from bot.inference.tasks.ner import Entity, NerResult
from bot.inference.tasks.sentiment import SentimentResult
from bot.inference.tasks.translate import TranslateResult
from bot.settings import load_settings
from tests.answers import first_requests, run
from tests.fake_discord import (
    APP_ID,
    CHANNEL_ID,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    GUILD_ID,
    OTHER_USER_ID,
    TOKEN,
    USER_ID,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
    has_cancel_button,
)
from tests.faults import InjectingBackend

NO_PINGS = {"parse": []}
GUILD_PUT = f"PUT /applications/{APP_ID}/guilds/{GUILD_ID}/commands"
GLOBAL_PUT = f"PUT /applications/{APP_ID}/commands"
SLASH = {"generate", "mask", "translate", "ask", "ner", "sentiment", "embed", "models", "status", "help", "admin"}
MENUS = {"Sentiment", "Named entities", "Translate"}
TIMESTAMP = re.compile(r"<t:\d+:R>")
UNEXPECTED = r"💥 Something went wrong on our side \(error id `([0-9a-f]{8})`\)\. Please try again later\."
LONG_TEXT = ("Alice met Bob in Paris. " * 250)[:6000]

# -- fixtures -----------------------------------------------------------------------------------------


def env(**values: str):
    """Run a test with these settings on top of the module's defaults."""
    return pytest.mark.parametrize("env_overrides", [values], ids=["env"])


@pytest.fixture
def env_overrides() -> dict[str, str]:
    return {}


@pytest.fixture
def bot_settings(tiny_env, tiny_checkpoints, peaked_checkpoints, tmp_path, env_overrides):
    base = {
        "ADMIN_CHECKPOINTS": f"{tiny_checkpoints['ner']},{peaked_checkpoints['sentiment']}",
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_GUILD_ID": str(GUILD_ID),
        "STATE_DIR": str(tmp_path / "state"),
        "USER_COOLDOWN": "0",
        "OWNER_IDS": str(USER_ID),
    }
    return load_settings(tiny_env | base | env_overrides)


@pytest.fixture
def bot_extensions() -> tuple[str, ...]:
    return EXTENSIONS


@pytest.fixture(scope="module")
def shared_backend(tiny_settings) -> LocalBackend:
    """The tiny models, loaded once for the module."""
    return LocalBackend(tiny_settings)


@pytest.fixture
def backend(shared_backend, bot_settings) -> InjectingBackend:
    """The shared backend under this test's settings, behind a gate a test can close."""
    shared_backend.settings = bot_settings
    shared_backend.checkpoints = dict(bot_settings.checkpoints)  # undo any /admin reload
    return InjectingBackend(shared_backend)


@pytest.fixture
def bot_executor(bot_settings, backend) -> Executor:
    return Executor(bot_settings, backend)


@pytest.fixture(autouse=True)
def _every_sent_message_is_safe(request):
    yield
    fake = request.node.funcargs.get("fake_discord")
    if fake is not None:
        assert_no_pings(fake)
        payloads = [payload for _, payload in sent_payloads(fake)]  # progress edits and late results included
        for payload in payloads:
            assert_within_limits(payload.get("content"), payload.get("embeds") or [])
        assert TOKEN not in json.dumps(payloads), "the bot token reached the chat"


@pytest.fixture
def slow_generate(shared_backend):
    """/generate takes ~30 ms per token, so a test can watch it stream and cancel it."""
    loaded = shared_backend.acquire("generate")
    shared_backend.release(loaded)
    handle = loaded.model.register_forward_pre_hook(lambda module, args: time.sleep(0.03))
    yield
    handle.remove()


# -- helpers --------------------------------------------------------------------------------------


def sent_payloads(fake: FakeDiscord) -> list[tuple[str, dict]]:
    """(route, payload) of every message the bot created or edited: interaction responses that carry
    a message, followups, edits of interaction replies, channel and DM messages."""
    out = []
    for record in fake.requests:
        body = record.json or {}
        if record.route.endswith("/callback"):
            if body.get("type") in (CHANNEL_MESSAGE, 7):
                out.append((record.route, body.get("data") or {}))
        elif re.match(r"(POST|PATCH) /(webhooks|channels)/\d+/[^/]+(/messages(/[^/]+)?)?$", record.route):
            out.append((record.route, body))
    return out


def assert_no_pings(fake: FakeDiscord) -> None:
    """Every message sets allowed_mentions to ping nobody, except a late result, which may ping the
    one user it opens with."""
    for route, payload in sent_payloads(fake):
        mentions = payload.get("allowed_mentions")
        assert mentions is not None and mentions.get("parse") == [], f"{route} may ping: {mentions}"
        assert not mentions.get("roles") and not mentions.get("replied_user"), f"{route}: {mentions}"
        users = mentions.get("users", [])
        assert len(users) <= 1 and all(payload["content"].startswith(f"<@{u}>") for u in users), (route, mentions)


def embed_size(embed: dict) -> int:
    texts = [embed.get("title", ""), embed.get("description", ""), embed.get("footer", {}).get("text", "")]
    texts += [part for f in embed.get("fields", []) for part in (f["name"], f["value"])]
    return sum(map(len, texts))


def assert_within_limits(content: str | None, embeds: list[dict]) -> None:
    assert len(content or "") <= 2000
    assert len(embeds) <= 10 and sum(embed_size(e) for e in embeds) <= 6000
    for embed in embeds:
        assert len(embed.get("title", "")) <= 256 and len(embed.get("description", "")) <= 4096
        assert len(embed.get("fields", [])) <= 25
        for field in embed.get("fields", []):
            assert len(field["name"]) <= 256 and 0 < len(field["value"]) <= 1024


async def final(interaction: FakeInteraction, timeout: float = 30) -> FakeMessage:
    """The reply once its last edit removed the Cancel button (progress edits carry it)."""
    reply = await interaction.wait_final(timeout, until=lambda m: not has_cancel_button(m.components))
    assert_within_limits(reply.content, reply.embeds)
    return reply


async def slash(
    fake: FakeDiscord, name: str, options: dict | None = None, user_id: int = USER_ID, timeout: float = 30
) -> FakeMessage:
    """Run a task command and return its final reply: deferred, then edited, public."""
    interaction = await fake.invoke_slash(name, options, user_id=user_id)
    reply = await final(interaction, timeout)
    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE and not reply.ephemeral, reply.content
    return reply


async def refused(interaction: FakeInteraction) -> str:
    """The content of an ephemeral first response (user errors never defer)."""
    reply = await interaction.wait_final(10)
    assert interaction.callback_type == CHANNEL_MESSAGE and reply.ephemeral, (interaction.callback_type, reply)
    return reply.content


async def until(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    """Poll a condition the fake's request log cannot signal (executor state); fail, saying what
    was awaited, if it does not hold within `timeout` seconds."""
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, f"timed out after {timeout:g} s waiting for {what or 'a condition'}"
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def gated(backend: InjectingBackend):
    """Batches reaching the backend wait inside this block: the executor looks busy."""
    backend.gate.clear()
    try:
        yield
    finally:
        backend.gate.set()


def cancel_button(message: FakeMessage) -> str:
    [custom_id] = message.custom_ids()
    return custom_id


def field(embed: dict, name: str) -> str:
    return next(f["value"] for f in embed["fields"] if f["name"] == name)


# -- every command ----------------------------------------------------------------------------------


async def test_extensions_load_and_command_names_are_unique(fake_discord, discord_bot):
    assert set(discord_bot.extensions) == set(EXTENSIONS)
    assert not [e for e in fake_discord.logged_errors if "extension" in e]
    commands = discord_bot.tree.get_commands()
    keys = [(c.name, type(c).__name__) for c in commands]
    assert len(keys) == len(set(keys))
    assert {c.name for c in commands} == SLASH | MENUS
    synced = fake_discord.guild_commands[GUILD_ID]
    assert len({(c["name"], c["type"]) for c in synced}) == len(synced) == len(SLASH | MENUS)


def check_generate(reply: FakeMessage) -> None:
    assert not reply.embeds and reply.content.startswith("**Hello @\u200beveryone <\u200b@123>**")
    assert re.search(r"\n-# \d+ tokens · (length|eos) · seed 7$", reply.content)


def check_mask(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    assert embed["title"] == "Fill-mask" and "[MASK]" not in embed["description"]
    assert [f["name"] for f in embed["fields"]] == ["mask 1", "mask 2"]
    for f in embed["fields"]:
        assert f["value"].startswith("```") and len(f["value"].strip("`\n").splitlines()) == 3
    assert embed["footer"]["text"] == "top 3 candidates per [MASK]"


def check_translate(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    assert embed["title"] == "Translation" and embed["description"]
    assert field(embed, "Original") == "> Hello, my dog is cute."


def check_ask(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    assert embed["title"].startswith(("Answer: ", "No confident answer"))
    assert field(embed, "Question") == "> Where do I live?"


def check_ner(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    assert embed["title"] == "Named entities" and "Berlin" in embed["description"]
    assert re.fullmatch(r"\d+ entities|No entities found\.", embed["footer"]["text"])


def check_sentiment(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    rows = embed["description"].strip("`\n").splitlines()
    assert [row.split()[0] for row in rows] == ["NEGATIVE", "POSITIVE"]  # a bar per label
    assert all("█" in row or "░" in row for row in rows)
    percents = [float(row.rsplit(maxsplit=1)[1].rstrip("%")) for row in rows]
    assert abs(sum(percents) - 100) < 0.2
    assert embed["title"] == f"{rows[percents.index(max(percents))].split()[0]} ({max(percents):.1f}%)"


def check_embed(reply: FakeMessage) -> None:
    [embed] = reply.embeds
    assert embed["title"] == "Embedding"
    assert -1 <= float(field(embed, "cosine similarity").strip("*")) <= 1
    [file] = reply.files
    payload = json.loads(file.data)
    assert file.name == "embedding.json" and len(payload["vector"]) == payload["dimension"] == 64
    assert abs(sum(v * v for v in payload["vector"]) - 1) < 1e-4


TASK_COMMANDS = {
    "generate": ({"prompt": "Hello @everyone <@123>", "max_new_tokens": 12, "seed": 7}, check_generate),
    "mask": ({"text": "Paris is the [MASK] of <mask>.", "top_k": 3}, check_mask),
    "translate": ({"text": "Hello, my dog is cute."}, check_translate),
    "ask": ({"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin."}, check_ask),
    "ner": ({"text": "My name is Wolfgang and I live in Berlin."}, check_ner),
    "sentiment": ({"text": "I love using transformers library!"}, check_sentiment),
    "embed": ({"text": "A cat sits on the mat.", "other": "A kitten rests on a rug."}, check_embed),
}


@pytest.mark.parametrize("name", TASK_COMMANDS)
async def test_task_command_defers_then_edits_the_result(fake_discord, discord_bot, name):
    options, check = TASK_COMMANDS[name]
    check(await slash(fake_discord, name, options))
    routes = [route for route, _ in sent_payloads(fake_discord)]
    assert routes and routes[-1].startswith("PATCH /webhooks/")  # the final edit, checked for pings


@pytest.mark.parametrize(
    ("name", "title", "fields"),
    [
        ("models", "Models", [f"/{t}" for t in TASK_COMMANDS]),
        ("status", "Status", ["uptime", "queued in all", "model weights loaded"]),
        ("help", "automodel-bot", [f"/{t} " for t in TASK_COMMANDS]),  # usage lines: "/ask question context"
    ],
)
async def test_info_commands_answer_ephemeral_embeds(fake_discord, discord_bot, name, title, fields):
    interaction = await fake_discord.invoke_slash(name)
    reply = await interaction.wait_final()
    assert interaction.callback_type == CHANNEL_MESSAGE and reply.ephemeral
    [embed] = reply.embeds
    assert embed["title"] == title
    names = [f["name"] for f in embed["fields"]]
    assert all(any(n.startswith(want) for n in names) for want in fields), names
    assert_within_limits(reply.content, reply.embeds)
    if name == "models":
        assert embed["footer"]["text"].startswith("DTYPE=auto: ")  # what DTYPE=auto chose, and why


async def test_models_says_which_models_run_packed(fake_discord, discord_bot):
    for name in ("sentiment", "generate"):  # loaded, whatever ran before
        options, check = TASK_COMMANDS[name]
        check(await slash(fake_discord, name, options))
    reply = await (await fake_discord.invoke_slash("models")).wait_final()
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert " · packed · loaded" in fields["/sentiment"]  # an encoder on CPU: batches without padding
    assert " · packed" not in fields["/generate"] and " · loaded" in fields["/generate"]
    assert " · row by row" not in fields["/generate"]  # float32 decoders keep SDPA


async def test_models_says_bf16_generate_runs_row_by_row(fake_discord, discord_bot, bot_settings, monkeypatch):
    bf16 = LocalBackend(dataclasses.replace(bot_settings, dtype="bfloat16"))  # the module's shared backend is fp32
    run(bf16, "generate", [first_requests()["generate"]])
    monkeypatch.setattr(discord_bot.executor, "backend", bf16)
    reply = await (await fake_discord.invoke_slash("models")).wait_final()
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert "bfloat16 · row by row · loaded" in fields["/generate"]  # prompts of any widths batch, as alone


async def test_models_says_where_products_run_in_pieces(fake_discord, discord_bot, bot_settings, monkeypatch):
    """Forced (this CPU may not need it): a model whose bf16 products change with a call's rows."""
    from bot.inference import products

    monkeypatch.setattr(products, "_moves", lambda shape, pieces: not pieces)
    bf16 = LocalBackend(dataclasses.replace(bot_settings, dtype="bfloat16"))
    run(bf16, "sentiment", [first_requests()["sentiment"]])
    monkeypatch.setattr(discord_bot.executor, "backend", bf16)
    reply = await (await fake_discord.invoke_slash("models")).wait_final()
    fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
    assert "bfloat16 · packed · products in fixed-size pieces · loaded" in fields["/sentiment"]


@pytest.mark.parametrize(
    ("menu", "title"),
    [("Sentiment", r"(POSITIVE|NEGATIVE) \("), ("Named entities", "Named entities"), ("Translate", "Translation")],
)
async def test_message_context_menus(fake_discord, discord_bot, menu, title):
    interaction = await fake_discord.invoke_message_command(menu, "John works at Google in London. @everyone")
    reply = await final(interaction)
    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE and not reply.ephemeral
    assert re.match(title, reply.embeds[0]["title"])


async def test_context_menu_on_a_message_without_text_is_refused(fake_discord, discord_bot):
    content = await refused(await fake_discord.invoke_message_command("Sentiment", "   "))
    assert content == "⚠️ That message has no text to read (only attachments or embeds)."


# -- rendering limits ------------------------------------------------------------------------------


def test_long_generation_is_cut_with_a_note_and_attached():
    text = ("lorem ipsum dolor sit amet " * 400)[:10_000]
    reply = render.reply_generate(GenerateResult("Once upon a time", text, 2000, "length", 3))
    assert len(reply.content) <= 2000 - render.HEADER_ROOM
    assert "(cut to fit Discord; the full text is attached)\n-# 2000 tokens · length · seed 3" in reply.content
    assert reply.files == [("generation.txt", ("Once upon a time" + text).encode())]
    assert len(render.prepend(reply, f"<@{USER_ID}>, here is your /generate result (the original reply expired):")
               .content) <= 2000


def test_long_prompt_shows_its_end_and_attaches_everything():
    prompt = "start " + "x" * 1990 + " the end"
    reply = render.reply_generate(GenerateResult(prompt, " and more", 2, "length", 3))
    assert reply.content.startswith("**…") and "the end** and more" in reply.content and "start" not in reply.content
    assert reply.files == [("generation.txt", (prompt + " and more").encode())]


def test_streaming_text_is_cut_without_promising_a_file():
    reply = render.reply_generate(GenerateResult("p", "word " * 2000, 0, "…", 1), streaming=True)
    assert len(reply.content) <= 2000 and reply.content.endswith("…\n-# ✍️ writing…") and not reply.files


def huge_results() -> dict[str, object]:
    labels = ["PER", "ORG", "LOC", "MISC", "EVENT"]  # every word an entity, of five kinds
    words = re.finditer(r"\S+", LONG_TEXT)
    entities = [Entity(m.group(), labels[i % 5], 0.9, m.start(), m.end()) for i, m in enumerate(words)]
    candidates = [[Candidate("token" * 6, 0.01)] * 100 for _ in range(50)]
    middle = len(LONG_TEXT) // 2
    return {
        "generate": GenerateResult("@everyone " * 200, "**bold**\x15 " * 1200, 2048, "length", 1),
        "mask": MaskResult(LONG_TEXT, "[MASK]", candidates, LONG_TEXT),
        "translate": TranslateResult(LONG_TEXT, LONG_TEXT * 2, 16),
        "ask": AskResult("why? " * 100, LONG_TEXT, LONG_TEXT[middle : middle + 300], 0.9, middle, middle + 300, True),
        "ner": NerResult(LONG_TEXT, entities),
        "sentiment": SentimentResult("label0", 0.5, {f"label{i}" * 10: 1 / 60 for i in range(60)}),
        "embed": EmbedResult([0.01] * 4096, 3.0, [0.01] * 4096, 0.5),
    }


@pytest.mark.parametrize("task", list(huge_results()))
def test_huge_results_fit_discord_and_cut_text_is_attached(task):
    reply = render.as_reply(huge_results()[task])
    embeds = [e.to_dict() for e in reply.embeds]
    assert_within_limits(reply.content, embeds)
    shown = (reply.content or "") + "".join(e.get("description", "") + e.get("footer", {}).get("text", "")
                                            for e in embeds)
    if "attached" in shown:
        assert reply.files and all(data for _, data in reply.files), "a promised attachment is missing"
    assert "@everyone" not in shown and "\x15" not in shown


async def test_long_translation_is_cut_in_the_embed_and_attached_in_full(fake_discord, discord_bot):
    # 14 pieces of 128 tokens in beam search: seconds on a quiet machine, minutes on a busy one (a CI
    # run beside other work took over 30 s), so this wait is generous; it bounds, it does not measure.
    reply = await slash(fake_discord, "translate", {"text": LONG_TEXT[:4000]}, timeout=180)
    [embed] = reply.embeds
    assert embed["description"].endswith(render.CUT_NOTE) and embed["footer"]["text"].startswith("long text")
    [file] = reply.files
    assert file.name == "translation.txt" and len(file.data.decode()) > len(embed["description"])


@pytest.mark.parametrize("name", ["translate", "ner"])
async def test_a_6000_character_input_gets_a_clear_reply(fake_discord, discord_bot, name):
    interaction = await fake_discord.invoke_slash(name, {"text": LONG_TEXT})
    reply = await final(interaction)
    if reply.ephemeral:  # the tiny models read 128 tokens: "too long", with the numbers
        assert re.fullmatch(r"⚠️ The text (is [\d,]+ tokens|needs \d+ pieces).*Shorten it\.", reply.content)
    else:
        assert reply.embeds


# -- user errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mask", {"text": "No mask here."}, "Put [MASK] (or <mask>) where the missing word goes"),
        ("mask", {"text": "A [MASK].", "top_k": 999}, "`top_k` must be between 1 and 10 (got 999)."),
        ("sentiment", {"text": " \n\t "}, "The text is empty"),
        ("generate", {"prompt": "Hi", "max_new_tokens": 100_000}, "`max_new_tokens` must be between 1 and 200"),
        ("generate", {"prompt": "Hi", "temperature": 9.5}, "`temperature` must be between 0 and 2"),
        ("embed", {"text": "x" * 7000}, "The text is 7,000 characters; the limit is 6,000."),
        ("ask", {"question": "?", "context": "\x00\x01"}, "The context is empty"),
    ],
)
async def test_user_errors_are_ephemeral(fake_discord, discord_bot, name, options, message):
    content = await refused(await fake_discord.invoke_slash(name, options))
    assert content.startswith("⚠️ ") and message in content


@env(USER_COOLDOWN="60")
async def test_second_command_within_the_cooldown_is_refused_with_when_to_retry(fake_discord, discord_bot):
    await slash(fake_discord, "sentiment", {"text": "first"})
    content = await refused(await fake_discord.invoke_slash("sentiment", {"text": "second"}))
    assert content.startswith("🚦 Slow down a little: one command every 60 s.") and TIMESTAMP.search(content)
    await slash(fake_discord, "sentiment", {"text": "someone else"}, user_id=OTHER_USER_ID)


@env(QUEUE_SIZE_PER_MODEL="1")
async def test_full_queue_is_refused_with_a_busy_reply(fake_discord, discord_bot, backend):
    with gated(backend):
        running = await fake_discord.invoke_slash("sentiment", {"text": "runs"})
        await until(lambda: discord_bot.executor.lanes["sentiment"].running, what="a running batch")
        queued = await fake_discord.invoke_slash("sentiment", {"text": "waits"}, user_id=OTHER_USER_ID)
        await until(lambda: discord_bot.executor.lanes["sentiment"].depth == 1, what="one queued request")
        content = await refused(await fake_discord.invoke_slash("sentiment", {"text": "no room"}, user_id=7))
    assert content.startswith("🚦 The bot is busy (1 /sentiment requests waiting, 1 in all).")
    assert TIMESTAMP.search(content)
    for interaction in (running, queued):
        assert (await final(interaction)).embeds


async def test_a_request_whose_interaction_is_gone_is_not_computed(fake_discord, discord_bot, backend):
    lane = discord_bot.executor.lanes["sentiment"]
    with gated(backend):
        busy = await fake_discord.invoke_slash("sentiment", {"text": "runs"}, user_id=OTHER_USER_ID)
        await until(lambda: lane.running, what="a running batch")
        fake_discord.fail_next(2, status=404, code=10062, route_filter=r"/callback$")  # the defer and the error
        await fake_discord.invoke_slash("sentiment", {"text": "acknowledged too late"})
        await until(lambda: discord_bot.executor.outcomes[("sentiment", "Cancelled")] == 1,
                    what="one cancelled job")
    assert (await final(busy)).embeds


# -- waiting: place in line, streaming, cancel -----------------------------------------------------


async def test_queued_request_shows_its_place_and_can_be_cancelled(fake_discord, discord_bot, backend):
    with gated(backend):
        first = await fake_discord.invoke_slash("sentiment", {"text": "first"})
        await until(lambda: discord_bot.executor.lanes["sentiment"].running, what="a running batch")
        second = await fake_discord.invoke_slash("sentiment", {"text": "second"}, user_id=OTHER_USER_ID)
        waiting = await second.wait_final(10, until=lambda m: has_cancel_button(m.components))
        assert re.fullmatch(r"⏳ You are \*\*#1\*\* in line for /sentiment; it should start <t:\d+:R>\.",
                            waiting.content)
        click = await fake_discord.click_button(waiting, cancel_button(waiting), user_id=OTHER_USER_ID)
        await click.wait_callback()
        cancelled = await final(second)
    assert cancelled.content == "🛑 Cancelled." and not cancelled.embeds
    assert (await final(first)).embeds


async def test_streaming_generation_cancel_button_belongs_to_the_requester(
    fake_discord, discord_bot, slow_generate
):
    interaction = await fake_discord.invoke_slash("generate", {"prompt": "Once upon", "max_new_tokens": 200})
    streaming = await interaction.wait_final(15, until=lambda m: "writing…" in m.content)
    assert streaming.content.startswith("**Once upon**") and has_cancel_button(streaming.components)
    button = cancel_button(streaming)

    stranger = await fake_discord.click_button(streaming, button, user_id=OTHER_USER_ID)
    assert await refused(stranger) == "This isn't your request, so you can't cancel it."

    await (await fake_discord.click_button(streaming, button)).wait_callback()
    reply = await final(interaction)
    assert reply.content.startswith("🛑 Cancelled.\n**Once upon**")
    assert re.search(r"-# \d+ tokens · cancelled · seed \d+$", reply.content)
    assert int(re.search(r"(\d+) tokens", reply.content).group(1)) < 200


# -- late results: the interaction token expired --------------------------------------------------


def bot_posts(fake: FakeDiscord) -> list[FakeMessage]:
    """Messages the bot posted itself (in a channel or a DM), not through an interaction."""
    return [m for m in fake.messages.values() if m.webhook_id is None and int(m.author["id"]) == APP_ID]


@pytest.mark.parametrize("how", ["token rejected", "interaction too old", "channel refuses"])
async def test_late_result_goes_to_the_channel_pinging_only_the_requester(
    fake_discord, discord_bot, backend, monkeypatch, how
):
    if how == "interaction too old":
        monkeypatch.setattr(cogs.base, "TOKEN_LIFETIME", -1.0)
    if how == "channel refuses":  # no permission to post there: fall back to a DM
        fake_discord.fail_next(1, status=403, code=50013, route_filter=rf"^POST /channels/{CHANNEL_ID}/messages")
    with gated(backend):
        interaction = await fake_discord.invoke_slash("generate", {"prompt": "late @everyone", "max_new_tokens": 4})
        await interaction.wait_callback()
        if how != "interaction too old":
            interaction.expire()
    await fake_discord.wait_for(lambda: bot_posts(fake_discord), 30, "the late result")
    [late] = bot_posts(fake_discord)
    dm = how == "channel refuses"
    assert late.channel_id == (int(fake_discord.dm_channels[USER_ID]["id"]) if dm else CHANNEL_ID)
    assert late.content.startswith(f"<@{USER_ID}>, here is your /generate result (the original reply expired):\n"
                                   "**late @\u200beveryone**")
    wanted = NO_PINGS if dm else {"parse": [], "users": [USER_ID]}
    assert late.allowed_mentions == wanted
    assert_within_limits(late.content, late.embeds)


# -- errors and admin ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before replying", "after deferring"])
async def test_unexpected_error_shows_only_an_error_id(fake_discord, discord_bot, where):
    secret = f"boom in /work/main/bot/secret.py with {TOKEN}"

    def explode(*args, **kwargs):
        raise RuntimeError(secret)

    with pytest.MonkeyPatch.context() as patch:  # undone before the bot closes
        if where == "before replying":
            patch.setattr(discord_bot.executor, "snapshot", explode)
            interaction = await fake_discord.invoke_slash("status")
        else:
            patch.setattr(cogs.base, "as_reply", explode)
            interaction = await fake_discord.invoke_slash("sentiment", {"text": "fine"})
        reply = await final(interaction)
    assert reply.ephemeral == (where == "before replying") and not reply.embeds and not reply.files
    error_id = re.fullmatch(UNEXPECTED, reply.content).group(1)
    assert any(error_id in line and "RuntimeError" in line for line in fake_discord.logged_errors)
    chat = json.dumps([payload for _, payload in sent_payloads(fake_discord)])
    assert not any(leak in chat for leak in ("Traceback", "/work/", TOKEN, "boom"))


@pytest.mark.parametrize("command", ["admin reload", "admin sync"])
async def test_admin_commands_are_refused_for_non_owners(fake_discord, discord_bot, command):
    options = {"task": "sentiment"} if command == "admin reload" else {}
    content = await refused(await fake_discord.invoke_slash(command, options, user_id=OTHER_USER_ID))
    assert content == "⛔ Only the bot's owners can use this command."
    assert len(fake_discord.find(GUILD_PUT)) == 1  # the start-up sync only


async def test_admin_reload_refuses_a_checkpoint_that_is_not_allow_listed(fake_discord, discord_bot):
    options = {"task": "sentiment", "checkpoint": "evil/model`@everyone"}
    content = await refused(await fake_discord.invoke_slash("admin reload", options))
    assert content == "⚠️ `evil/model@everyone` is not in ADMIN_CHECKPOINTS; add it there first."
    assert discord_bot.executor.backend.checkpoints["sentiment"].endswith("tiny-distilbert-sst2")


def _with_name_case_swapped(path: str) -> str:
    parent, _, name = path.rpartition("/")
    return f"{parent}/{name.swapcase()}"


# Spellings close to an allow-listed checkpoint that are not it: each must be refused as it is, never
# normalised, stripped, case-folded, expanded or matched by prefix onto the allowed one.
NEAR_MISSES: dict[str, Callable[[str], str]] = {
    "trailing-slash": lambda path: path + "/",
    "trailing-dot": lambda path: path + "/.",
    "double-slash-inside": lambda path: "//".join(path.rsplit("/", 1)),
    "sibling-via-dot-dot": lambda path: path + "/../tiny-gpt2",
    "surrounding-whitespace": lambda path: f"  {path} ",
    "trailing-newline": lambda path: path + "\n",
    "changed-case": _with_name_case_swapped,
    "trailing-zero-width-space": lambda path: path + "\u200b",
    "file-url": lambda path: "file://" + path,
    "home-relative": lambda path: "~/" + os.path.relpath(path, Path.home()),
    "cwd-relative": lambda path: os.path.relpath(path),
    "etc-passwd": lambda path: "/etc/passwd",
    "filesystem-root": lambda path: "/",
}


@pytest.mark.parametrize("spelling", list(NEAR_MISSES))
async def test_admin_reload_refuses_near_misses_of_an_allow_listed_checkpoint(
    fake_discord, discord_bot, backend, tiny_checkpoints, spelling
):
    """A checkpoint that only looks like an allow-listed one is refused with the ephemeral
    "not in ADMIN_CHECKPOINTS" reply; no checkpoint changes and nothing is loaded."""
    allowed = str(tiny_checkpoints["ner"])  # in ADMIN_CHECKPOINTS (see bot_settings)
    checkpoint = NEAR_MISSES[spelling](allowed)
    assert checkpoint != allowed
    switches: list[tuple[str, str]] = []
    real_switch = backend.set_checkpoint

    def recording_switch(task: str, target: str) -> None:
        switches.append((task, target))
        real_switch(task, target)

    backend.set_checkpoint = recording_switch  # this test's own InjectingBackend
    before = dict(backend.checkpoints)
    options = {"task": "sentiment", "checkpoint": checkpoint}
    content = await refused(await fake_discord.invoke_slash("admin reload", options))
    assert content.startswith("⚠️ `"), content
    assert content.endswith("` is not in ADMIN_CHECKPOINTS; add it there first."), content
    assert not switches and backend.checkpoints == before
    assert before["sentiment"] == str(tiny_checkpoints["sentiment"])


async def test_admin_reload_switches_to_an_allow_listed_checkpoint(
    fake_discord, discord_bot, tiny_checkpoints, peaked_checkpoints
):
    before = (await slash(fake_discord, "sentiment", {"text": "hello"})).embeds[0]["description"]
    # In ADMIN_CHECKPOINTS (see bot_settings), but a token-classification model: no head for /sentiment.
    wrong = str(tiny_checkpoints["ner"])
    refusal = await final(await fake_discord.invoke_slash("admin reload", {"task": "sentiment", "checkpoint": wrong}))
    assert refusal.ephemeral and "/sentiment" in refusal.content and "now uses" not in refusal.content
    other = str(peaked_checkpoints["sentiment"])
    reply = await final(await fake_discord.invoke_slash("admin reload", {"task": "sentiment", "checkpoint": other}))
    assert reply.ephemeral and reply.content == f"✅ /sentiment now uses `{other}`."
    after = (await slash(fake_discord, "sentiment", {"text": "hello"})).embeds[0]["description"]
    assert after != before  # another model's probabilities, for the same two labels
    assert [row.split()[0] for row in after.strip("`\n").splitlines()] == ["NEGATIVE", "POSITIVE"]


# -- command sync ----------------------------------------------------------------------------------


async def test_commands_sync_to_the_guild_once_and_again_only_when_asked(
    fake_discord, discord_bot, bot_settings, backend
):
    assert len(fake_discord.find(GUILD_PUT)) == 1 and not fake_discord.find(GLOBAL_PUT)
    assert {c["name"] for c in fake_discord.guild_commands[GUILD_ID]} == SLASH | MENUS

    restarted = AutoModelBot(bot_settings, executor=Executor(bot_settings, backend), extensions=EXTENSIONS)
    await restarted.login(TOKEN)  # runs setup_hook: loads the cogs and syncs if needed
    await restarted.close()
    assert len(fake_discord.find(GUILD_PUT)) == 1  # unchanged command set: no sync on restart

    reply = await final(await fake_discord.invoke_slash("admin sync"))
    assert reply.ephemeral and reply.content == f"✅ Commands synced to guild {GUILD_ID}."
    assert len(fake_discord.find(GUILD_PUT)) == 2 and not fake_discord.find(GLOBAL_PUT)

    discord_bot.tree.remove_command("help")
    await discord_bot.sync_commands()  # a changed command set syncs without being asked
    assert len(fake_discord.find(GUILD_PUT)) == 3
