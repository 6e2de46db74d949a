"""Errors in one place: a CommandTree whose on_error turns known errors into short ephemeral replies
saying what to change, and logs anything else with an error id (the user sees only the id)."""

from __future__ import annotations

import logging
import secrets
import time

import discord
from discord import app_commands

from bot.inference.errors import BotError, Cancelled, QueueFull, RateLimited

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()


class NotOwner(app_commands.CheckFailure):
    """An owner-only command was used by someone who is not in OWNER_IDS."""


class InvalidOption(app_commands.AppCommandError):
    """An option outside what its command declares. Discord's client enforces the declarations, but
    anyone can send an interaction, so the server checks them again (`check_declared_options`)."""


# How a reply names an option whose name is not a noun on its own (the tasks' errors say the same).
OPTION_NOUNS = {"other": "second text (`other`)"}


def check_declared_options(interaction: discord.Interaction) -> None:
    """Raise InvalidOption for a string option longer than its declared max_length, or a value that
    is not one of its declared choices. Numbers and empty text are left to the tasks, which check
    them against the settings (stricter than the declarations) with messages that name the limit."""
    command = interaction.command
    if not isinstance(command, app_commands.Command):
        return
    for param in command.parameters:
        value = getattr(interaction.namespace, param.display_name, None)
        if value is None:
            continue
        name = param.display_name
        if isinstance(value, str) and param.max_value is not None and len(value) > param.max_value:
            what = OPTION_NOUNS.get(name, name)
            raise InvalidOption(
                f"The {what} is {len(value):,} characters; the limit is {int(param.max_value):,}. Shorten it."
            )
        if param.choices and value not in {choice.value for choice in param.choices}:
            listed = ", ".join(str(choice.value) for choice in param.choices[:25])
            raise InvalidOption(f"`{name}` must be one of: {listed[:1500]}.")


def user_message(error: BaseException) -> str | None:
    """The reply for an expected error, or None when it is a bug."""
    if isinstance(error, (QueueFull, RateLimited)):
        return f"🚦 {error} (<t:{int(time.time() + error.retry_after) + 1}:R>)"
    if isinstance(error, Cancelled):
        return "🛑 Cancelled."
    if isinstance(error, BotError):
        return f"⚠️ {error}"
    if isinstance(error, app_commands.NoPrivateMessage):
        return "⚠️ This command works in a server only."
    if isinstance(error, InvalidOption):
        return f"⚠️ {error}"
    if isinstance(error, NotOwner):
        return "⛔ Only the bot's owners can use this command."
    if isinstance(error, app_commands.CheckFailure):
        return "⛔ You can't use this command here."
    if isinstance(error, app_commands.TransformerError):
        return f"⚠️ `{str(error.value)[:100].replace('`', '')}` is not a valid value here."
    if isinstance(error, app_commands.CommandSignatureMismatch):
        return "⚠️ This command changed since your client loaded it. Reload Discord (Ctrl+R) and try again."
    return None


async def reply_error(interaction: discord.Interaction, message: str) -> None:
    """Ephemeral when nothing was sent yet; otherwise the deferred reply becomes the error."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=message, embeds=[], attachments=[], view=None,
                                                     allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_PINGS)
    except discord.HTTPException:
        log.warning("Could not send an error reply for interaction %s", interaction.id)


class BotTree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        message = user_message(original) or user_message(error)
        if message is None:
            error_id = secrets.token_hex(4)
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("Unexpected error %s in /%s", error_id, name, exc_info=original)
            message = f"💥 Something went wrong on our side (error id `{error_id}`). Please try again later."
        await reply_error(interaction, message)
