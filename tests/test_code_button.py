"""The Code button (#14) end to end: the real bot, cogs and executor on tiny models, through the
loopback fake Discord. Every task reply carries it; anyone may press it and only they see the
script; it works after the original interaction expired, on a reply delivered late (channel, DM),
and after a restart of the bot; an expired entry says "too old"; a broken store costs the button,
never the reply. tests/test_reproduce.py checks that the scripts themselves reproduce the results.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bot.code_store
from bot.client import EXTENSIONS, AutoModelBot
from bot.code_store import CodeStore
from bot.inference.executor import Executor
from bot.inference.tasks import TASKS
from bot.reproduce import ScriptSpec
from tests.fake_discord import (
    CHANNEL_ID,
    CHANNEL_MESSAGE,
    GUILD_ID,
    OTHER_USER_ID,
    USER_ID,
    FakeDiscord,
    FakeMessage,
)

# Fixtures of the end-to-end cog tests: the real bot on tiny models, and the autouse check that
# nothing it sends pings anyone or breaks Discord's limits.
from tests.test_cogs import (  # noqa: F401
    LONG_TEXT,
    TASK_COMMANDS,
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
    shared_backend,
    slash,
)

AUTO_CLASSES = {name: task.auto_class_name for name, task in TASKS.items()}
MENU_TASKS = {"Sentiment": "sentiment", "Named entities": "ner", "Translate": "translate"}


def code_button(message: FakeMessage) -> str:
    """The custom_id of the message's Code button; a final reply carries nothing else."""
    [custom_id] = message.custom_ids()
    assert custom_id.startswith("code:"), custom_id
    return custom_id


async def press(fake: FakeDiscord, message: FakeMessage, user_id: int = USER_ID) -> FakeMessage:
    interaction = await fake.click_button(message, code_button(message), user_id=user_id)
    answer = await interaction.wait_final(15)
    assert interaction.callback_type == CHANNEL_MESSAGE and answer.ephemeral
    return answer


def script_of(answer: FakeMessage) -> str:
    """The script an answer carries: in a ```py block, or attached when too long for one."""
    if answer.files:
        [file] = answer.files
        assert file.name.endswith(".py") and "```" not in answer.content
        return file.data.decode()
    assert answer.content.startswith("```py\n") and answer.content.endswith("\n```")
    assert answer.content.count("```") == 2  # nothing inside closes the block early
    return answer.content[len("```py\n") : -len("\n```")]


def assigned(source: str, name: str) -> object:
    """The value a script assigns to `name` at top level (a literal)."""
    tree = ast.parse(source)
    [value] = [n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name]
    return ast.literal_eval(value)


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord, settings, executor):
    """An AutoModelBot connected to the fake until the block ends (for a restart within a test)."""
    bot = AutoModelBot(settings, executor=executor, extensions=EXTENSIONS, guild_ready_timeout=0.05)
    await bot.login(fake.token)
    connection = asyncio.create_task(bot.connect())
    await asyncio.wait_for(bot.wait_until_ready(), 10)
    try:
        yield bot
    finally:
        await bot.close()
        await asyncio.wait({connection}, timeout=5)


# -- on every reply ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_COMMANDS)
async def test_every_task_reply_has_a_code_button_anyone_may_press(fake_discord, discord_bot, name, tiny_checkpoints):
    options, _ = TASK_COMMANDS[name]
    reply = await slash(fake_discord, name, options)
    answer = await press(fake_discord, reply, user_id=OTHER_USER_ID)  # not the requester, not an owner
    source = script_of(answer)
    compile(source, f"{name}.py", "exec")
    assert source.startswith(f"# {AUTO_CLASSES[name]}: ") and f"/{name} reply" in source.splitlines()[1]
    assert f"{AUTO_CLASSES[name]}.from_pretrained(checkpoint" in source
    typed = next(iter(options.values()))
    read = typed.replace("<mask>", "[MASK]")  # /mask: every spelling becomes the model's mask token
    assert assigned(source, {"generate": "prompt", "ask": "question"}.get(name, "text")) == read
    # A local checkpoint shows as its folder name to anyone but an owner (as in /models).
    assert assigned(source, "checkpoint") == Path(tiny_checkpoints[name]).name
    assert "# A folder on the bot's own disk, shown by name only" in source


@pytest.mark.parametrize("menu", MENU_TASKS)
async def test_message_menu_replies_have_the_code_button_too(fake_discord, discord_bot, menu):
    text = "John works at Google in London."
    reply = await final(await fake_discord.invoke_message_command(menu, text))
    source = script_of(await press(fake_discord, reply))
    assert assigned(source, "text") == text and f"# {AUTO_CLASSES[MENU_TASKS[menu]]}: " in source


