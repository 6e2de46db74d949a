"""Logging set-up: level and format from settings, a filter that keeps secrets out, and the request
log (one line per finished request, fed by an executor listener)."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import secrets
import sys
from typing import TYPE_CHECKING, Any

from bot.settings import Settings

if TYPE_CHECKING:
    from bot.inference.executor import Job

REDACTED = "[REDACTED]"
# Libraries that give their logger a stderr handler of its own (transformers also stops propagation).
OWN_HANDLERS = {"huggingface_hub": "huggingface_hub.utils.logging", "transformers": "transformers.utils.logging"}
request_log = logging.getLogger("bot.requests")


# Interaction tokens (valid 15 minutes: anyone holding one can answer as the bot) appear in
# discord.py's DEBUG lines: in webhook and callback URLs, and as "token" in raw gateway events.
_TOKEN_PATTERNS = (
    re.compile(r"(/(?:interactions|webhooks)/\d+/)[^/\s'\"?]+"),
    re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+"""),
)


class RedactSecrets(logging.Filter):
    """Replace secrets wherever they would appear: message, arguments, a formatted traceback or a
    stack. The secrets are the bot token and the log salt, plus every interaction token (by
    pattern). Attached to the handler, so it sees every record, discord.py's included. The record is
    rewritten in place (message pre-formatted, traceback pre-rendered as text)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 8]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        if "token" in text or "/interactions/" in text or "/webhooks/" in text:
            for pattern in _TOKEN_PATTERNS:
                text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # formatters would otherwise render it again, unscrubbed
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


# Loggers whose warnings are chatter for this bot's operators: transformers' load reports and
# generation-config notices, tokenizers' length notices (the bot says it better), the hub's retries
# (the bot probes the hub itself and says what to do), Python warnings from the libraries.
CHATTY_LOGGERS = (
    "transformers", "huggingface_hub", "tokenizers", "torch", "filelock", "urllib3", "httpx", "httpx2", "py.warnings",
)
# discord.py's notices about voice, which this bot never uses (PyNaCl, davey).
CHATTY_MESSAGES = re.compile(r"voice will NOT be supported|\bdavey\b", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LibraryChatter(logging.Filter):
    """Library chatter below ERROR is shown as DEBUG (so only with LOG_LEVEL=DEBUG), without the
    terminal colour codes some of it carries. Errors always show: they are real problems."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.levelno <= logging.DEBUG:
            return record.levelno >= self.level
        chatty = any(record.name == n or record.name.startswith(f"{n}.") for n in CHATTY_LOGGERS) or (
            record.name.startswith("discord") and CHATTY_MESSAGES.search(record.getMessage()) is not None
        )
        if chatty:
            record.msg, record.args = _ANSI.sub("", record.getMessage()), None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's `fields` (the request log's) become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # On the handler, so records from every logger (discord.py's included) pass through it.
    handler.addFilter(LibraryChatter(logging.getLevelName(settings.log_level)))
    handler.addFilter(RedactSecrets([settings.discord_token or "", settings.log_user_salt]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # Python warnings become records of "py.warnings": chatter above
    for name, module in OWN_HANDLERS.items():
        # Their lines would skip the redaction and the JSON format (hub's would print twice): send
        # them through the root handler. Each sets its handler up once, on import; their own
        # levels (WARNING by default) stay.
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    try:  # transformers' own progress bars ("Loading weights") write to the terminal directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def hash_user(user_id: int, salt: str) -> str:
    """A short pseudonym for a Discord user id: the same user gets the same one for as long as the
    salt stays the same, and the id cannot be read back without the salt."""
    return hashlib.sha256(f"{salt}{user_id}".encode()).hexdigest()[:8]


class RequestLog:
    """Executor listener: one INFO line per finished request on the `bot.requests` logger.

        request task=sentiment outcome=ok wait_ms=3 compute_ms=41 batch=4 tokens=12 user=9f86d081

    wait_ms: enqueued → computed (or → dropped, for a request that never ran); compute_ms: the
    batch it rode in ("-" if it never ran); batch: requests in that batch (0: never ran); tokens:
    its input tokens; user: hash_user(id) with LOG_USER_SALT, never the raw id. With LOG_FORMAT=json
    the same values are also top-level keys of the line's object.
    """

    def __init__(self, salt: str = "") -> None:
        self.salt = salt or secrets.token_hex(16)  # random: pseudonyms change at every start

    def __call__(self, job: Job, outcome: str) -> None:
        if not request_log.isEnabledFor(logging.INFO):
            return
        end = job.finished_at if job.finished_at is not None else job.enqueued_at
        ran = job.started_at is not None
        wait = (job.started_at if ran else end) - job.enqueued_at
        fields = {
            "task": job.task,
            "outcome": outcome,
            "wait_ms": round(wait * 1000),
            "compute_ms": round((end - job.started_at) * 1000) if ran else None,
            "batch": job.batch_size,
            "tokens": getattr(job.prepared, "cost", None),
            "user": hash_user(job.user_id, self.salt),
        }
        text = " ".join(f"{key}={'-' if value is None else value}" for key, value in fields.items())
        request_log.info("request %s", text, extra={"fields": fields})
