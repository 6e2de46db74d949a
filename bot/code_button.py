"""The Code button on every task reply: the Python that reproduces the reply, sent only to whoever
pressed it (anyone may).

When a reply goes out, its ScriptSpec is stored (bot.code_store) and the button's custom_id carries
only the key. discord.py's DynamicItem answers a press from the custom_id alone, so no view is kept
in memory per message and a press works after a restart, and on a reply delivered late in the
channel or by DM. A key the store no longer has (older than CODE_KEEP_DAYS) gets "too old".
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.download import shown_checkpoint
from bot.render import CONTENT_LIMIT
from bot.reproduce import backend_spec, script
from bot.tree import NO_PINGS

if TYPE_CHECKING:
    from bot.client import AutoModelBot

log = logging.getLogger(__name__)


class CodeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"code:(?P<key>[0-9a-f]{16})"):
    def __init__(self, key: str) -> None:
        super().__init__(
            discord.ui.Button(label="Code", emoji="🐍", style=discord.ButtonStyle.secondary, custom_id=f"code:{key}")
        )
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(match["key"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: AutoModelBot = interaction.client  # type: ignore[assignment]
        if bot.code_store is None:
            await _say(interaction, "The Code button is turned off on this bot (CODE_KEEP_DAYS=0).")
            return
        try:
            spec = await asyncio.to_thread(bot.code_store.get, self.key)
        except Exception as err:  # a locked or unreadable store must not leave the press unanswered
            log.warning("Could not read the Code button's store: %s", err)
            await _say(interaction, "I can't read this reply's details right now. Try again in a minute.")
            return
        if spec is None:
            days = bot.settings.code_keep_days
            await _say(interaction, f"This reply is too old: I keep what the Code button needs for {days:g} days. "
                                    "Run the command again and press **Code** on the new reply.")
            return
        shown = shown_checkpoint(spec.checkpoint, full=interaction.user.id in bot.owner_id_set)
        spec = dataclasses.replace(spec, checkpoint=shown, local_path_hidden=shown != spec.checkpoint)
        await interaction.response.send_message(
            **script_message(spec.task, script(spec)), ephemeral=True, allowed_mentions=NO_PINGS
        )


def script_message(task: str, source: str) -> dict[str, Any]:
    """The script in a code block, or as an attached .py file when it does not fit one message."""
    block = f"```py\n{source.rstrip()}\n```"
    if len(block) <= CONTENT_LIMIT:
        return {"content": block}
    return {
        "content": f"The script for this /{task} reply is attached (too long for a message).",
        "file": discord.File(io.BytesIO(source.encode()), filename=f"{task}.py"),
    }


async def code_view(bot: AutoModelBot, task: str, request: Any, result: Any) -> discord.ui.View | None:
    """A view holding the Code button for this result, or None (turned off, or the store failed:
    the reply then goes out without the button, never not at all)."""
    if bot.code_store is None:
        return None
    try:
        spec = backend_spec(bot.executor.backend, task, request, result)
        key = await asyncio.to_thread(bot.code_store.put, spec)
    except Exception as err:
        log.warning("The /%s reply goes out without its Code button: %s", task, err)
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CodeButton(key))
    return view


async def _say(interaction: discord.Interaction, text: str) -> None:
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