async def test_an_owner_gets_the_full_path_and_the_script_prints_the_reply(fake_discord, discord_bot, tiny_checkpoints, tmp_path):
    reply = await slash(fake_discord, "sentiment", {"text": "I love using transformers library!"})
    source = script_of(await press(fake_discord, reply, user_id=USER_ID))  # USER_ID is in OWNER_IDS
    assert assigned(source, "checkpoint") == str(tiny_checkpoints["sentiment"])
    path = tmp_path / "sentiment.py"
    path.write_text(source, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == reply.embeds[0]["title"]  # "POSITIVE (50.3%)", as the reply shows


async def test_hostile_input_stays_inside_its_literal_and_the_code_block(fake_discord, discord_bot):
    text = 'a ```py fence```, "quotes", \'\'\' and \\ backslashes \\n $text {text}'
    reply = await slash(fake_discord, "sentiment", {"text": text})
    source = script_of(await press(fake_discord, reply))
    assert assigned(source, "text") == text


async def test_a_long_script_comes_as_a_file(fake_discord, discord_bot):
    reply = await slash(fake_discord, "ask", {"question": "Who met Bob?", "context": LONG_TEXT[:3000]})
    answer = await press(fake_discord, reply)
    assert answer.content == "The script for this /ask reply is attached (too long for a message)."
    source = script_of(answer)
    assert assigned(source, "context") == LONG_TEXT[:3000].strip()


# -- whenever it is pressed -------------------------------------------------------------------------


async def test_a_press_after_the_original_interaction_expired_still_works(fake_discord, discord_bot):
    interaction = await fake_discord.invoke_slash("ner", {"text": "Alice lives in Paris."})
    reply = await final(interaction)
    interaction.expire()  # the command's token is dead; the press brings its own
    assert assigned(script_of(await press(fake_discord, reply)), "text") == "Alice lives in Paris."


@pytest.mark.parametrize("where", ["channel", "dm"])
async def test_a_late_result_carries_a_working_code_button(fake_discord, discord_bot, backend, where):
    if where == "dm":  # no permission to post in the channel: the result comes by DM
        fake_discord.fail_next(1, status=403, code=50013, route_filter=rf"^POST /channels/{CHANNEL_ID}/messages")
    with gated(backend):
        interaction = await fake_discord.invoke_slash("generate", {"prompt": "late", "max_new_tokens": 4, "seed": 3})
        await interaction.wait_callback()
        interaction.expire()
    await fake_discord.wait_for(lambda: bot_posts(fake_discord), 30, "the late result")
    [late] = bot_posts(fake_discord)
    assert (late.channel_id == CHANNEL_ID) == (where == "channel")
    source = script_of(await press(fake_discord, late))
    assert assigned(source, "prompt") == "late" and assigned(source, "seed") == 3


async def test_the_button_works_after_a_restart(fake_discord, bot_settings, backend):
    async with running_bot(fake_discord, bot_settings, Executor(bot_settings, backend)):
        reply = await slash(fake_discord, "mask", {"text": "Paris is the [MASK] of France.", "top_k": 3})
    async with running_bot(fake_discord, bot_settings, Executor(bot_settings, backend)) as restarted:
        assert restarted.get_guild(GUILD_ID) is not None
        source = script_of(await press(fake_discord, reply))
    assert assigned(source, "text") == "Paris is the [MASK] of France." and assigned(source, "top_k") == 3


@env(CODE_KEEP_DAYS="0.00001")  # 0.86 s
async def test_a_press_on_an_expired_entry_says_too_old(fake_discord, discord_bot):
    reply = await slash(fake_discord, "sentiment", {"text": "fine"})
    await asyncio.sleep(1.0)
    answer = await press(fake_discord, reply)
    assert answer.content.startswith("This reply is too old: I keep what the Code button needs for 1e-05 days.")
    assert not answer.files


@env(CODE_KEEP_DAYS="0")
async def test_code_keep_days_0_turns_the_button_off(fake_discord, discord_bot):
    reply = await slash(fake_discord, "sentiment", {"text": "fine"})
    assert reply.custom_ids() == [] and reply.embeds


async def test_a_broken_store_costs_the_button_not_the_reply(fake_discord, discord_bot, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    discord_bot.code_store.path = blocker / "code.sqlite3"  # its folder cannot be created
    reply = await slash(fake_discord, "sentiment", {"text": "fine"})
    assert reply.custom_ids() == [] and reply.embeds
    assert any("goes out without its Code button" in r.getMessage() for r in caplog.records)



# -- the store ---------------------------------------------------------------------------------------


def test_the_store_is_shared_private_and_forgets_expired_entries(tmp_path, monkeypatch):
    path = tmp_path / "state" / "code.sqlite3"
    one, two = CodeStore(path, keep_days=1), CodeStore(path, keep_days=1)  # two bot processes
    spec = ScriptSpec("mask", {"text": "a [MASK]", "top_k": 3}, "bert-base-uncased", mask_token="[MASK]")
    key = one.put(spec)
    assert two.get(key) == spec and two.get("0" * 16) is None
    assert path.stat().st_mode & 0o777 == 0o600  # users' text
    now = time.time()
    monkeypatch.setattr(bot.code_store.time, "time", lambda: now + 86400 + 1)
    assert one.get(key) is None  # too old, even before it is deleted
    two.put(spec)  # a put deletes what expired
    with sqlite3.connect(path) as db:
        assert [row[0] for row in db.execute("SELECT key FROM specs")] != [key]
        assert db.execute("SELECT count(*) FROM specs").fetchone()[0] == 1
    one.close()
    two.close()
