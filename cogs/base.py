"""What every task cog shares: the life of one request in Discord.

cooldown → validate and queue (before deferring, so user errors stay ephemeral) → defer → while
waiting, show the place in line and an ETA (after ~1 s), or stream partial text → final edit with
the rendered result. A Cancel button rides on waiting and streaming replies. If the interaction
token expired meanwhile (15 minutes), the result goes to the channel (pinging only the requester)
or, failing that, by DM; if Discord keeps failing the final edit (5xx, 429), it goes as a followup
first. Options are checked again against what the command declares before anything else runs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.code_button import code_view
from bot.inference.errors import Cancelled, RateLimited
from bot.inference.hub import download_text
from bot.inference.tasks.generate import GenerateResult
from bot.render import Reply, as_reply, prepend, reply_generate
from bot.tree import NO_PINGS, check_declared_options

if TYPE_CHECKING:
    from bot.client import AutoModelBot
    from bot.inference.executor import Executor, Job

log = logging.getLogger(__name__)

MAX_TEXT = 6000  # Discord's limit for a string option; MAX_INPUT_CHARS is checked again server-side
SHOW_QUEUE_AFTER = 1.0  # seconds a job may wait before the reply shows its place in line
UPDATE_EVERY = 1.0  # at most one edit per second per message
ETA_STEP = 5  # seconds: the shown start time moves in steps of this, so a steady queue needs no edits
TOKEN_LIFETIME = 15 * 60 - 30  # interaction tokens last 15 minutes; keep a margin
ENQUEUE_GRACE = 2.0  # Discord wants an answer within 3 s; defer if validation takes longer
EXPIRED_CODES = {10062, 10015, 50027}  # unknown interaction, unknown webhook, invalid webhook token


class EditBudget:
    """Edits per second shared by all streaming replies; halves when Discord slows us down.

    Progress edits ask for a token and are skipped when none is left; final edits never ask.
    """

    def __init__(self, rate: float = 4.0) -> None:
        self.full_rate = self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def try_acquire(self) -> bool:
        now = time.monotonic()
        self.rate = min(self.full_rate, self.rate * (1 + 0.05 * (now - self.stamp)))  # slow recovery
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def slowed(self) -> None:
        """An edit took long: discord.py waited out a 429. Back off."""
        self.rate = max(0.25, self.rate / 2)
        self.tokens = 0


class Cooldowns:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: dict[int, float] = {}

    def check(self, user_id: int) -> None:
        now = time.monotonic()
        remaining = self.last.get(user_id, -1e9) + self.seconds - now
        if remaining > 0:
            raise RateLimited(f"Slow down a little: one command every {self.seconds:g} s.", retry_after=remaining)
        self.last[user_id] = now
        if len(self.last) > 10_000:  # forget users who went quiet
            self.last = {u: t for u, t in self.last.items() if now - t < self.seconds}


class CancelView(discord.ui.View):
    """A Cancel button only the requester may press."""

    def __init__(self, executor: Executor, job: Job, owner_id: int, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.executor, self.job, self.owner_id = executor, job, owner_id

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, emoji="✖️")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message("This isn't your request, so you can't cancel it.",
                                                    ephemeral=True, allowed_mentions=NO_PINGS)
            return
        self.executor.cancel(self.job.id)
        await interaction.response.defer()  # the request's own reply says "Cancelled" right after


class TaskCog(commands.Cog):
    """Base of the seven task cogs: they build a request and call `run_task`."""

    def __init__(self, bot: AutoModelBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Runs before each of the cog's slash commands (and before the cooldown is spent).
        check_declared_options(interaction)
        return True

    async def run_task(self, interaction: discord.Interaction, task: str, request: Any) -> None:
        bot = self.bot
        bot.cooldowns.check(interaction.user.id)
        enqueue = asyncio.ensure_future(bot.executor.enqueue(task, request, user_id=interaction.user.id))
        done, _ = await asyncio.wait({enqueue}, timeout=ENQUEUE_GRACE)
        if not done:  # slow validation (a first tokenizer load): keep the interaction alive
            await interaction.response.defer(thinking=True)
            await self._show_download(interaction, task, enqueue)
        job = await enqueue  # InputError, QueueFull, … go to the tree's error handler
        if not interaction.response.is_done():
            try:
                await interaction.response.defer(thinking=True)
            except discord.HTTPException as err:
                bot.executor.cancel(job.id)
                if getattr(err, "code", None) in EXPIRED_CODES:
                    # Answered too late (10062): Discord has told the user it failed, and nothing
                    # can be sent with this token any more.
                    log.info("Interaction %s expired before it was acknowledged; its job was dropped", interaction.id)
                    return
                raise
        try:
            result = await self._wait(interaction, job)
        except Cancelled as cancelled:
            partial = cancelled.partial
            reply = reply_generate(partial) if isinstance(partial, GenerateResult) else Reply()
            await deliver(interaction, prepend(reply, "🛑 Cancelled."), task)
            return
        except asyncio.CancelledError:
            bot.executor.cancel(job.id)
            raise
        await deliver(interaction, as_reply(result), task, await code_view(bot, task, request, result))

    async def _show_download(self, interaction: discord.Interaction, task: str, enqueue: asyncio.Future) -> None:
        """While the request waits for its checkpoint to download (first use), show how far it got."""
        shown: str | None = None
        while not enqueue.done():
            await asyncio.wait({enqueue}, timeout=UPDATE_EVERY)
            progress = self.bot.executor.download_progress(task)
            text = download_text(*progress) if progress else None
            if enqueue.done() or text is None or text == shown or not self.bot.edit_budget.try_acquire():
                continue
            shown = text
            try:
                await interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
            except discord.HTTPException as err:
                log.info("Download progress edit failed (%s); the final reply will still be sent", err)

    async def _wait(self, interaction: discord.Interaction, job: Job) -> Any:
        """Wait for the job, keeping the reply current: place in line, or streamed text."""
        executor = self.bot.executor
        view = CancelView(executor, job, interaction.user.id, timeout=self.bot.settings.request_timeout + 60)
        shown: str | None = None
        started = time.monotonic()
        while not job.future.done():
            await asyncio.wait({job.future}, timeout=SHOW_QUEUE_AFTER if shown is None else UPDATE_EVERY)
            if job.future.done() or time.monotonic() - started < SHOW_QUEUE_AFTER:
                continue
            text = self._progress_text(job)
            if text is None or text == shown or not self.bot.edit_budget.try_acquire():
                continue
            shown = text
            begun = time.monotonic()
            try:
                await interaction.edit_original_response(content=text, view=view, allowed_mentions=NO_PINGS)
            except discord.HTTPException as err:
                log.info("Progress edit failed (%s); the final reply will still be sent", err)
            if time.monotonic() - begun > UPDATE_EVERY:
                self.bot.edit_budget.slowed()
        view.stop()
        return job.future.result()

    def _progress_text(self, job: Job) -> str | None:
        if job.state == "queued":
            place, eta = self.bot.executor.position(job)
            if place == 0:
                return None
            # Discord counts the relative time down itself: rounding the target keeps the text (and
            # so the message) unchanged while only the clock moves.
            start = -(-int(time.time() + eta) // ETA_STEP) * ETA_STEP
            return f"⏳ You are **#{place}** in line for /{job.task}; it should start <t:{start}:R>."
        if isinstance(job.partial, str) and job.task == "generate":
            request = job.prepared.request
            partial = GenerateResult(request.prompt, job.partial, 0, "…", request.seed)
            return reply_generate(partial, streaming=True).content
        return None


def discord_files(reply: Reply) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in reply.files]


async def deliver(
    interaction: discord.Interaction, reply: Reply, task: str, view: discord.ui.View | None = None
) -> None:
    """The final edit of the reply. It must land: when the token has expired, post in the channel
    (pinging only the requester), and failing that, send a DM. When Discord keeps failing the edit
    (5xx or 429 after discord.py's own retries), send the result as a followup, then the same way."""
    expired = (discord.utils.utcnow() - interaction.created_at).total_seconds() > TOKEN_LIFETIME
    why = "the original reply expired"
    if not expired:
        try:
            await interaction.edit_original_response(
                content=reply.content, embeds=reply.embeds, attachments=discord_files(reply), view=view,
                allowed_mentions=NO_PINGS,
            )
            return
        except discord.HTTPException as err:
            if getattr(err, "code", None) not in EXPIRED_CODES and not _transient(err):
                raise
            if _transient(err):
                log.warning("The final edit of a /%s reply failed (%s); sending the result as a followup", task, err)
                why = "the original reply could not be updated"
                try:
                    await interaction.followup.send(**_message_kwargs(reply, view), allowed_mentions=NO_PINGS, wait=True)
                    return
                except discord.HTTPException as again:
                    log.warning("The /%s followup failed too (%s); posting in the channel", task, again)
    user = interaction.user
    late = prepend(reply, f"{user.mention}, here is your /{task} result ({why}):")
    only_them = discord.AllowedMentions(everyone=False, roles=False, users=[user], replied_user=False)
    channel = interaction.channel
    if channel is not None:
        try:
            await channel.send(**_message_kwargs(late, view), allowed_mentions=only_them)
            return
        except discord.HTTPException as err:
            log.info("Could not post the late /%s result in the channel (%s); sending a DM", task, err)
    try:
        await user.send(**_message_kwargs(late, view), allowed_mentions=NO_PINGS)
    except discord.HTTPException as err:
        log.error("Could not deliver a /%s result anywhere (edit, channel, DM): %s", task, err)


def _transient(err: discord.HTTPException) -> bool:
    """Discord's side failed (discord.py has retried already): another route may still work."""
    return err.status >= 500 or err.status == 429


def _message_kwargs(reply: Reply, view: discord.ui.View | None = None) -> dict[str, Any]:
    """content/embeds/files/view for send(); files and view only when there are some (an empty
    list is not "none")."""
    kwargs: dict[str, Any] = {"content": reply.content, "embeds": reply.embeds}
    files = discord_files(reply)
    if files:
        kwargs["files"] = files
    if view is not None:
        kwargs["view"] = view
    return kwargs
