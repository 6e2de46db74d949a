"""The shared inference executor: one bounded queue and one worker thread per task, dynamic batching.

    job = await executor.enqueue("sentiment", request, user_id=...)   # fails fast: QueueFull, InputError
    result = await executor.wait(job)                                   # or: await executor.submit(...)

Every accepted job ends exactly once: a result, or one of the errors in bot.inference.errors. Batches are
formed as soon as a worker is free (no waiting window), from a window of queued jobs taken
round-robin across users, sorted by length, and cut under a padded-token budget; the job that has
been in line longest (a user's next job counts from that user's previous service) is always in the
next batch, so nobody waits indefinitely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.inference.errors import (
    BotError,
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    InputError,
    ModelUnavailable,
    QueueFull,
    ShuttingDown,
)
from bot.inference.jobs import JobTable
from bot.inference.tasks import TASKS, BatchContext, Prepared
from bot.inference.tasks.base import padded_width
from bot.settings import Settings

log = logging.getLogger(__name__)

WINDOW_FACTOR = 4  # a batch is cut from up to this many times max_batch_size queued jobs
SETTLE = 0.05  # after a batch, wait at most this fraction of its duration for its users to come back
IDLE_SETTLE = 0.4  # assumed batch duration (s) before any was measured: waits at most 20 ms
EWMA = 0.2  # weight of the newest batch in the service-time estimate
# How long a user's last service is remembered once they have nothing queued (fairness only needs
# it while they might come straight back); bounds Lane.last_served to recently active users.
SERVED_MEMORY = 30.0


@dataclass(eq=False)
class Job:
    id: int
    task: str
    user_id: int
    prepared: Prepared
    future: asyncio.Future
    enqueued_at: float
    deadline: float
    on_progress: Callable[[Any], None] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    batch_size: int = 0  # requests in the batch that computed this job (0: never computed)
    cancelled: bool = False
    partial: Any = None  # latest partial output (streamed generation text)

    @property
    def state(self) -> str:
        if self.future.done():
            return "done"
        return "running" if self.started_at is not None else "queued"


@dataclass
class LaneStats:
    batches: int = 0
    requests: int = 0
    tokens: int = 0
    batch_seconds: float = 0.0  # EWMA of one batch's compute time
    batch_size: float = 1.0  # EWMA of requests per batch
    recent_batch_sizes: deque = field(default_factory=lambda: deque(maxlen=512))
    recent_latency: deque = field(default_factory=lambda: deque(maxlen=512))  # seconds, enqueue → end


class Lane:
    """The queue of one task and the state of its worker; guarded by `cond`."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.cond = threading.Condition()
        self.by_user: dict[int, deque[Job]] = {}
        self.last_served: dict[int, float] = {}
        self.depth = 0
        self.preparing = 0  # requests received and being tokenized, about to join the queue
        self.running: list[Job] = []
        self.stats = LaneStats()

    def push(self, job: Job) -> None:
        self.by_user.setdefault(job.user_id, deque()).append(job)
        self.depth += 1

    def remove(self, job: Job) -> bool:
        queue = self.by_user.get(job.user_id)
        if queue is None or job not in queue:
            return False
        queue.remove(job)
        self.depth -= 1
        if not queue:
            del self.by_user[job.user_id]
        return True

    def forget_served(self, now: float) -> None:
        """Drop last_served entries of users with nothing queued, served over SERVED_MEMORY ago."""
        stale = [u for u, t in self.last_served.items() if now - t >= SERVED_MEMORY and u not in self.by_user]
        for user in stale:
            del self.last_served[user]

    def service_order(self) -> list[int]:
        """Users by when their next job joined the line: its enqueue time, or, for a user with more
        queued, when their previous job was served. One-job users are served in arrival order and a
        flooding user takes turns; ranking by last service alone put a returning user behind every
        newcomer, however long they had waited (the p99 tail in BENCHMARKS.md, #12)."""

        def in_line_since(user: int) -> tuple[float, float]:
            head = self.by_user[user][0].enqueued_at
            return max(self.last_served.get(user, 0.0), head), head

        return sorted(self.by_user, key=in_line_since)

    def window(self, size: int) -> list[Job]:
        """Up to `size` queued jobs, round-robin across users in service order."""
        queues = [iter(self.by_user[u]) for u in self.service_order()]
        picked: list[Job] = []
        while queues and len(picked) < size:
            alive = []
            for queue in queues:
                job = next(queue, None)
                if job is not None:
                    picked.append(job)
                    alive.append(queue)
            queues = alive
        return picked[:size]

    def position(self, job: Job) -> int:
        """1-based place in line (approximate: service order, then age)."""
        if job.started_at is not None:
            return 0
        for index, queued in enumerate(self.window(self.depth)):
            if queued is job:
                return index + 1
        return 0


