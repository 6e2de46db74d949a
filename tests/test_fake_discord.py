"""Tests of the fake-Discord harness itself: the real discord.py client (AutoModelBot with the
harness cog) against tests/fake_discord.py, including the faults the harness can inject."""

from __future__ import annotations

import io

import discord
import pytest
from discord import app_commands

from tests.fake_discord import (
    APP_ID,
    CHANNEL_ID,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    GUILD_ID,
    UPDATE_MESSAGE,
    USER_ID,
)
from tests.harness_cog import BUTTON_DEFER, BUTTON_UPDATE

NO_PINGS = {"parse": []}  # AutoModelBot's default: nothing the bot sends may mention anyone
EDIT_ORIGINAL = r"PATCH /webhooks/\d+/[^/]+/messages/@original"


async def test_bot_logs_in_identifies_and_caches_the_guild(fake_discord, discord_bot):
    assert discord_bot.is_ready()
    assert discord_bot.user.id == APP_ID
    assert discord_bot.application_id == APP_ID
    assert discord_bot.get_channel(CHANNEL_ID) is not None
    assert [r.route for r in fake_discord.requests[:2]] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    assert fake_discord.identify_count == 1
    identify = next(f for f in fake_discord.gateway_frames if f["op"] == 2)
    assert identify["d"]["token"] == fake_discord.token


async def test_global_and_guild_sync_register_commands(fake_discord, discord_bot):
    already = len(fake_discord.requests)  # the bot may sync on its own in setup_hook
    synced = await discord_bot.tree.sync()
    assert {c.name for c in synced} == {"ping", "button", "Echo"}
    assert all(c.id > 0 for c in synced)
    guild = discord.Object(id=GUILD_ID)
    discord_bot.tree.copy_global_to(guild=guild)
    await discord_bot.tree.sync(guild=guild)

    assert [r.route for r in fake_discord.requests[already:] if r.method == "PUT"] == [
        f"PUT /applications/{APP_ID}/commands",
        f"PUT /applications/{APP_ID}/guilds/{GUILD_ID}/commands",
    ]
    # A command synced to the guild arrives with data.guild_id, and the tree still finds it.
    interaction = await fake_discord.invoke_slash("ping", {"text": "guild"})
    assert interaction.payload["data"]["guild_id"] == str(GUILD_ID)
    assert (await interaction.wait_final()).content == "pong: guild"


async def test_slash_command_defers_then_edits(fake_discord, discord_bot):
    interaction = await fake_discord.invoke_slash("ping", {"text": "hi @everyone"})
    reply = await interaction.wait_final()

    assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
    assert reply.content == "pong: hi @everyone"
    assert not reply.ephemeral and not reply.loading
    assert reply.allowed_mentions == NO_PINGS
    assert len(reply.edits) == 1


async def test_edit_with_a_file_is_parsed_from_multipart(fake_discord, discord_bot):
    interaction = await fake_discord.invoke_slash("ping", {"text": "file body", "attach": True})
    reply = await interaction.wait_final()

    assert [(f.name, f.data) for f in reply.files] == [("ping.txt", b"file body")]
    assert fake_discord.find(EDIT_ORIGINAL)[-1].files[0].name == "ping.txt"


async def test_message_context_menu_answers_ephemeral(fake_discord, discord_bot):
    interaction = await fake_discord.invoke_message_command("Echo", "hello @everyone")
    reply = await interaction.wait_final()

    assert interaction.payload["data"]["type"] == 3
    assert interaction.callback_type == CHANNEL_MESSAGE
    assert reply.content == "hello @everyone"
    assert reply.ephemeral
    assert reply.allowed_mentions == NO_PINGS


@pytest.mark.parametrize(
    ("custom_id", "callback_type", "content"),
    [
        (BUTTON_UPDATE, UPDATE_MESSAGE, f"updated by {USER_ID}"),
        (BUTTON_DEFER, DEFERRED_UPDATE_MESSAGE, f"deferred edit by {USER_ID}"),
    ],
)
async def test_button_click_updates_its_message(fake_discord, discord_bot, custom_id, callback_type, content):
    sent = await (await fake_discord.invoke_slash("button")).wait_final()
    assert sent.custom_ids() == [BUTTON_UPDATE, BUTTON_DEFER]

    click = await fake_discord.click_button(sent, custom_id)
    updated = await click.wait_final()

    assert click.callback_type == callback_type
    assert updated is sent  # the component's own message was edited, not a new one sent
    assert updated.content == content
    assert updated.components == []


async def test_rate_limited_edit_lands_after_retry(fake_discord, discord_bot):
    fault = fake_discord.fail_next(1, status=429, retry_after=0.05, route_filter=EDIT_ORIGINAL)
    interaction = await fake_discord.invoke_slash("ping", {"text": "slow"})
    reply = await interaction.wait_final()

    assert reply.content == "pong: slow"
    assert [r.status for r in fake_discord.find(EDIT_ORIGINAL)] == [429, 200]
    assert fault.remaining == 0


