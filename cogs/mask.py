"""/mask text [top_k] — AutoModelForMaskedLM."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.mask import MaskRequest
from cogs.base import MAX_TEXT, TaskCog


class Mask(TaskCog):
    @app_commands.command(name="mask", description="Guess the word behind [MASK] (AutoModelForMaskedLM)")
    @app_commands.describe(text="A sentence with [MASK] where a word is missing", top_k="How many guesses per mask")
    async def mask(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_TEXT],
        top_k: app_commands.Range[int, 1, 10] = 5,
    ) -> None:
        await self.run_task(interaction, "mask", MaskRequest(text, top_k))


async def setup(bot) -> None:
    await bot.add_cog(Mask(bot))
