"""automodel-bot: the Hugging Face AutoModel family behind Discord slash commands."""

__version__ = "0.1.0"
