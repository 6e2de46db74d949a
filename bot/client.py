"""The Discord bot: a commands.Bot subclass that owns the executor and loads the cogs.

Kept thin on purpose: everything about models lives in the executor, everything about a command
lives in its cog.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.code_button import CodeButton
from bot.code_store import CodeStore
from bot.tree import BotTree

if TYPE_CHECKING:
    from bot.inference.executor import Executor
    from bot.metrics import MetricsServer
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

# discord.py runs each application command in a task of this name. At shutdown the bot waits (at
# most REPLY_GRACE seconds) for them, so the last replies go out before the HTTP session closes.
COMMAND_TASK = "CommandTree-invoker"
# What the bot needs in a channel: reading it, and posting replies (embeds, attached files) there
# and in threads. Slash commands and menus need the applications.commands scope, no permission.
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, embed_links=True, attach_files=True
)
IDENTIFY_SPACING = 5.5  # seconds: Discord's 5 s between IDENTIFYs of one bucket, and a margin
REPLY_GRACE = 5.0


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
        # No prefix commands: slash commands and menus only. No help command, and on_message below
        # ignores every message, so a mention ("@bot help @everyone") triggers nothing at all.
        options.setdefault("help_command", None)
        super().__init__(command_prefix=commands.when_mentioned, **options)
        self.settings = settings
        self.executor = executor
        self.extension_names = tuple(extensions)
        self.owner_id_set = set(settings.owner_ids)
        from cogs.base import Cooldowns, EditBudget

        self.cooldowns = Cooldowns(settings.user_cooldown)
        self.edit_budget = EditBudget()
        self.metrics_server: MetricsServer | None = None
        # What each reply's Code button needs (#14), on disk so presses survive a restart.
        self.code_store = (
            CodeStore(settings.state_dir / "code.sqlite3", settings.code_keep_days) if settings.code_keep_days > 0 else None
        )
        self._draining: asyncio.Task | None = None

    async def setup_hook(self) -> None:
        if self.executor is None:
            from bot.inference.executor import Executor

            self.executor = Executor.from_settings(self.settings)
        from bot.logs import RequestLog

        listeners = getattr(self.executor, "listeners", [])
        listeners.append(RequestLog(self.settings.log_user_salt))
        if self.settings.metrics_port is not None:
            from bot.metrics import MetricsServer

            # Before the models load (PRELOAD), so /healthz answers while they do.
            self.metrics_server = MetricsServer(self, self.settings.metrics_host, self.settings.metrics_port)
            listeners.append(self.metrics_server.metrics.observe)
            await self.metrics_server.start()
        started = time.monotonic()
        if getattr(self.executor.backend, "dtype_reason", None):  # INFERENCE=ray: each replica logs its own
            log.info("%s", self.executor.backend.dtype_reason)
        if self.settings.preload:
            log.info("PRELOAD: loading every model before connecting to Discord")
        await self.executor.start()
        if self.settings.preload:
            log.info("PRELOAD: models ready in %.1fs", time.monotonic() - started)
        self.add_dynamic_items(CodeButton)  # presses on any reply's Code button, from any earlier run too
        for name in self.extension_names:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("Failed to load extension %s", name)
        if not self.owner_id_set:
            self.owner_id_set = owners_of(await self.application_info())
            log.info("OWNER_IDS is empty: %d owner(s) from the application", len(self.owner_id_set))
        log.info("Invite the bot to a server: %s", self.invite_url)
        if self.syncs_commands:
            await self.sync_commands()
        else:
            log.info("Shards %s: commands are synced by the process that runs shard 0", list(self.settings.shard_ids))
        # setup_hook runs before the gateway connection: stagger it here, after the setup, which takes
        # about as long in every process (PRELOAD, joining Ray), so their IDENTIFYs stay apart.
        wait = identify_delay(self.settings)
        if wait > 0:
            log.info("Shards %s: connecting in %.1fs, after the processes with lower shards", list(self.settings.shard_ids), wait)
            await asyncio.sleep(wait)

    @property
    def invite_url(self) -> str:
        """The OAuth2 link that adds this application to a server, with the scopes and permissions it needs."""
        return discord.utils.oauth_url(
            self.application_id, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
        )

    @property
    def syncs_commands(self) -> bool:
        """Of several bot processes (SHARD_IDS), only the one running shard 0 syncs commands."""
        return self.settings.shard_ids is None or 0 in self.settings.shard_ids

    async def on_message(self, message: discord.Message, /) -> None:
        """Messages are not commands here (commands.Bot would parse them for a prefix)."""

    async def is_owner(self, user: discord.abc.User, /) -> bool:
        """The same owners as /admin (discord.py's own rule also admits invited team members)."""
        return user.id in self.owner_id_set

    async def sync_commands(self, force: bool = False) -> str:
        """Sync to DISCORD_GUILD_ID when set (instant, and no global copy, or users would see every
        command twice), else globally; only when the command set changed since the last sync (the
        hash is kept in STATE_DIR), because Discord allows 200 command creations a day per guild."""
        guild = discord.Object(id=self.settings.discord_guild_id) if self.settings.discord_guild_id else None
        if guild is not None:
            # A fresh copy: commands removed since the last copy (an unloaded cog) must go too.
            self.tree.clear_commands(guild=guild)
            self.tree.copy_global_to(guild=guild)
        where = f"to guild {guild.id}" if guild else "globally"
        payload = [command.to_dict(self.tree) for command in self.tree._get_all_commands(guild=guild)]
        # The application is part of the hash: another bot (token) sharing STATE_DIR still gets its commands.
        synced = {"application": self.application_id, "commands": payload}
        digest = hashlib.sha256(json.dumps(synced, sort_keys=True).encode()).hexdigest()
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
            if self._draining is None:
                self._draining = asyncio.ensure_future(self._drain(caller=asyncio.current_task()))
            await asyncio.shield(self._draining)  # a second close() waits for the same drain
        await super().close()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self.code_store is not None:
            self.code_store.close()

    async def _drain(self, caller: asyncio.Task | None) -> None:
        """Stop taking jobs (new commands hear "restarting"), tell queued users their job will not
        run, let running batches finish within SHUTDOWN_GRACE, then let the command handlers send
        those last replies (at most REPLY_GRACE) before the connection closes."""
        grace = self.settings.shutdown_grace
        snapshot = self.executor.snapshot() if hasattr(self.executor, "snapshot") else {"lanes": {}}
        running = sum(lane["running"] for lane in snapshot["lanes"].values())
        queued = sum(lane["queued"] for lane in snapshot["lanes"].values())
        log.info("Shutting down: no new jobs; %d queued job(s) will not run; up to %gs for %d running",
                 queued, grace, running)
        started = time.monotonic()
        await self.executor.shutdown(grace)
        log.info("Executor drained in %.1fs", time.monotonic() - started)
        # Not the one that called close() (a command may), or it would wait for itself.
        handlers = [t for t in asyncio.all_tasks() if t.get_name() == COMMAND_TASK and t is not caller]
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=REPLY_GRACE)
            if late:
                log.warning("%d command handler(s) still busy after %gs; closing anyway", len(late), REPLY_GRACE)