def cut_batch(
    window: list[Job], max_size: int, budget: int, max_padding: float = 0.2, same_width: bool = False,
    packed: bool = False,
) -> list[Job]:
    """The batch to run next: the window's first job (the anchor) plus the jobs nearest to it in
    length, while rows × padded length stays within `budget` tokens and padding stays under
    `max_padding` of the real tokens (padding is computed like real tokens, and wasted).

    `same_width`: only jobs padded to the anchor's own width, as each would be alone. In bf16 a row
    padded wider rounds differently (scores moved by up to 0.05 % on real-size distilbert,
    BENCHMARKS.md); rows of one width give bit-identical answers in any batch.

    `packed`: the model computes no padded token (attention.py), so the budget counts real tokens
    and rows of any lengths go together."""
    anchor = window[0]
    ordered = sorted(window, key=lambda j: j.prepared.sort_key)
    low = high = ordered.index(anchor)
    rows, longest, real = len(anchor.prepared.rows), anchor.prepared.longest, anchor.prepared.cost
    width_alone = padded_width(anchor.prepared.input_width)  # the prompt's, for generation

    def fits(job: Job) -> bool:
        new_rows = rows + len(job.prepared.rows)
        width = max(longest, job.prepared.longest)
        tokens = real + job.prepared.cost if packed else new_rows * padded_width(width)
        little_padding = packed or new_rows * width <= (1 + max_padding) * (real + job.prepared.cost)
        alike = not same_width or padded_width(job.prepared.input_width) == width_alone
        return tokens <= budget and little_padding and alike

    while high - low + 1 < max_size:
        below = ordered[low - 1] if low > 0 else None
        above = ordered[high + 1] if high + 1 < len(ordered) else None
        key = anchor.prepared.sort_key
        candidates = [j for j in (below, above) if j is not None and fits(j)]
        if not candidates:
            break
        nearest = min(candidates, key=lambda j: abs(j.prepared.sort_key - key))
        if nearest is below:
            low -= 1
        else:
            high += 1
        rows += len(nearest.prepared.rows)
        longest = max(longest, nearest.prepared.longest)
        real += nearest.prepared.cost
    return ordered[low : high + 1]


