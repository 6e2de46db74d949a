"""Discord cogs: one file per command (see bot/client.py EXTENSIONS)."""
