"""/models, /status and /help: what runs where, how busy it is, and what each command does."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.download import shown_checkpoint
from bot.inference import products
from bot.inference.tasks import TASKS
from bot.tree import NO_PINGS

COMMAND_USAGE = {
    "generate": "/generate prompt [max_new_tokens] [temperature] [top_p] [seed]",
    "mask": "/mask text [top_k]",
    "translate": "/translate text",
    "ask": "/ask question context",
    "ner": "/ner text",
    "sentiment": "/sentiment text",
    "embed": "/embed text [other]",
}


def _replica_lines(replicas: list[dict] | None) -> str:
    """INFERENCE=ray: one short line per replica (node, device, loaded, queue), at most six."""
    if not replicas:
        return ""
    lines = [f"replica on node `{r['node'][:8]}` · {r['device']} · {'loaded' if r['loaded'] else 'loading'} · "
             f"{r['queued']} queued" for r in replicas[:6]]
    more = f"\n… and {len(replicas) - 6} more" if len(replicas) > 6 else ""
    return "\n" + "\n".join(lines) + more


def _count(n: int) -> str:
    """124M, 1.3B, 215K: a parameter count at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {seconds}s"


class Info(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot

    def shown(self, checkpoint: str, interaction: discord.Interaction) -> str:
        return shown_checkpoint(checkpoint, full=interaction.user.id in self.bot.owner_id_set)

    @app_commands.command(name="models", description="Which model runs each command, where, and whether it is loaded")
    async def models(self, interaction: discord.Interaction) -> None:
        embed = discord.Embed(title="Models", color=0x5865F2)
        rows = self.bot.executor.backend.describe()
        for row in rows:
            state = "loaded" if row["loaded"] else "loads on first use"
            params = f" · {_count(row['parameters'])} parameters" if row["parameters"] else ""
            shared = f" · shares weights with /{', /'.join(row['shared_with'])}" if row["shared_with"] and row["loaded"] else ""
            # Batches without padding, or rows of any width batching as alone (attention.py)
            layout = " · packed" if row.get("packed") else " · row by row" if row.get("rows_alone") else ""
            # Where this CPU's half-precision products change with a call's rows (products.py)
            computed = products.shown(row.get("products", products.STEADY))
            layout += f" · {computed}" if computed else ""
            embed.add_field(
                name=f"/{row['task']}",
                value=f"`{row['auto_class']}`\n`{self.shown(row['checkpoint'], interaction)[:200]}`\n{row['device']} · {row['dtype']}{layout} · {state}{params}{shared}"
                + _replica_lines(row.get("replicas")),
                inline=False,
            )
        reason = next((row["dtype_reason"] for row in rows if row.get("dtype_reason")), "")
        if reason:
            embed.set_footer(text=reason)  # why these dtypes (DTYPE=auto decides per task and per CPU)
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="status", description="Queue depth, recent latency, uptime and memory")
    async def status(self, interaction: discord.Interaction) -> None:
        snapshot = self.bot.executor.snapshot()
        ray = "replicas" in snapshot  # INFERENCE=ray: lanes are summed over each task's replicas
        lines = ["task        queued  running  p50 s   p99 s   batch" + ("  replicas" if ray else "")]
        for task, lane in snapshot["lanes"].items():
            lines.append(
                f"{task:<11} {lane['queued']:>6}  {lane['running']:>7}  {lane['latency_p50']:>5.2f}  "
                f"{lane['latency_p99']:>6.2f}  {lane['mean_batch_size']:>5.1f}" + (f"  {lane['replicas']:>8}" if ray else "")
            )
        embed = discord.Embed(title="Status", description="```\n" + "\n".join(lines) + "\n```", color=0x5865F2)
        embed.add_field(name="uptime", value=_duration(snapshot["uptime"]), inline=True)
        embed.add_field(name="queued in all", value=str(snapshot["queued"]), inline=True)
        memory = snapshot["memory"]
        if memory:
            embed.add_field(name="GPU memory", value=f"{memory['allocated'] / 2**30:.1f} of {memory['total'] / 2**30:.1f} GiB",
                            inline=True)
        loaded = sum(m["memory_bytes"] or 0 for m in snapshot["models"])
        embed.add_field(name="model weights loaded", value=f"{loaded / 2**20:.0f} MiB", inline=True)
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="help", description="What each command does and the Auto class behind it")
    async def help(self, interaction: discord.Interaction) -> None:
        backend = self.bot.executor.backend
        embed = discord.Embed(
            title="automodel-bot",
            description="Each command is one Hugging Face Auto class. Right-click a message → Apps for "
            "Sentiment, Named entities and Translate.",
            color=0x5865F2,
        )
        for name, task in TASKS.items():
            embed.add_field(
                name=COMMAND_USAGE[name],
                value=f"{task.summary}\n`{task.auto_class_name}` · `{self.shown(backend.checkpoints[name], interaction)[:150]}`",
                inline=False,
            )
        if interaction.user.id in self.bot.owner_id_set:
            embed.add_field(name="Invite link (shown to owners only)", value=self.bot.invite_url, inline=False)
        embed.set_footer(text="/models: where each model runs · /status: how busy the bot is")
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_PINGS)


async def setup(bot) -> None:
    await bot.add_cog(Info(bot))
