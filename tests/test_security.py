"""Security review (#15), through the real bot on the loopback fake Discord: who counts as an owner
when OWNER_IDS is empty, what a mention of the bot can trigger, per-user state that must empty
again, what /models and /help show of the host's disk, what DEBUG logs carry, and
trust_remote_code at every load. RELIABILITY.md lists each with the mutation that turns it red."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from pathlib import Path

import discord
import pytest
import transformers

from bot.inference import executor as executor_module
from bot.inference.executor import Executor
from bot.inference.local import LocalBackend
from bot.inference.tasks import TASKS
from bot.inference.tasks.sentiment import SentimentRequest
from bot.logs import REDACTED, configure_logging
from tests.fake_discord import APP_ID, OTHER_USER_ID, TOKEN, USER_ID, team_json

# Fixtures of the end-to-end cog tests: the real bot on tiny models, and the autouse check that
# nothing it sends pings anyone or breaks Discord's limits.
from tests.test_cogs import (  # noqa: F401
    _every_sent_message_is_safe,
    backend,
    bot_executor,
    bot_extensions,
    bot_settings,
    env,
    env_overrides,
    refused,
    shared_backend,
    slash,
    until,
)
from tests.test_ops import captured_logs, restore_logging  # noqa: F401

TEAM_ID = 5_555_555_555_555_555_555
DEVELOPER, READ_ONLY, INVITED_ADMIN, INVITED_DEVELOPER = (6_000_000_000_000_000_000 + n for n in range(4))
ACCEPTED, INVITED = 2, 1
NOT_OWNER = "Only the bot's owners"


# -- who is an owner when OWNER_IDS is empty ------------------------------------------------------


@pytest.fixture
def team(fake_discord):
    """The application belongs to a team (set before the bot starts and reads it)."""
    fake_discord.team = team_json(TEAM_ID, [
        (USER_ID, "admin", ACCEPTED),  # the team owner
        (DEVELOPER, "developer", ACCEPTED),
        (READ_ONLY, "read_only", ACCEPTED),
        (INVITED_ADMIN, "admin", INVITED),
        (INVITED_DEVELOPER, "developer", INVITED),
    ])


async def admin_sync(fake_discord, user_id: int) -> str:
    interaction = await fake_discord.invoke_slash("admin sync", user_id=user_id)
    return (await interaction.wait_final(10)).content


@env(OWNER_IDS="")
async def test_a_team_owns_admin_through_its_accepted_admins_and_developers(team, fake_discord, discord_bot):
    assert discord_bot.owner_id_set == {USER_ID, DEVELOPER}
    for user in (READ_ONLY, INVITED_ADMIN, INVITED_DEVELOPER, OTHER_USER_ID):
        assert NOT_OWNER in await admin_sync(fake_discord, user), user
        assert not await discord_bot.is_owner(discord.Object(id=user))
    for user in (USER_ID, DEVELOPER):
        assert "Commands synced" in await admin_sync(fake_discord, user), user


@env(OWNER_IDS="")
async def test_without_a_team_the_application_owner_alone_is_owner(fake_discord, discord_bot):
    assert discord_bot.owner_id_set == {USER_ID}
    assert NOT_OWNER in await admin_sync(fake_discord, OTHER_USER_ID)


# -- a mention of the bot is inert ----------------------------------------------------------------


async def test_mentioning_the_bot_posts_nothing_and_logs_no_error(fake_discord, discord_bot, caplog):
    caplog.set_level(logging.DEBUG)
    first = len(fake_discord.requests)
    for text in (f"<@{APP_ID}> help @everyone", f"<@{APP_ID}> foo", f"<@!{APP_ID}> admin sync", f"<@{APP_ID}>help"):
        await fake_discord.user_posts(text, user_id=OTHER_USER_ID, mentions=(APP_ID,))
    # Gateway events are handled in order: once a later command is answered, the mentions were seen.
    await slash(fake_discord, "sentiment", {"text": "after the mentions"})
    await asyncio.sleep(0.3)  # and whatever a mention could have started has had time to post
    posted = [r.route for r in fake_discord.requests[first:] if r.route.startswith("POST /channels/")]
    assert posted == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert fake_discord.logged_errors == []


# -- per-user state returns to empty ----------------------------------------------------------------


async def test_per_user_state_empties_after_many_distinct_users(bot_settings, shared_backend, monkeypatch):
    """400 users, one request each, in waves: afterwards no structure remembers any of them (the
    fairness memory included, once SERVED_MEMORY has passed)."""
    monkeypatch.setattr(executor_module, "SERVED_MEMORY", 0.2)
    executor = Executor(bot_settings, shared_backend)
    await executor.start()
    lane = executor.lanes["sentiment"]
    try:
        for wave in range(8):
            jobs = [await executor.enqueue("sentiment", SentimentRequest(f"text {i}"), user_id=wave * 50 + i)
                    for i in range(50)]
            await asyncio.wait_for(asyncio.gather(*(executor.wait(job) for job in jobs)), timeout=60)
        assert len(lane.last_served) <= 400
        await until(lambda: not lane.last_served, timeout=10)
        assert lane.by_user == {} and not executor._per_user and executor._jobs == {}
    finally:
        await executor.shutdown()


# -- /models and /help: folder names for users, full paths for owners -----------------------------


@pytest.mark.parametrize("command", ["models", "help"])
async def test_local_checkpoint_paths_are_shown_in_full_to_owners_only(fake_discord, discord_bot, bot_settings, command):
    folders = {Path(path) for path in bot_settings.checkpoints.values()}
    for user, owner in ((OTHER_USER_ID, False), (USER_ID, True)):
        reply = await (await fake_discord.invoke_slash(command, user_id=user)).wait_final(10)
        shown = json.dumps(reply.embeds, ensure_ascii=False)
        for folder in folders:
            assert f"`{folder.name}`" in shown or str(folder) in shown, (folder.name, shown)
            assert (str(folder.parent) in shown) is owner, (user, str(folder.parent))


# -- logs: the running bot's own token, interaction tokens, the stack --------------------------------


async def test_debug_logs_of_a_live_command_carry_no_token(fake_discord, discord_bot, bot_settings, restore_logging):
    """LOG_LEVEL=DEBUG as `automodel-bot run` sets it up from the bot's own settings: discord.py's raw
    gateway events and request URLs are logged, with neither the bot token nor the interaction's."""
    configure_logging(dataclasses.replace(bot_settings, log_level="DEBUG"))
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    interaction = await fake_discord.invoke_slash("sentiment", {"text": "a secret plan"})
    await interaction.wait_final(30, until=lambda m: bool(m.embeds))
    output = stream.getvalue()
    assert "WebSocket Event" in output and "INTERACTION_CREATE" in output  # the raw events were logged
    assert f"/webhooks/{APP_ID}/{REDACTED}" in output or f"/interactions/{interaction.id}/{REDACTED}" in output
    assert interaction.token not in output
    assert TOKEN not in output


