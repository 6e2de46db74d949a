"""/sentiment text — AutoModelForSequenceClassification."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.sentiment import SentimentRequest
from cogs.base import MAX_TEXT, TaskCog


class Sentiment(TaskCog):
    @app_commands.command(name="sentiment", description="Is a text positive or negative? (AutoModelForSequenceClassification)")
    @app_commands.describe(text="The text to classify")
    async def sentiment(self, interaction: discord.Interaction, text: app_commands.Range[str, 1, MAX_TEXT]) -> None:
        await self.run_task(interaction, "sentiment", SentimentRequest(text))


async def setup(bot) -> None:
    await bot.add_cog(Sentiment(bot))
