"""What the local Executor and the RayExecutor share: the table of accepted jobs, per-user counts,
outcome counters, listeners, and ending a job exactly once. The cogs see one API over both."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bot.inference.errors import UserBusy

log = logging.getLogger(__name__)


class JobTable:
    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()  # accepted jobs, by how they ended
        self.refused: Counter[tuple[str, str]] = Counter()  # requests refused before queueing, by reason
        # Called on the event loop as listener(job, outcome) when a job ends: logs, metrics.
        self.listeners: list[Callable[[Any, str], None]] = []
        self._ids = itertools.count(1)
        self._jobs: dict[int, Any] = {}
        self._per_user: Counter[int] = Counter()
        self.started_at = time.time()

    async def submit(self, task: str, request: Any, **options) -> Any:
        """Enqueue and wait: the request's result, or one BotError."""
        return await self.wait(await self.enqueue(task, request, **options))

    async def wait(self, job) -> Any:
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self.cancel(job.id)  # whoever waited is gone: stop spending compute on it
            raise

    def cancel(self, job_id: int) -> bool:
        """Cancel a job that has not ended (False for one that has, or an unknown id)."""
        job = self._jobs.get(job_id)
        if job is None or job.future.done():
            return False
        job.cancelled = True
        self._stop(job)
        return True

    def _stop(self, job) -> None:
        """Stop a job being cancelled, where it is (a queue, a worker, a replica)."""
        raise NotImplementedError

    def get(self, job_id: int):
        return self._jobs.get(job_id)

    def _snapshot(self, lanes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What snapshot() returns around per-task lane figures: for /status, /models and metrics."""
        return {
            "uptime": time.time() - self.started_at,
            "queued": sum(lane["queued"] for lane in lanes.values()),
            "lanes": lanes,
            "outcomes": dict(self.outcomes),
            "refused": dict(self.refused),
            "models": self.backend.describe(),
            "memory": self.backend.memory(),
        }

    def _check_user(self, user_id: int, retry_after: float = 5.0) -> None:
        """UserBusy when this user already has MAX_QUEUED_PER_USER requests in progress."""
        if self._per_user[user_id] >= self.settings.max_queued_per_user:
            raise UserBusy(
                f"You already have {self._per_user[user_id]} requests in progress; wait for one to finish.",
                retry_after=retry_after,
            )

    def _track(self, job) -> None:
        self._jobs[job.id] = job
        self._per_user[job.user_id] += 1

    def _forget(self, job) -> None:
        if self._jobs.pop(job.id, None) is not None:
            self._per_user[job.user_id] -= 1
            if self._per_user[job.user_id] <= 0:
                del self._per_user[job.user_id]

    def _settle(self, job, result: Any = None, error: BaseException | None = None) -> bool:
        """End a job once, on the event loop: its future, the counters, the listeners. False if it
        had already ended."""
        if job.future.done():
            return False
        self._forget(job)
        if job.finished_at is None:
            job.finished_at = time.monotonic()
        outcome = "ok" if error is None else type(error).__name__
        self.outcomes[(job.task, outcome)] += 1
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)
            job.future.exception()  # mark retrieved: nobody may be waiting (cancelled by its user)
        for listener in self.listeners:
            try:
                listener(job, outcome)
            except Exception:
                log.exception("Job listener failed")
        return True
