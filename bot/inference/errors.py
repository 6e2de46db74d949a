"""The typed errors a request can end with. Each message is written for the person who asked.

The Discord layer maps these to short ephemeral replies; anything else is a bug and is reported
with an error id only.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every expected failure; `str(err)` is safe to show a user."""


class InputError(BotError):
    """The request itself is invalid (empty text, no mask, a value out of range)."""


class InputTooLong(InputError):
    """The input does not fit the model and cannot be windowed or split."""


class QueueFull(BotError):
    """Too much is queued; `retry_after` is a guess in seconds of when to try again."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(BotError):
    """This user sent commands faster than the cooldown allows."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UserBusy(QueueFull):
    """This user already has the most requests in progress that one user may have."""


class ShuttingDown(BotError):
    """The bot is stopping or restarting and takes no new work."""


class DeadlineExceeded(BotError):
    """The request waited past its deadline and was dropped before being computed."""


class Cancelled(BotError):
    """The request was cancelled (by its user, or because the bot is shutting down)."""

    def __init__(self, message: str = "The request was cancelled.", partial: object = None) -> None:
        super().__init__(message)
        self.partial = partial


class ModelUnavailable(BotError):
    """The checkpoint for this task could not be loaded (offline, missing, broken).

    `str(err)` is for chat; `detail` names the checkpoint and the remedy, for logs and the CLI.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


class InferenceFailed(BotError):
    """The model failed on this request (out of memory even alone, or an internal error)."""


def to_wire(err: BotError) -> dict:
    """A BotError as plain data, to cross a process boundary (a Ray replica's reply) intact:
    pickled exceptions lose attributes their __init__ takes as keywords (retry_after, detail)."""
    return {"type": type(err).__name__, "message": str(err), "attributes": dict(vars(err))}


def from_wire(data: dict) -> BotError:
    """The BotError to_wire described; an unknown type becomes InferenceFailed with its message."""
    cls = globals().get(data.get("type", ""))
    if not (isinstance(cls, type) and issubclass(cls, BotError)):
        return InferenceFailed(data.get("message") or "The model failed on this request.")
    err = cls.__new__(cls)
    Exception.__init__(err, data.get("message", ""))
    err.__dict__.update(data.get("attributes") or {})
    return err