async def test_server_error_on_edit_is_retried(fake_discord, discord_bot):
    # discord.py's webhook adapter retries a 5xx after 1 s: the one slow test, on purpose.
    fake_discord.fail_next(1, status=500, route_filter=EDIT_ORIGINAL)
    interaction = await fake_discord.invoke_slash("ping", {"text": "retried"})
    reply = await interaction.wait_final(timeout=5)

    assert reply.content == "pong: retried"
    assert [r.status for r in fake_discord.find(EDIT_ORIGINAL)] == [500, 200]


async def test_server_error_surfaces_and_the_bot_keeps_answering(fake_discord, discord_bot):
    # 503 is not in discord.py's retry list for the bot's own HTTP client: it raises at once.
    fake_discord.fail_next(1, status=503, route_filter=r"^POST /channels/")
    with pytest.raises(discord.DiscordServerError):
        await discord_bot.get_channel(CHANNEL_ID).send("lost")

    interaction = await fake_discord.invoke_slash("ping", {"text": "still here"})
    assert (await interaction.wait_final()).content == "pong: still here"


async def test_channel_and_dm_messages_are_recorded(fake_discord, discord_bot):
    file = discord.File(io.BytesIO(b"\x00\x01"), filename="data.bin")
    await discord_bot.get_channel(CHANNEL_ID).send("with a file", file=file)
    user = await discord_bot.fetch_user(USER_ID)
    await user.send("hello in private")

    [in_channel] = fake_discord.channel_messages(CHANNEL_ID)
    assert in_channel.content == "with a file"
    assert [(f.name, f.data) for f in in_channel.files] == [("data.bin", b"\x00\x01")]
    assert in_channel.allowed_mentions == NO_PINGS
    dm_channel = int(fake_discord.dm_channels[USER_ID]["id"])
    assert [m.content for m in fake_discord.channel_messages(dm_channel)] == ["hello in private"]


async def test_dropped_gateway_resumes_and_replays_missed_dispatches(fake_discord, discord_bot):
    await fake_discord.drop_gateway(wait_resumed=False)
    # Sent while the client is away: it must come with the RESUME replay.
    interaction = await fake_discord.invoke_slash("ping", {"text": "missed"})
    await fake_discord.wait_resumed()
    assert fake_discord.replayed_count == 1
    assert (await interaction.wait_final()).content == "pong: missed"

    await fake_discord.drop_gateway()  # and again, answered after the resume
    interaction = await fake_discord.invoke_slash("ping", {"text": "after"})
    assert (await interaction.wait_final()).content == "pong: after"
    assert (fake_discord.identify_count, fake_discord.resume_count) == (1, 2)


async def test_expired_token_is_recorded_and_the_bot_survives(fake_discord, discord_bot):
    expired = await fake_discord.invoke_slash("ping", {"text": "late"}, expired=True)
    callback = await expired.wait_callback()
    assert (callback.status, callback.response["code"]) == (404, 10062)

    interaction = await fake_discord.invoke_slash("ping", {"text": "fresh"})
    assert (await interaction.wait_final()).content == "pong: fresh"


async def test_unknown_route_is_answered_404_and_reported(fake_discord, discord_bot):
    with pytest.raises(discord.NotFound):
        await discord_bot.http.request(discord.http.Route("GET", "/nowhere"))
    assert fake_discord.problems == ["unknown route: GET /nowhere"]
    fake_discord.problems.clear()  # expected here; otherwise the fixture fails the test


async def test_subcommand_in_dm_with_followups(fake_discord, discord_bot):
    group = app_commands.Group(name="admin", description="A group, to reach a subcommand")

    @group.command(name="say", description="Defer, then answer with followups")
    async def say(interaction: discord.Interaction, times: int) -> None:
        await interaction.response.defer(ephemeral=True)
        for n in range(times):
            await interaction.followup.send(f"say {n}", wait=True)

    discord_bot.tree.add_command(group)
    await discord_bot.tree.sync()
    interaction = await fake_discord.invoke_slash("admin say", {"times": 2}, guild=False)
    reply = await interaction.wait_final()
    await fake_discord.wait_for(lambda: len(interaction.followups) == 1, what="the second followup")

    assert interaction.payload["data"]["options"] == [
        {"type": 1, "name": "say", "options": [{"name": "times", "type": 4, "value": 2}]}
    ]
    # As on Discord, the first followup after a deferral fills the "thinking" message (ephemeral
    # because the deferral was); later ones are new messages.
    assert (reply.content, reply.ephemeral) == ("say 0", True)
    assert [m.content for m in interaction.followups] == ["say 1"]
