"""INFERENCE=ray, the bot side: `RayExecutor` has the Executor's API (enqueue, wait, cancel,
position, snapshot, shutdown), so the cogs do not know where models run. Requests go to their
model group's Serve deployment (bot/inference/ray_serve.py) as streaming calls, over the replicas'
gRPC servers (once more as a Ray actor call if its replica says nothing); batching, fairness and
deadlines happen in the replica, next to the weights.

A call carries the requests of one task that arrive in the same turn of the event loop (a call
costs about 2 ms of CPU; a burst of 32 would otherwise cost the replica's worker the time the 32
calls take to arrive), at most a quarter of a replica's queue, so a burst still spreads over the
replicas. A streamed /generate request always has a call of its own.

Here: the per-user cap and the total in flight (a user's requests may land on different
replicas), the place-in-line and streamed text the replica reports, Cancel as
`response.cancel()` (which stops the work on the replica; a call stops whole, so the other
requests of a cancelled one's call are sent again), and every failure of the cluster (a dead
replica, a full Serve queue, an unreachable cluster) turned into one of our typed errors. Every
accepted job ends exactly once, as with the local executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from bot.inference import products, ray_serve
from bot.inference.errors import (
    BotError,
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    InputError,
    QueueFull,
    ShuttingDown,
    from_wire,
)
from bot.inference.executor import Job
from bot.inference.jobs import JobTable
from bot.inference.tasks import TASKS
from bot.settings import Settings

log = logging.getLogger(__name__)

BOARD_REFRESH = 1.0  # seconds between reads of the replicas' board (for /status, /models, ETA)
DEADLINE_SLACK = 10.0  # seconds past a request's deadline before the bot stops waiting for its replica
FIRST_EVENT_WAIT = 10.0  # seconds for a replica to say "queued" (it does in milliseconds) before the call is resent
CALL_SHARE = 4  # a call carries at most 1/CALL_SHARE of a replica's queue (QUEUE_SIZE_PER_MODEL)


@dataclass(eq=False)
class RemoteJob(Job):
    """A request running on a replica, as the bot sees it: the local Job's fields (the cogs and logs
    read them; `prepared` only carries the token count the replica reports), plus its place in
    the replica's line and the call carrying it. started_at is set once the replica reports it running."""

    place: int = 0
    eta: float = 0.0
    request: Any = None  # kept until the job ends: a call stopped for another's Cancel sends it again
    call: Call | None = None  # None while it waits for this loop turn's send, and once it ended
    accepted: asyncio.Future | None = None  # the replica's first word: None ("queued"), or its refusal
    expiry: asyncio.TimerHandle | None = None  # the deadline, plus slack, for a replica that hangs


@dataclass(eq=False)
class Call:
    """One streaming Serve call and the jobs it carries (index in the call → job). A job rides the
    call while `job.call is` it; a call nobody rides any longer is cancelled."""

    task: str
    jobs: list[RemoteJob]
    response: Any = None  # the Serve DeploymentResponseGenerator
    reader: asyncio.Task | None = None

    def riders(self) -> list[RemoteJob]:
        return [job for job in self.jobs if job.call is self]


