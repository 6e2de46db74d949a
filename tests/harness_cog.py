"""A trivial cog for the fake-Discord harness: one command of each interaction shape it fakes.

- /ping text [attach]: defers (type 5), then edits the original reply (with a file if asked);
- "Echo" message context menu: answers the target message's content, ephemeral (type 4);
- /button: a message with two buttons; "update" edits it in the callback (type 7), "defer"
  acknowledges first (type 6) and then edits the original.
"""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

BUTTON_UPDATE = "harness:update"
BUTTON_DEFER = "harness:defer"


class HarnessView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=60)

    @discord.ui.button(label="Update", custom_id=BUTTON_UPDATE)
    async def update(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"updated by {interaction.user.id}", view=None)

    @discord.ui.button(label="Defer", custom_id=BUTTON_DEFER)
    async def defer(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"deferred edit by {interaction.user.id}", view=None)


class HarnessCog(commands.Cog):
    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        # Context menus cannot be declared with a decorator inside a cog: build one from a bound method.
        self.echo_menu = app_commands.ContextMenu(name="Echo", callback=self.echo)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.echo_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.echo_menu.name, type=self.echo_menu.type)

    @app_commands.command(name="ping", description="Defer, then edit the reply")
    @app_commands.describe(text="Text to echo back", attach="Also attach the text as ping.txt")
    async def ping(self, interaction: discord.Interaction, text: str, attach: bool = False) -> None:
        await interaction.response.defer(thinking=True)
        files = [discord.File(io.BytesIO(text.encode()), filename="ping.txt")] if attach else []
        await interaction.edit_original_response(content=f"pong: {text}", attachments=files)

    async def echo(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_message(message.content, ephemeral=True)

    @app_commands.command(name="button", description="Send a message with buttons")
    async def button(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Press a button", view=HarnessView())


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(HarnessCog(bot))
