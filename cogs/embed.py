"""/embed text [other] — AutoModel."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.embed import EmbedRequest
from cogs.base import MAX_TEXT, TaskCog


class Embed(TaskCog):
    @app_commands.command(name="embed", description="Turn text into a vector; compare two texts (AutoModel)")
    @app_commands.describe(text="The text to embed", other="Optional second text: shows the cosine similarity")
    async def embed(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_TEXT],
        other: app_commands.Range[str, 1, MAX_TEXT] | None = None,
    ) -> None:
        await self.run_task(interaction, "embed", EmbedRequest(text, other))


async def setup(bot) -> None:
    await bot.add_cog(Embed(bot))