class RayBackend:
    """What the cogs read of `executor.backend`: checkpoints, describe() per task with each replica,
    and set_checkpoint as a rolling update of that task's replicas."""

    def __init__(self, executor: RayExecutor) -> None:
        self.executor = executor
        self.checkpoints = dict(executor.settings.checkpoints)

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        replicas = self.executor.replicas
        group_of = ray_serve.deployment_of(self.executor.settings)
        for name, task in TASKS.items():
            own = [r for r in replicas if name in r["tasks"]]
            models = [m for r in own for m in r["models"] if m["task"] == name]
            first = models[0] if models else {}
            rows.append({
                "task": name,
                "auto_class": task.auto_class_name,
                "checkpoint": self.checkpoints[name],
                "device": ", ".join(sorted({m["device"] for m in models})) or "ray",
                "dtype": first.get("dtype", "?"),
                "dtype_reason": first.get("dtype_reason", ""),
                "quantize": first.get("quantize", "none"),
                "packed": self.packed(name),
                "rows_alone": self.rows_alone(name),
                "products": self.products(name),
                "parameters": first.get("parameters"),
                "memory_bytes": sum(m["memory_bytes"] or 0 for m in models) or None,
                "loaded": any(m["loaded"] for m in models),
                "shared_with": [t for t in TASKS if t != name and group_of[t] == group_of[name]],
                "replicas": [{"replica": r["replica"], "node": r["node"],
                              "device": next((m["device"] for m in r["models"] if m["task"] == name), "?"),
                              "loaded": any(m["loaded"] for m in r["models"] if m["task"] == name),
                              "queued": r["lanes"].get(name, {}).get("queued", 0)} for r in own],
            })
        return rows

    def precision(self, task: str) -> tuple[str, str]:
        """(dtype, quantize) of the task's replicas, from their last report (float32 until one reports)."""
        models = [m for r in self.executor.replicas for m in r["models"] if m["task"] == task and m.get("dtype")]
        return (models[0]["dtype"], models[0].get("quantize", "none")) if models else ("float32", "none")

    def packed(self, task: str) -> bool | None:
        """Whether the task's replicas run its model packed, from the last reports of replicas that have
        it loaded; None until one has reported so."""
        return self._reported(task, "packed")

    def rows_alone(self, task: str) -> bool | None:
        """Whether the task's replicas compute each row as alone and unpadded (LocalBackend.rows_alone);
        None (the Code button then decides by task) until a replica with the model loaded reports so."""
        return self._reported(task, "rows_alone")

    def products(self, task: str) -> str:
        """How the task's replicas keep each row's products independent of its companions
        (LocalBackend.products), from their last reports: in pieces or varying if any replica says so."""
        found = set(self._loaded_reports(task, "products"))
        return next((kind for kind in (products.VARYING, products.IN_PIECES) if kind in found), products.STEADY)

    def _reported(self, task: str, field: str) -> bool | None:
        loaded = self._loaded_reports(task, field)
        return any(loaded) if loaded else None

    def _loaded_reports(self, task: str, field: str) -> list[Any]:
        """`field` as each replica with the task's model loaded last reported it."""
        return [m[field] for r in self.executor.replicas for m in r["models"]
                if m["task"] == task and m.get("loaded") and field in m]

    def set_checkpoint(self, task: str, checkpoint: str) -> None:
        """Redeploy the task's model group with the new checkpoint: Serve starts new replicas and
        retires the old ones as the new are ready (the old serve meanwhile). Blocking: the admin
        cog runs it in a thread."""
        import dataclasses

        checkpoints = {**self.checkpoints, task: checkpoint}
        settings = dataclasses.replace(self.executor.settings, checkpoints=checkpoints)
        group = ray_serve.deployment_of(self.executor.settings)[task]  # the groups stay as deployed
        app = ray_serve.group_application(settings, group, ray_serve.model_groups(self.executor.settings)[group])
        ray_serve.run_apps({ray_serve.app_name(group): app}, timeout=300)
        self.checkpoints = checkpoints

    def memory(self) -> dict[str, int] | None:
        return None


