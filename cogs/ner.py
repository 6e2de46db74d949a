"""/ner text — AutoModelForTokenClassification."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.ner import NerRequest
from cogs.base import MAX_TEXT, TaskCog


class Ner(TaskCog):
    @app_commands.command(name="ner", description="Find people, organisations and places (AutoModelForTokenClassification)")
    @app_commands.describe(text="The text to search for names")
    async def ner(self, interaction: discord.Interaction, text: app_commands.Range[str, 1, MAX_TEXT]) -> None:
        await self.run_task(interaction, "ner", NerRequest(text))


async def setup(bot) -> None:
    await bot.add_cog(Ner(bot))
