"""/translate text — AutoModelForSeq2SeqLM."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.translate import TranslateRequest
from cogs.base import MAX_TEXT, TaskCog


class Translate(TaskCog):
    @app_commands.command(name="translate", description="Translate English to German (AutoModelForSeq2SeqLM)")
    @app_commands.describe(text="The text to translate")
    async def translate(self, interaction: discord.Interaction, text: app_commands.Range[str, 1, MAX_TEXT]) -> None:
        await self.run_task(interaction, "translate", TranslateRequest(text))


async def setup(bot) -> None:
    await bot.add_cog(Translate(bot))
