"""`python -m bot` starts the Discord bot (the same as `automodel-bot run`); with arguments it is
`automodel-bot` itself (`python -m bot --help`, `python -m bot try …`)."""

import sys

from bot.cli import main

raise SystemExit(main(sys.argv[1:] or ["run"]))