class RayExecutor(JobTable):
    def __init__(self, settings: Settings, only: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.only = only  # serve only these tasks (the bench deploys one model group)
        self.backend = RayBackend(self)
        super().__init__()
        self.replicas: list[dict[str, Any]] = []  # the board's latest, refreshed every BOARD_REFRESH
        self._handles: dict[str, Any] = {}  # task → DeploymentHandle calling over the replicas' gRPC servers
        self._actor_handles: dict[str, Any] = {}  # task → the same handle calling as Ray actor calls
        self.resent: Counter[str] = Counter()  # per task: calls resent as actor calls (see _read)
        self.calls: Counter[str] = Counter()  # per task: calls made (a call carries one request or more)
        self._unsent: dict[str, list[RemoteJob]] = {}  # per task: jobs of this loop turn, sent together
        self.call_size = call_size(settings)  # the most requests a call carries
        self._stopping = False
        self._board = None
        self._refresher: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (RAY_ADDRESS, or a local Ray on which the app is deployed now) and take a handle
        per task, on this event loop (Serve handles misbehave on another loop: ray #55142)."""
        from ray import serve

        if self.settings.ray_address:
            await asyncio.to_thread(ray_serve.connect, self.settings)
        else:  # a local Ray is started from this (long-lived) thread, blocking the loop ~5 s once
            ray_serve.connect(self.settings)
        groups = {task: group for task, group in ray_serve.deployment_of(self.settings).items()
                  if self.only is None or task in self.only}
        if not self.settings.ray_address:
            await asyncio.to_thread(ray_serve.deploy, self.settings, 300.0, self.only)
        else:
            await asyncio.to_thread(ray_serve.wait_running, [ray_serve.app_name(g) for g in set(groups.values())], 60.0)
        self._board = ray_serve.ensure_board()
        for task, group in groups.items():
            handle = fast_handle(serve.get_deployment_handle(group, app_name=ray_serve.app_name(group)))
            self._actor_handles[task], self._handles[task] = as_actor_calls(handle), over_grpc(handle)
        self._refresher = asyncio.ensure_future(self._refresh_forever())

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs; requests in flight get `grace` seconds to finish on their replicas,
        then are cancelled there and told the bot is restarting."""
        if self._stopping:
            return
        self._stopping = True
        pending = [job.future for job in self._jobs.values()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for job in list(self._jobs.values()):  # each call is cancelled as its last job leaves it
            self._end(job, error=ShuttingDown("The bot is restarting; your request was not run. Try again shortly."))
        if self._refresher is not None:
            self._refresher.cancel()
        for handle in self._actor_handles.values():  # their routers run on this loop: stop them here
            try:
                await handle.shutdown_async()
            except Exception:
                log.debug("A Serve handle did not shut down cleanly", exc_info=True)

    @property
    def accepting(self) -> bool:
        return not self._stopping

    # -- the API the cogs use ------------------------------------------------------------------

    async def enqueue(self, task: str, request: Any, *, user_id: int = 0, timeout: float | None = None,
                      on_progress: Callable[[Any], None] | None = None) -> RemoteJob:
        """Send the request to its model group; returns once a replica accepted it (or raises the
        replica's refusal: InputError, QueueFull, …)."""
        if task not in self._handles:
            raise InputError(f"Unknown task {task!r}.")
        try:
            self._check_capacity(task, user_id)
        except BotError as err:
            self.refused[(task, type(err).__name__)] += 1
            raise
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        seconds = timeout or self.settings.request_timeout
        job = RemoteJob(next(self._ids), task, user_id, SimpleNamespace(cost=None), loop.create_future(), now,
                        now + seconds, on_progress, request=request, accepted=loop.create_future())
        self._track(job)
        # Bounded like the rest of the request: the replica enforces the deadline; a replica may hang.
        job.expiry = loop.call_later(seconds + DEADLINE_SLACK, self._expire, job)
        unsent = self._unsent.setdefault(task, [])
        if not unsent:
            loop.call_soon(self._send_unsent, task)
        unsent.append(job)
        try:
            await job.accepted
        except asyncio.CancelledError:  # whoever enqueued is gone: so is the request
            self._leave(job)
            self._forget(job)
            job.expiry.cancel()
            raise
        except BotError as error:
            self.refused[(task, type(error).__name__)] += 1
            raise
        return job

    def _send_unsent(self, task: str) -> None:
        self._send(task, self._unsent.pop(task, []))

    def _send(self, task: str, jobs: list[RemoteJob]) -> None:
        """Send jobs of a task in as few calls as the rules allow (see the module's doc)."""
        size = self.call_size
        shared = [job for job in jobs if job.on_progress is None]
        groups = [[job] for job in jobs if job.on_progress is not None]  # a streamed request is never stopped for another's Cancel
        groups += [shared[i:i + size] for i in range(0, len(shared), size)]
        for group in groups:
            call = Call(task, group)
            for job in group:
                job.call = call
            self.calls[task] += 1
            call.reader = asyncio.ensure_future(self._read(call))

    def _call(self, handles: dict[str, Any], call: Call) -> Any:
        """One streaming call of the jobs to their model group; the replica is told the seconds left of
        each, and which were accepted already (sent again after another's Cancel: their first copy may
        still count against the caps there)."""
        now = time.monotonic()
        requests = [(job.request, job.user_id, max(0.001, job.deadline - now), job.accepted.done())
                    for job in call.jobs]
        return handles[call.task].options(stream=True).run.remote(call.task, requests)

    async def _read(self, call: Call) -> None:
        """Send the call and apply what its replica reports, until no job rides it."""
        call.jobs = call.riders()  # one may have ended (shutdown) since it was sent
        if not call.jobs:
            return
        try:
            call.response = self._call(self._handles, call)
            try:
                first = await asyncio.wait_for(call.response.__anext__(), FIRST_EVENT_WAIT)
            except asyncio.TimeoutError:
                # Over gRPC a replica that just died reads as "unavailable", and Serve's router may keep
                # the call on it until the deadline. A Ray actor call fails at once on a dead replica
                # (the router then drops it) and reaches a live one like any call.
                cancel_call(call.response)
                self.resent[call.task] += 1
                log.warning("%s call of %d request(s): no word from its replica in %g s; resent as an actor call",
                            call.task, len(call.riders()), FIRST_EVENT_WAIT)
                call.jobs = call.riders()
                call.response = self._call(self._actor_handles, call)
                first = await call.response.__anext__()  # bounded by each job's expiry
            self._apply(call, first)
            if not call.riders():
                return
            async for message in call.response:
                self._apply(call, message)
                if not call.riders():
                    return
            for job in call.riders():
                self._end(job, error=InferenceFailed(f"The model server ended your request without an answer "
                                                     f"(error id {job.id}). Try again."))
        except asyncio.CancelledError:  # cancelled by _close: its jobs were ended or moved
            return
        except BaseException as err:  # the replica died, the cluster went away, …
            for job in call.riders():
                log.warning("%s request %d failed on the cluster: %s", job.task, job.id, type(err).__name__)
                self._end(job, error=_cluster_error(err, job))

    def _stop(self, job: RemoteJob) -> None:
        """Stop the request on its replica (the replica's executor drops or stops it) and end it."""
        self._leave(job)
        self._end(job, error=Cancelled(partial=job.partial))

    def _leave(self, job: RemoteJob) -> None:
        """Take the job off its call, and so off its replica: a call stops whole, so a call that others
        still ride is stopped and they are sent again (none of them streams: see _send)."""
        call = job.call
        if call is None:
            self._unsend(job)
            return
        job.call = None
        others = call.riders()
        self._close(call)
        if others:
            self._send(call.task, others)

    def _end(self, job: RemoteJob, result: Any = None, error: BaseException | None = None) -> None:
        """End a job once: an accepted one with its result or error, one not yet accepted with the
        error its enqueue raises. A call nobody rides any longer is closed."""
        if job.expiry is not None:
            job.expiry.cancel()
        job.request = None
        call, job.call = job.call, None
        if call is None:
            self._unsend(job)
        elif not call.riders() and call.reader is not asyncio.current_task():
            self._close(call)
        if job.accepted.done():
            self._settle(job, result, error)
        else:
            self._forget(job)
            job.accepted.set_exception(error)

    def _unsend(self, job: RemoteJob) -> None:
        if job in self._unsent.get(job.task, ()):
            self._unsent[job.task].remove(job)

    def _expire(self, job: RemoteJob) -> None:
        if job.accepted.done():
            self._end(job, error=DeadlineExceeded("Your request ran past its time limit and was stopped."))
        else:
            self._end(job, error=_cluster_error(asyncio.TimeoutError(), job))

    def download_progress(self, task: str) -> tuple[str, int, int] | None:
        """Replicas download in their own processes (progress in their logs): nothing to show here."""
        return None

    def position(self, job: RemoteJob) -> tuple[int, float]:
        return (job.place, job.eta) if job.state == "queued" else (0, 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The same shape as Executor.snapshot(), summed over every replica the board knows."""
        lanes: dict[str, dict[str, Any]] = {}
        for task in TASKS:
            own = [r["lanes"][task] for r in self.replicas if task in r["lanes"]]
            lanes[task] = {
                "queued": sum(lane["queued"] for lane in own),
                "running": sum(lane["running"] for lane in own),
                "batches": sum(lane["batches"] for lane in own),
                "requests": sum(lane["requests"] for lane in own),
                "tokens": sum(lane["tokens"] for lane in own),
                "mean_batch_size": max((lane["mean_batch_size"] for lane in own), default=0.0),
                "latency_p50": max((lane["latency_p50"] for lane in own), default=0.0),
                "latency_p99": max((lane["latency_p99"] for lane in own), default=0.0),
                "replicas": len(own),
            }
        return {**self._snapshot(lanes), "replicas": self.replicas, "resent": dict(self.resent),
                "calls": dict(self.calls)}

    async def refresh(self) -> None:
        """Read the board now (the background refresh does it every BOARD_REFRESH seconds)."""
        self.replicas = await self._board.all.remote()

    # -- internals -----------------------------------------------------------------------------

    def _check_capacity(self, task: str, user_id: int) -> None:
        if self._stopping:
            raise ShuttingDown("The bot is restarting; try again shortly.")
        if len(self._jobs) >= self.settings.queue_size_total:
            raise QueueFull(f"The bot is busy ({len(self._jobs)} requests in progress). Try again soon.")
        self._check_user(user_id)

    def _apply(self, call: Call, message: list[tuple]) -> None:
        for index, kind, *fields in message:
            job = call.jobs[index]
            if job.call is not call:  # ended, or moved to another call
                continue
            if kind in ("queued", "position"):
                job.place, job.eta = int(fields[0]), float(fields[1])
                if job.place == 0 and job.started_at is None:
                    job.started_at = time.monotonic()
                if not job.accepted.done():
                    job.accepted.set_result(None)
            elif kind == "progress":
                job.partial = fields[0]
                job.place = 0
                job.started_at = job.started_at or time.monotonic()
                if job.on_progress is not None and not job.future.done():
                    try:
                        job.on_progress(fields[0])
                    except Exception:
                        log.exception("Progress callback of job %d failed", job.id)
            elif kind == "result":
                result, info = fields
                if job.started_at is None and info.get("compute") is not None:  # for logs and metrics
                    job.started_at = time.monotonic() - info["compute"]
                job.batch_size = info.get("batch_size", 0)
                job.prepared = SimpleNamespace(cost=info.get("tokens"))
                self._end(job, result=result)
            elif kind == "error":
                self._end(job, error=from_wire(fields[0]))

    def _close(self, call: Call) -> None:
        """Cancel the call, on its replica too, and stop reading it."""
        cancel_call(call.response)
        if call.reader is not None and call.reader is not asyncio.current_task():
            call.reader.cancel()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.debug("Could not read the replicas' board", exc_info=True)
            await asyncio.sleep(BOARD_REFRESH)


def call_size(settings: Settings) -> int:
    """The most requests one call carries: a quarter of a replica's queue, so that a burst still
    spreads over the replicas and one call never fills a replica's queue alone."""
    return max(1, settings.queue_size_per_model // CALL_SHARE)


def fast_handle(handle: Any) -> Any:
    """The handle with Serve's router on this event loop: Serve's default gives the router a thread
    and loop of its own, a thread hop per message (BENCHMARKS.md "INFERENCE=ray: the transport
    tuned"). The option is underscored in Serve: a Ray without it gets the plain handle."""
    try:
        if not handle.is_initialized:  # Serve hands out one cached handle per deployment and process
            handle._init(_run_router_in_separate_loop=False)
    except (AttributeError, TypeError, ValueError) as err:
        log.warning("Ray Serve handle options unavailable (%s): using Serve's defaults", err)
    return handle


def cancel_call(response: Any) -> None:
    """Stop a Serve call, on its replica too. `response.cancel()` alone misses one case when the router
    runs on this loop: the replica was chosen (the assignment is done) but the stream was not read
    yet, so the call to the replica is not known to the response."""
    if response is None:
        return
    try:
        response.cancel()
        assigned = getattr(response, "_replica_result_future", None)
        if getattr(response, "_replica_result", True) is None and assigned is not None and assigned.done() \
                and not assigned.cancelled() and assigned.exception() is None:
            assigned.result().cancel()
    except Exception:  # already finished, or the call never reached a replica
        log.debug("Cancelling a Serve call failed", exc_info=True)


def as_actor_calls(handle: Any) -> Any:
    """The same handle (and router), calling as Ray actor calls whatever Serve's defaults say
    (RAY_SERVE_USE_GRPC_BY_DEFAULT or RAY_SERVE_THROUGHPUT_OPTIMIZED would make them gRPC)."""
    try:
        return handle.options(_by_reference=True)
    except (AttributeError, TypeError, ValueError):
        return handle


def over_grpc(handle: Any) -> Any:
    """The same handle (and router), calling over the replicas' gRPC servers instead of as Ray actor
    calls: half the CPU per call. Its one weakness, a dead replica read as "unavailable", is covered
    in RayExecutor.enqueue. Underscored in Serve: a Ray without it keeps actor calls."""
    try:
        return handle.options(_by_reference=False)
    except (AttributeError, TypeError, ValueError) as err:
        log.warning("Ray Serve gRPC calls unavailable (%s): using actor calls", err)
        return handle


def _cluster_error(err: BaseException, job: RemoteJob) -> BotError:
    """A failure of the cluster as one of our typed errors, never a raw Ray exception."""
    from ray.serve.exceptions import BackPressureError

    if isinstance(err, BotError):
        return err
    if isinstance(err, BackPressureError):
        return QueueFull(f"The bot is busy (the /{job.task} servers' queues are full). Try again soon.")
    if isinstance(err, asyncio.TimeoutError):
        return DeadlineExceeded("Your request ran past its time limit: the model server did not answer.")
    return InferenceFailed(f"The model server failed while running your request (error id {job.id}). "
                           "Try again in a few seconds.")
