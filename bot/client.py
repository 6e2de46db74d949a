"""The Discord bot: a commands.Bot subclass that owns the executor and loads the cogs.

Kept thin on purpose: everything about models lives in the executor, everything about a command
lives in its cog.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.tree import BotTree

if TYPE_CHECKING:
    from bot.executor import Executor
    from bot.settings import Settings

log = logging.getLogger(__name__)

# Loaded in this order by setup_hook; one cog per file (see cogs/).
EXTENSIONS: tuple[str, ...] = (
    "cogs.generate",
    "cogs.mask",
    "cogs.translate",
    "cogs.ask",
    "cogs.ner",
    "cogs.sentiment",
    "cogs.embed",
    "cogs.menus",
    "cogs.info",
    "cogs.admin",
)


class AutoModelBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        *,
        executor: Executor | None = None,
        extensions: Sequence[str] = EXTENSIONS,
        **options,
    ) -> None:
        options.setdefault("intents", discord.Intents.default())
        # Model output can contain @everyone: nothing the bot sends may ping, unless a call opts in.
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        options.setdefault("tree_cls", BotTree)
        super().__init__(command_prefix=commands.when_mentioned, **options)
        self.settings = settings
        self.executor = executor
        self.extension_names = tuple(extensions)
        self.owner_id_set = set(settings.owner_ids)
        from cogs.base import Cooldowns, EditBudget

        self.cooldowns = Cooldowns(settings.user_cooldown)
        self.edit_budget = EditBudget()

    async def setup_hook(self) -> None:
        if self.executor is None:
            from bot.executor import Executor

            self.executor = Executor.from_settings(self.settings)
        await self.executor.start()
        for name in self.extension_names:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("Failed to load extension %s", name)
        if not self.owner_id_set:
            # No OWNER_IDS: the application's owner (or its team) may use the owner-only commands.
            app = await self.application_info()
            self.owner_id_set = {m.id for m in app.team.members} if app.team else {app.owner.id}
        await self.sync_commands()

    async def sync_commands(self, force: bool = False) -> str:
        """Sync to DISCORD_GUILD_ID when set (instant, and no global copy, or users would see every
        command twice), else globally; only when the command set changed since the last sync (the
        hash is kept in STATE_DIR), because Discord allows 200 command creations a day per guild."""
        guild = discord.Object(id=self.settings.discord_guild_id) if self.settings.discord_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        where = f"to guild {guild.id}" if guild else "globally"
        payload = [command.to_dict(self.tree) for command in self.tree._get_all_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        marker = self.settings.state_dir / f"commands-{guild.id if guild else 'global'}.sha256"
        if not force and marker.exists() and marker.read_text().strip() == digest:
            log.info("Commands unchanged since the last sync %s; not syncing", where)
            return where
        await self.tree.sync(guild=guild)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(digest)
        log.info("Synced %d commands %s", len(payload), where)
        return where

    async def close(self) -> None:
        # Drain first so queued users hear that their job will not run before the gateway closes.
        if self.executor is not None:
            await self.executor.shutdown()
        await super().close()
