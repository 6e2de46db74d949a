"""Message context menus (right-click a message → Apps): Sentiment, Named entities, Translate."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.errors import InputError
from bot.inference.tasks.ner import NerRequest
from bot.inference.tasks.sentiment import SentimentRequest
from bot.inference.tasks.translate import TranslateRequest
from cogs.base import TaskCog

MENUS = {
    "Sentiment": ("sentiment", SentimentRequest),
    "Named entities": ("ner", NerRequest),
    "Translate": ("translate", TranslateRequest),
}


class Menus(TaskCog):
    async def cog_load(self) -> None:
        self.menus = [
            app_commands.ContextMenu(name=name, callback=self._callback(task, request_type))
            for name, (task, request_type) in MENUS.items()
        ]
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    def _callback(self, task: str, request_type: type):
        async def on_message(interaction: discord.Interaction, message: discord.Message) -> None:
            if not message.content.strip():
                raise InputError("That message has no text to read (only attachments or embeds).")
            await self.run_task(interaction, task, request_type(message.content))

        return on_message


async def setup(bot) -> None:
    await bot.add_cog(Menus(bot))