class Executor(JobTable):
    def __init__(self, settings: Settings, backend: Any, settle_floor: float = 0.0) -> None:
        self.settings = settings
        self.backend = backend
        self.max_batch_size, self.batch_token_budget = settings.batch_limits(backend.on_gpu)
        self.lanes = {task: Lane(task) for task in TASKS}
        super().__init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        # Tokenizing threads, per task: a task whose tokenizer is still loading (behind another
        # model's load) must not hold up requests of tasks that are ready.
        self._prep_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._stopping = False
        # Shortest settle pause (s): a Ray replica's users come back over a round trip to the bot,
        # which can outlast SETTLE of a short batch (RAY_SETTLE_FLOOR in ray_serve.py).
        self.settle_floor = settle_floor

    @classmethod
    def from_settings(cls, settings: Settings, backend: Any = None) -> Executor:
        """The executor INFERENCE asks for: this one over the models in this process, or (ray) the
        RayExecutor, which has the same API and forwards to Ray Serve replicas running this one."""
        if settings.inference == "ray" and backend is None:
            from bot.inference.ray_client import RayExecutor

            return RayExecutor(settings)  # type: ignore[return-value]
        if backend is None:
            from bot.inference.local import LocalBackend

            backend = LocalBackend(settings)
        return cls(settings, backend)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for lane in self.lanes.values():
            self._prep_pools[lane.task] = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"prepare-{lane.task}"
            )
            thread = threading.Thread(target=self._work, args=(lane,), name=f"infer-{lane.task}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.settings.preload:
            await self.preload()

    async def preload(self) -> None:
        """Load (and warm up) every task's model now instead of on first use."""
        for task in TASKS:
            try:
                await asyncio.to_thread(self.backend.warm_up, task)
            except ModelUnavailable as err:
                log.error("%s", err.detail)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs, tell every queued job it will not run, let running batches finish
        within `grace` seconds, then end whatever is left."""
        if self._stopping:
            return
        self._stopping = True
        restarting = "The bot is restarting; your request was not run. Try again shortly."
        for lane in self.lanes.values():
            with lane.cond:
                queued = [job for q in lane.by_user.values() for job in q]
                lane.by_user.clear()
                lane.depth = 0
                lane.cond.notify_all()
            for job in queued:
                self._finish(job, error=ShuttingDown(restarting))
        ends = time.monotonic() + grace
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, ends - time.monotonic()))
        for job in list(self._jobs.values()):
            job.cancelled = True
            self._finish(job, error=ShuttingDown(restarting))
        for pool in self._prep_pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- the API the cogs use ------------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        request: Any,
        *,
        user_id: int = 0,
        timeout: float | None = None,
        on_progress: Callable[[Any], None] | None = None,
        admitted: bool = False,
    ) -> Job:
        """Validate, tokenize and queue a request. Fails at once when full or invalid. `admitted`: a
        request accepted once already (a Ray replica's call sent again after another request's
        Cancel, while its first copy may still count here), so the queue and user caps are not
        checked again."""
        if task not in self.lanes:
            raise InputError(f"Unknown task {task!r}.")
        loop = asyncio.get_running_loop()
        lane = self.lanes[task]
        try:
            self._check_capacity(task, user_id, admitted)
            with lane.cond:
                lane.preparing += 1
            try:
                prepared = await loop.run_in_executor(self._prep_pools.get(task), self.backend.prepare, task, request)
            finally:
                with lane.cond:
                    lane.preparing -= 1
                    lane.cond.notify()
            self._check_capacity(task, user_id, admitted)  # tokenizing took time; others may have filled the queue
        except BotError as err:
            self.refused[(task, type(err).__name__)] += 1
            raise
        now = time.monotonic()
        job = Job(
            id=next(self._ids),
            task=task,
            user_id=user_id,
            prepared=prepared,
            future=loop.create_future(),
            enqueued_at=now,
            deadline=now + (timeout or self.settings.request_timeout),
            on_progress=on_progress,
        )
        self._track(job)
        with lane.cond:
            lane.push(job)
            lane.cond.notify()
        return job

    def _stop(self, job: Job) -> None:
        """A queued job ends now; a running one ends after its batch (a generation row stops at its
        next step) as Cancelled."""
        lane = self.lanes[job.task]
        with lane.cond:
            removed = lane.remove(job)
        if removed:
            self._finish(job, error=Cancelled())

    def download_progress(self, task: str) -> tuple[str, int, int] | None:
        """(checkpoint, bytes done, total) while the task's checkpoint downloads (first use), else None."""
        return self.backend.download_progress(task) if hasattr(self.backend, "download_progress") else None

    def position(self, job: Job) -> tuple[int, float]:
        """(place in line, seconds until it likely starts); (0, 0.0) once running or done."""
        lane = self.lanes[job.task]
        with lane.cond:
            place = lane.position(job)
            running_since = lane.running[0].started_at if lane.running else None
        if place == 0:
            return 0, 0.0
        # Before the first batch has finished there is no measurement: assume it takes as long as
        # the running one has so far, and at least a second.
        elapsed = time.monotonic() - running_since if running_since else 0.0
        per_batch = lane.stats.batch_seconds if lane.stats.batches else max(1.0, elapsed)
        batches_ahead = (place - 1) // max(1, round(lane.stats.batch_size))
        current = max(0.0, per_batch - (time.monotonic() - running_since)) if running_since else 0.0
        return place, current + batches_ahead * per_batch

    def snapshot(self) -> dict[str, Any]:
        """Counters for /status and metrics."""
        lanes = {}
        for task, lane in self.lanes.items():
            with lane.cond:
                stats = lane.stats
                latencies = sorted(stats.recent_latency)
                lanes[task] = {
                    "queued": lane.depth,
                    "running": len(lane.running),
                    "batches": stats.batches,
                    "requests": stats.requests,
                    "tokens": stats.tokens,
                    "mean_batch_size": (sum(stats.recent_batch_sizes) / len(stats.recent_batch_sizes))
                    if stats.recent_batch_sizes
                    else 0.0,
                    "latency_p50": _quantile(latencies, 0.5),
                    "latency_p99": _quantile(latencies, 0.99),
                }
        return self._snapshot(lanes)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    # -- internals -----------------------------------------------------------------------------

    def _check_capacity(self, task: str, user_id: int, admitted: bool = False) -> None:
        if self._stopping:
            raise ShuttingDown("The bot is restarting; try again shortly.")
        if admitted:
            return
        lane = self.lanes[task]
        total = sum(l.depth for l in self.lanes.values())
        if lane.depth >= self.settings.queue_size_per_model or total >= self.settings.queue_size_total:
            wait = self._drain_estimate(lane)
            raise QueueFull(
                f"The bot is busy ({lane.depth} /{task} requests waiting, {total} in all). Try again soon.",
                retry_after=wait,
            )
        self._check_user(user_id, retry_after=self._drain_estimate(lane))

    def _drain_estimate(self, lane: Lane) -> float:
        per_batch = max(lane.stats.batch_seconds, 0.05)
        return max(1.0, lane.depth / max(1.0, lane.stats.batch_size) * per_batch)

    def _work(self, lane: Lane) -> None:
        """Worker thread of one lane: form a batch as soon as there is work, run it, repeat.

        One exception to "as soon as": requests that have already arrived may still be joining
        (being tokenized, or, right after a batch, being sent again by the users it just answered).
        The worker waits for them, at most SETTLE of a batch's duration; without the pause it would
        take the first one alone, and under a steady load the batch would stay split in two.
        """
        last_size, settle_until = 0, 0.0
        while True:
            with lane.cond:
                while lane.depth == 0 and not self._stopping:
                    lane.forget_served(time.monotonic())
                    lane.cond.wait(SERVED_MEMORY if lane.last_served else None)
                if time.monotonic() > settle_until:  # woken from idle: wait only for a burst being tokenized
                    last_size = 0
                    settle_until = time.monotonic() + SETTLE * max(lane.stats.batch_seconds, IDLE_SETTLE)
                while not self._stopping and (lane.depth < last_size or lane.preparing):
                    remaining = settle_until - time.monotonic()
                    if remaining <= 0:
                        break
                    lane.cond.wait(remaining)
                if self._stopping:
                    return
                batch, dropped = self._take_batch(lane)
                lane.running = batch
            for job, error in dropped:
                self._finish(job, error=error)
            if batch:
                seconds = self._run(lane, batch)
                last_size, settle_until = len(batch), time.monotonic() + max(SETTLE * seconds, self.settle_floor)
            with lane.cond:
                lane.running = []

    def _take_batch(self, lane: Lane) -> tuple[list[Job], list[tuple[Job, BotError]]]:
        """Drop expired and cancelled jobs, then cut the next batch (called with lane.cond held)."""
        now = time.monotonic()
        dropped: list[tuple[Job, BotError]] = []
        window: list[Job] = []
        while not window and lane.depth:
            for job in lane.window(self.max_batch_size * WINDOW_FACTOR):
                if job.cancelled or job.deadline <= now:
                    lane.remove(job)
                    error = Cancelled() if job.cancelled else DeadlineExceeded(
                        "Your request waited too long in the queue and was dropped. Try again when the bot is less busy."
                    )
                    dropped.append((job, error))
                else:
                    window.append(job)
        if not window:
            return [], dropped
        rule = getattr(self.backend, "batch_rule", lambda task: "any")(lane.task)  # what keeps answers as alone
        batch = cut_batch(window, 1 if rule == "alone" else self.max_batch_size, self.batch_token_budget,
                          TASKS[lane.task].max_padding, same_width=rule == "same width", packed=rule == "packed")
        for job in batch:
            lane.remove(job)
            job.started_at = now
            job.batch_size = len(batch)
            lane.last_served[job.user_id] = now
        lane.forget_served(now)
        return batch, dropped

    def _run(self, lane: Lane, batch: list[Job]) -> float:
        """Run a batch, record its stats, resolve its jobs; returns how long it took (s)."""
        started = time.perf_counter()
        outcomes = self._run_split(lane.task, batch)
        seconds = time.perf_counter() - started
        with lane.cond:
            stats = lane.stats
            stats.batches += 1
            stats.requests += len(batch)
            stats.tokens += sum(job.prepared.cost for job in batch)
            stats.batch_seconds = seconds if stats.batches == 1 else (1 - EWMA) * stats.batch_seconds + EWMA * seconds
            stats.batch_size = (1 - EWMA) * stats.batch_size + EWMA * len(batch)
            stats.recent_batch_sizes.append(len(batch))
        for job, (result, error) in zip(batch, outcomes):
            self._finish(job, result=result, error=error)
        return seconds

    def _run_split(self, task: str, batch: list[Job]) -> list[tuple[Any, BotError | None]]:
        """Run a batch; on out-of-memory, free the cache and retry each half. Any other failure of a
        multi-request batch is retried one request at a time, so one bad request fails alone."""
        ctx = BatchContext(
            len(batch),
            report_interval=self.settings.stream_interval,
            is_cancelled=lambda i: batch[i].cancelled or batch[i].deadline <= time.monotonic(),
            report=lambda i, partial: self._progress(batch[i], partial),
        )
        try:
            results = self.backend.run(task, [job.prepared for job in batch], ctx)
            if len(results) != len(batch):
                raise RuntimeError(f"{task} returned {len(results)} results for {len(batch)} requests")
            return [(result, None) for result in results]
        except BotError as err:
            return [(None, err)] * len(batch)
        except Exception as err:
            oom = is_out_of_memory(err)
            if oom:
                self.backend.free_cache()
            if len(batch) > 1:
                log.warning("%s batch of %d failed (%s); retrying in %s", task, len(batch), type(err).__name__,
                            "halves" if oom else "single requests")
                if oom:
                    half = len(batch) // 2
                    return self._run_split(task, batch[:half]) + self._run_split(task, batch[half:])
                return [outcome for job in batch for outcome in self._run_split(task, [job])]
            if oom:
                log.error("%s request %d is out of memory even alone", task, batch[0].id)
                return [(None, InferenceFailed("This request needs more memory than the model has free. Try a shorter input."))]
            log.exception("%s request %d failed", task, batch[0].id)
            return [(None, InferenceFailed(f"The model failed on this request (error id {batch[0].id}). Try again or change the input."))]

    def _progress(self, job: Job, partial: Any) -> None:
        def deliver() -> None:
            job.partial = partial
            if job.on_progress is not None and not job.future.done():
                try:
                    job.on_progress(partial)
                except Exception:
                    log.exception("Progress callback of job %d failed", job.id)

        self._call_soon(deliver)

    def _finish(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        """Resolve a job exactly once, on the event loop (safe to call from any thread)."""
        if error is None and job.cancelled:  # cancelled while running: the user asked not to see it
            error = Cancelled(partial=result)
        elif error is None and getattr(result, "finish_reason", None) == "cancelled":
            error = DeadlineExceeded("Your request ran past its time limit and was stopped.")

        def resolve() -> None:
            if job.future.done():
                return
            job.finished_at = time.monotonic()
            lane = self.lanes[job.task]
            with lane.cond:
                lane.stats.recent_latency.append(job.finished_at - job.enqueued_at)
            self._settle(job, result, error)

        self._call_soon(resolve)

    def _call_soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if _running_loop() is loop:
                callback()
            else:
                loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop closed between the check and the call
            pass


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(err, MemoryError)
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