class ShardedAutoModelBot(AutoModelBot, commands.AutoShardedBot):
    """The same bot over several gateway connections (SHARDS; Discord requires it past 2500
    servers). commands.Bot adds nothing to BotBase, so in this class's MRO every method of
    discord.AutoShardedClient comes before discord.Client's."""


def owners_of(app: discord.AppInfo) -> set[int]:
    """Who may use /admin when OWNER_IDS is empty: the application's owner; for a team-owned
    application, the team's admins and developers who accepted their invitation (the team owner is
    listed as an accepted admin). Read-only members and pending invitations never count."""
    if app.team is None:
        return {app.owner.id}
    return {
        member.id
        for member in app.team.members
        if member.role in (discord.TeamMemberRole.admin, discord.TeamMemberRole.developer)
        and member.membership_state == discord.TeamMembershipState.accepted
    }


def create_bot(settings: Settings, **options) -> AutoModelBot:
    """AutoModelBot, or ShardedAutoModelBot when SHARDS is set ("auto": as many as Discord advises)."""
    if settings.shards is None:
        return AutoModelBot(settings, **options)
    if settings.shards != "auto":
        options.setdefault("shard_count", settings.shards)
    if settings.shard_ids is not None:
        options.setdefault("shard_ids", list(settings.shard_ids))
    return ShardedAutoModelBot(settings, **options)


def identify_delay(settings: Settings) -> float:
    """Seconds this process waits before connecting: processes with shard ranges stagger their
    IDENTIFYs, since Discord allows one per IDENTIFY_SPACING (max_concurrency 1) and discord.py
    spaces only a process's own shards. The process holding shard 0 starts at once."""
    return IDENTIFY_SPACING * min(settings.shard_ids) if settings.shard_ids else 0.0
