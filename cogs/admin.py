"""Owner-only /admin: swap a task's checkpoint at run time (allow-listed), and force a command sync."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.inference.errors import InputError, ModelUnavailable
from bot.inference.tasks import TASKS
from bot.tree import NO_PINGS, NotOwner, check_declared_options

log = logging.getLogger(__name__)

MAX_CHECKPOINT = 300  # characters of a checkpoint id or local path


class Admin(commands.GroupCog, group_name="admin", group_description="Owner-only bot administration"):
    def __init__(self, bot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # discord.py runs a GroupCog's interaction_check before each of its subcommands; a check
        # decorator on the class would be silently ignored.
        if interaction.user.id not in self.bot.owner_id_set:
            raise NotOwner()
        check_declared_options(interaction)
        return True

    @app_commands.command(name="reload", description="Switch a task to another allow-listed checkpoint")
    @app_commands.describe(task="Which command's model", checkpoint="A checkpoint from ADMIN_CHECKPOINTS (empty: reload the current one)")
    @app_commands.choices(task=[app_commands.Choice(name=t, value=t) for t in TASKS])
    async def reload(
        self,
        interaction: discord.Interaction,
        task: str,
        checkpoint: app_commands.Range[str, 1, MAX_CHECKPOINT] | None = None,
    ) -> None:
        backend = self.bot.executor.backend
        if task not in TASKS:
            raise InputError(f"Unknown task `{task[:50].replace('`', '')}`.")
        target = checkpoint or backend.checkpoints[task]
        allowed = set(self.bot.settings.admin_checkpoints) | {self.bot.settings.checkpoints[task]}
        if target not in allowed:
            shown = target[:200].replace("`", "")
            raise InputError(f"`{shown}` is not in ADMIN_CHECKPOINTS; add it there first.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            # The old model keeps serving until the new one is loaded.
            await asyncio.to_thread(backend.set_checkpoint, task, target)
        except ModelUnavailable as err:
            log.error("%s", err.detail)
            raise ModelUnavailable(f"Could not load `{target}`; /{task} keeps its current model.") from err
        await interaction.edit_original_response(content=f"✅ /{task} now uses `{target}`.", allowed_mentions=NO_PINGS)

    @app_commands.command(name="sync", description="Sync slash commands to Discord now")
    async def sync(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        where = await self.bot.sync_commands(force=True)
        await interaction.edit_original_response(content=f"✅ Commands synced {where}.", allowed_mentions=NO_PINGS)


async def setup(bot) -> None:
    await bot.add_cog(Admin(bot))
