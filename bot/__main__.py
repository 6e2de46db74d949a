"""`python -m bot` starts the Discord bot (the same as `automodel-bot run`)."""

from bot.cli import main

raise SystemExit(main(["run"]))
