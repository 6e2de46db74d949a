"""/generate prompt [max_new_tokens] [temperature] [top_p] [seed] — AutoModelForCausalLM, streamed."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.inference.tasks.generate import GenerateRequest
from cogs.base import TaskCog


class Generate(TaskCog):
    @app_commands.command(name="generate", description="Continue your prompt with generated text (AutoModelForCausalLM)")
    @app_commands.describe(
        prompt="The beginning of the text",
        max_new_tokens="How many tokens to add (default 50)",
        temperature="Randomness: 0 = always the likeliest token, higher = wilder (default 0.8)",
        top_p="Sample only from the likeliest tokens covering this probability (default 0.95)",
        seed="Same seed and settings give the same text",
    )
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 2000],
        max_new_tokens: app_commands.Range[int, 1, 2048] = 50,
        temperature: app_commands.Range[float, 0.0, 2.0] = 0.8,
        top_p: app_commands.Range[float, 0.01, 1.0] = 0.95,
        seed: app_commands.Range[int, 0, 2**31 - 1] | None = None,
    ) -> None:
        # The declared max is Discord's; MAX_NEW_TOKENS (a setting) is checked again when queued.
        request = GenerateRequest(prompt, max_new_tokens, temperature, top_p, seed)
        await self.run_task(interaction, "generate", request)


async def setup(bot) -> None:
    await bot.add_cog(Generate(bot))