def test_interaction_tokens_are_redacted_from_discord_debug_lines(captured_logs):
    stream = captured_logs(LOG_LEVEL="DEBUG")
    token = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpzZWNyZXQ"
    url = "https://discord.com/api/v10"
    logging.getLogger("discord.gateway").debug(
        "For Shard ID %s: WebSocket Event: %s", None, {"t": "INTERACTION_CREATE", "d": {"id": "1", "token": token}}
    )
    logging.getLogger("discord.gateway").debug("WebSocket Event: %s", json.dumps({"d": {"token": token}}))
    logging.getLogger("discord.http").debug("%s %s with %s has returned %s", "POST",
                                            f"{url}/interactions/123/{token}/callback", {"type": 5}, 204)
    logging.getLogger("discord.webhook.async_").debug("Webhook ID %s with %s %s has returned status code %s", APP_ID,
                                                      "PATCH", f"{url}/webhooks/{APP_ID}/{token}/messages/@original", 200)
    output = stream.getvalue()
    assert token not in output
    assert output.count(REDACTED) == 4
    assert f"/interactions/123/{REDACTED}/callback" in output and f"/webhooks/{APP_ID}/{REDACTED}/messages" in output


def test_a_secret_on_the_stack_is_redacted(captured_logs):
    """stack_info is rendered source: a secret written in a calling line must not pass through."""
    stream = captured_logs(LOG_LEVEL="DEBUG")
    from tests.test_ops import SECRET

    stack = f'Stack (most recent call last):\n  File "run.py", line 3, in <module>\n    login("{SECRET}")'
    record = logging.LogRecord("bot", logging.INFO, __file__, 1, "where", None, None, sinfo=stack)
    logging.getLogger("bot").handle(record)
    output = stream.getvalue()
    assert "Stack (most recent call last)" in output and f'login("{REDACTED}")' in output
    assert SECRET not in output


# -- trust_remote_code=False, explicitly, at every from_pretrained ------------------------------------


def test_every_from_pretrained_is_passed_trust_remote_code_false(tiny_settings, peaked_checkpoints, monkeypatch):
    """Spies on transformers itself: a missing argument would be None there, which makes 5.x ask on
    stdin; only an explicit False is accepted. Covers first loads of all seven tasks and a reload."""
    calls: list[tuple[str, object, dict]] = []
    classes = {"AutoTokenizer", "AutoConfig", *(task.auto_class_name for task in TASKS.values())}
    for name in classes:
        cls = getattr(transformers, name)
        real = cls.from_pretrained

        def spy(checkpoint, *args, _real=real, _name=name, **kwargs):
            calls.append((_name, checkpoint, kwargs))
            return _real(checkpoint, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    backend = LocalBackend(tiny_settings)
    for task in TASKS:
        backend.warm_up(task)
    backend.set_checkpoint("sentiment", str(peaked_checkpoints["sentiment"]))  # a reload: tokenizer, config, model
    assert {name for name, _, _ in calls} == classes - {"AutoModel"}  # /embed rides on /mask's model
    assert len(calls) >= 2 * 6 + 6 + 3
    for name, checkpoint, kwargs in calls:
        assert "trust_remote_code" in kwargs and kwargs["trust_remote_code"] is False, (name, checkpoint, kwargs)
