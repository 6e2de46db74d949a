"""The Discord bot: a commands.Bot subclass that owns the executor and loads the cogs.

Kept thin on purpose: everything about models lives in the executor, everything about a command
lives in its cog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

if TYPE_CHECKING:
    from bot.executor import Executor
    from bot.settings import Settings

log = logging.getLogger(__name__)

# Loaded in this order by setup_hook; one cog per file (see cogs/).
EXTENSIONS: tuple[str, ...] = ()


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
        super().__init__(command_prefix=commands.when_mentioned, **options)
        self.settings = settings
        self.executor = executor
        self.extension_names = tuple(extensions)

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

    async def close(self) -> None:
        # Drain first so queued users hear that their job will not run before the gateway closes.
        if self.executor is not None:
            await self.executor.shutdown()
        await super().close()
