"""/ask question context — AutoModelForQuestionAnswering."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.ask import AskRequest
from cogs.base import MAX_TEXT, TaskCog


class Ask(TaskCog):
    @app_commands.command(name="ask", description="Answer a question from a text you give (AutoModelForQuestionAnswering)")
    @app_commands.describe(question="What you want to know", context="The text that contains the answer")
    async def ask(
        self,
        interaction: discord.Interaction,
        question: app_commands.Range[str, 1, 500],
        context: app_commands.Range[str, 1, MAX_TEXT],
    ) -> None:
        await self.run_task(interaction, "ask", AskRequest(question, context))


async def setup(bot) -> None:
    await bot.add_cog(Ask(bot))
