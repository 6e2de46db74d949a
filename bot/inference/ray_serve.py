"""INFERENCE=ray, the replica side: each model group runs as a Ray Serve deployment whose replicas
run the same Executor + LocalBackend as the local path, so batching, fairness, deadlines and
cancellation behave the same; the bot side (bot/inference/ray_client.py) only forwards.

A model group is the tasks that share a checkpoint (/mask and /embed share bert-base-uncased), so
weights are loaded once per replica. One streaming call, `ModelGroup.run`, carries one request or
several (the bot sends the requests of a task that arrive in one turn of its loop together: a call
costs about 2 ms of CPU, a request in a call far less). Each message of the stream is a list of
events, plain tuples that start with the request's index in the call:

    (i, "queued", place, eta)       accepted; then, while it waits, (i, "position", place, eta)
    (i, "progress", partial)        streamed /generate text
    (i, "result", result, info)     the end: info holds batch size, tokens, wait and compute times
    (i, "error", wire)              the end: a BotError as errors.to_wire data

The first message answers every request of the call ("queued" or "error"); events that happen
together (the rows of one batch ending) travel as one message. Cancelling the call
(`response.cancel()`) cancels its jobs in the replica's executor. Replicas also
report their state (node, device, loaded models, queues) every REPORT_INTERVAL seconds to one
named actor, the board, which /status and /models read: a handle call reaches one replica only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from typing import Any

from bot.inference.errors import BotError, InferenceFailed, ModelUnavailable, to_wire
from bot.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "automodel-bot"
BOARD_NAME = "automodel-bot-board"
NAMESPACE = "automodel-bot"
POSITION_INTERVAL = 1.0  # seconds between place-in-line updates of a waiting request
# After a batch, wait at least this long (s) for its users' next requests: they come back over two
# handle trips and the bot's loop, 10-20 ms, longer than SETTLE of a 250 ms batch (BENCHMARKS.md).
RAY_SETTLE_FLOOR = 0.025
RAY_WORKER_NICENESS = 0  # of a local Ray's replicas (Ray's default 15); see connect()
REPORT_INTERVAL = 1.0  # seconds between a replica's reports to the board
STALE_AFTER = 10.0  # a replica silent this long (dead, or being replaced) leaves the board
CONNECT_TIMEOUT = 60.0  # seconds ray.init may take to join a cluster

# Replicas run our code on Serve's main loop instead of a loop of its own (Serve's default): one
# thread hop fewer per message, and our executor already runs models in threads of its own. Serve
# reads the variable when the replica imports it, so it travels in the replicas' runtime_env; an
# operator's value wins. (The bot's side, the router on the caller's loop, is a handle option:
# ray_client.fast_handle.) BENCHMARKS.md "INFERENCE=ray: the transport tuned" has the figures.
SERVE_ENV = {name: os.environ.get(name, "0") for name in ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",)}


def model_groups(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Deployment name → the tasks it serves: tasks naming the same checkpoint share one."""
    by_checkpoint: dict[str, list[str]] = {}
    for task, checkpoint in settings.checkpoints.items():
        by_checkpoint.setdefault(checkpoint, []).append(task)
    return {"+".join(tasks): tuple(tasks) for tasks in by_checkpoint.values()}


def deployment_of(settings: Settings) -> dict[str, str]:
    """Task → the deployment that serves it."""
    return {task: name for name, tasks in model_groups(settings).items() for task in tasks}


def replica_settings(settings: Settings) -> Settings:
    """What a replica needs: no Discord token or log salt ever leaves the bot process."""
    return dataclasses.replace(settings, discord_token=None, log_user_salt="", inference="local", preload=False)


class ModelGroup:
    """A Serve deployment class: one replica loads its group's model(s) in __init__ and serves
    them with its own Executor (its own fair queue, token-budgeted batches, deadlines)."""

    def __init__(self, settings: Settings, tasks: tuple[str, ...]) -> None:
        import torch

        from bot.inference.executor import Executor
        from bot.inference.local import LocalBackend

        self.settings = settings
        self.tasks = tasks
        # Ray sets OMP_NUM_THREADS to the CPUs an actor reserves (1 when it reserves none or a
        # fraction), which left torch one thread: measured 0.6-0.7x the local path's throughput on
        # the same two cores. Use TORCH_THREADS, else the CPUs reserved, else every core.
        cpus = max(settings.ray_cpus.get(t, 1.0) for t in tasks)
        torch.set_num_threads(settings.torch_threads or (int(cpus) if cpus >= 1 else os.cpu_count() or 1))
        # Loads in the constructor, on Serve's main loop: Serve's health checks start once it returns,
        # and a replica has nothing to serve before its models are loaded anyway.
        self.backend = LocalBackend(settings)
        log.info("%s", self.backend.dtype_reason)  # the replica's CPU decides DTYPE=auto here, not the bot's
        for task in tasks:
            self.backend.warm_up(task)  # the replica is ready when its models are
        self.executor = Executor(settings, self.backend, settle_floor=RAY_SETTLE_FLOOR)
        self._started: asyncio.Task | None = None

    async def _start(self) -> None:
        if self._started is None:  # on the replica's event loop, the first time it is needed
            self._started = asyncio.ensure_future(self._boot())
        await asyncio.shield(self._started)

    async def _boot(self) -> None:
        await self.executor.start()
        asyncio.ensure_future(self._report_forever())

    async def check_health(self) -> None:
        """Serve calls this periodically; starting here also starts the board reports."""
        await self._start()

    async def run(self, task: str, requests: list[tuple[Any, int, float, bool]]):
        """Serve one call: (request, user_id, seconds left, admitted) per request (admitted: sent again
        after another request's Cancel; see Executor.enqueue); yields lists of events."""
        await self._start()
        if task not in self.tasks:
            yield [(i, "error", to_wire(ModelUnavailable(f"The /{task} model is not served here.")))
                   for i in range(len(requests))]
            return
        events: list[tuple] = []
        ready = asyncio.Event()

        def post(event: tuple) -> None:
            events.append(event)
            ready.set()

        jobs: dict[int, Any] = {}  # index → the replica's job, for the requests accepted
        refused: dict[int, tuple] = {}

        async def accept(i: int, request: Any, user_id: int, timeout: float, admitted: bool) -> None:
            try:
                jobs[i] = await self.executor.enqueue(task, request, user_id=user_id, timeout=timeout, admitted=admitted,
                                                      on_progress=lambda partial: post((i, "progress", partial)))
            except BotError as err:
                refused[i] = (i, "error", to_wire(err))
                return
            except Exception:  # a fault preparing one request fails that one, not the call
                log.exception("Preparing a %s request failed", task)
                refused[i] = (i, "error", to_wire(InferenceFailed("The model server could not read this request. "
                                                                  "Try again or change the input.")))
                return
            jobs[i].future.add_done_callback(lambda _: post((i, "end")))

        try:
            # Together, so the replica's worker waits for all of them (they count as being prepared).
            await asyncio.gather(*(accept(i, *request) for i, request in enumerate(requests)))
            yield [refused[i] if i in refused else (i, "queued", *self.executor.position(jobs[i]))
                   for i in range(len(requests))]
            ended = 0  # counted from the "end" events: a future done may not have posted its own yet
            while ended < len(jobs):
                if not events:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(ready.wait(), POSITION_INTERVAL)
                await asyncio.sleep(0)  # the other rows of a batch end in the same turn: one message
                ready.clear()
                message = [_ended(event[0], jobs[event[0]]) if event[1] == "end" else event for event in events]
                events.clear()
                ended += sum(event[1] in ("result", "error") for event in message)
                if not message:  # a quiet second: where each waiting request stands
                    message = [(i, "position", *self.executor.position(job)) for i, job in jobs.items()
                               if not job.future.done()]
                yield message
        finally:  # the bot cancelled the call (or it failed): stop the work here; no-op for jobs ended
            for job in jobs.values():
                self.executor.cancel(job.id)

    async def ping(self) -> None:
        """A call that does no work: the transport's own cost (the bench measures it)."""

    async def set_checkpoint(self, task: str, checkpoint: str) -> None:
        await asyncio.to_thread(self.backend.set_checkpoint, task, checkpoint)

    def state(self) -> dict[str, Any]:
        import ray
        from ray import serve

        context = serve.get_replica_context()
        snapshot = self.executor.snapshot()
        return {
            "deployment": context.deployment,
            "replica": context.replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id()[:12],
            "pid": os.getpid(),
            "tasks": list(self.tasks),
            "models": [row for row in snapshot["models"] if row["task"] in self.tasks],
            "lanes": {task: lane for task, lane in snapshot["lanes"].items() if task in self.tasks},
            "outcomes": [[list(key), count] for key, count in snapshot["outcomes"].items()],
            "memory": snapshot["memory"],
            "serve_env": {name: os.environ.get(name) for name in SERVE_ENV},  # what the replica runs with
            "time": time.time(),
        }

    def __del__(self) -> None:
        """Serve calls this when it retires the replica (scale-down, rolling update): leave the board."""
        try:
            import ray
            from ray import serve

            board = ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
            board.remove.remote(serve.get_replica_context().replica_id.unique_id)
        except Exception:  # best effort: a silent replica leaves the board after STALE_AFTER anyway
            pass

    async def _report_forever(self) -> None:
        import ray

        board = None
        while True:
            try:
                # A GCS call: off the loop, which serves requests (user code runs on Serve's main loop).
                board = board or await asyncio.to_thread(ray.get_actor, BOARD_NAME, namespace=NAMESPACE)
                await board.report.remote(self.state())
            except Exception:  # no board yet (the bot creates it), or it is being replaced
                board = None
            await asyncio.sleep(REPORT_INTERVAL)


def _ended(i: int, job) -> tuple:
    """The last event of a job whose future is done."""
    error = job.future.exception()
    if error is not None:
        return (i, "error", to_wire(error if isinstance(error, BotError) else BotError(str(error))))
    return (i, "result", job.future.result(), _timings(job))


def _timings(job) -> dict[str, Any]:
    return {
        "batch_size": job.batch_size,
        "tokens": job.prepared.cost,
        "wait": (job.started_at - job.enqueued_at) if job.started_at else None,
        "compute": (job.finished_at - job.started_at) if job.started_at and job.finished_at else None,
    }


class Board:
    """A named Ray actor: the latest state each replica reported, for /status and /models."""

    def __init__(self) -> None:
        self.states: dict[str, dict] = {}
        self.removed: set[str] = set()  # retired replicas (a last report may still be on its way)

    def report(self, state: dict) -> None:
        if state["replica"] not in self.removed:
            self.states[state["replica"]] = state

    def remove(self, replica: str) -> None:
        self.removed.add(replica)
        self.states.pop(replica, None)

    def all(self) -> list[dict]:
        now = time.time()
        self.states = {k: v for k, v in self.states.items() if now - v["time"] < STALE_AFTER}
        return list(self.states.values())


def applications(settings: Settings, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Serve application name → application: one per model group (those serving a task in `only`,
    when given), so /admin reload updates one group's replicas only."""
    return {app_name(name): group_application(settings, name, tasks) for name, tasks in model_groups(settings).items()
            if only is None or set(tasks) & set(only)}


def group_application(settings: Settings, name: str, tasks: tuple[str, ...]) -> Any:
    """One model group's deployment, sized from the RAY_* settings of its tasks."""
    from ray import serve

    low = max(settings.ray_replicas.get(t, (1, 1))[0] for t in tasks)
    high = max(settings.ray_replicas.get(t, (1, 1))[1] for t in tasks)
    options: dict[str, Any] = {
        "name": name,
        # Requests must reach the replica's own fair queue (which says "busy" when full), so
        # Serve's per-replica limit sits above it. Serve's router queue only holds a burst while
        # it picks replicas; a full one (BackPressureError) is our busy reply too. Sized like the
        # bot's total queue: 4, as first tried, refused bursts of 40 requests.
        "max_ongoing_requests": settings.queue_size_per_model + 64,
        "max_queued_requests": settings.queue_size_total,
        "ray_actor_options": {
            "num_cpus": max(settings.ray_cpus.get(t, 1.0) for t in tasks),
            "num_gpus": max(settings.ray_gpus.get(t, 0.0) for t in tasks),
            "runtime_env": {"env_vars": dict(SERVE_ENV)},
        },
        # The bot logs every request itself: Serve's line per call is noise in the replica's log.
        "logging_config": {"enable_access_log": False},
        "health_check_period_s": 2,
        "graceful_shutdown_timeout_s": settings.shutdown_grace,
    }
    if high > low:
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         # Serve counts calls, not requests: a lone request is a call,
                                         # and so is a burst of up to a quarter of the queue
                                         # (ray_client.CALL_SHARE). Four calls lie between four
                                         # requests and a full queue.
                                         "target_ongoing_requests": 4}
    else:
        options["num_replicas"] = low
    return serve.deployment(ModelGroup).options(**options).bind(replica_settings(settings), tasks)


def app_name(deployment: str) -> str:
    return f"{APP_NAME}.{deployment}"


def connect(settings: Settings) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray when it is empty; a cluster that
    cannot be reached is one ModelUnavailable line, not a hang."""
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.WARNING}
    if settings.ray_address:
        options["address"] = settings.ray_address
    where = f"RAY_ADDRESS={settings.ray_address}" if settings.ray_address else "a local Ray"
    if not settings.ray_address:
        # Ray starts workers at nice 15; here the replicas share the cores with this bot, and at 15
        # they lost to it: the bench's ray / local at 32 clients 0.83-0.94, at 0 0.89-1.06.
        options["_system_config"] = {"worker_niceness": RAY_WORKER_NICENESS}
        # Started from this thread, which must outlive it: Ray ties the processes it starts to the
        # starting thread (a thread that ends takes the local cluster with it).
        try:
            ray.init(**options)
        except Exception as err:
            raise ModelUnavailable("The model cluster could not start.",
                                   detail=f"Could not start a local Ray: {_first_line(err)}") from err
        return
    try:
        _check_reachable(settings.ray_address)
        # ray.init retries an unreachable cluster for minutes: bounded here, in a daemon thread.
        outcome: list[BaseException | None] = []
        thread = threading.Thread(target=lambda: outcome.append(_init(ray, options)), daemon=True)
        thread.start()
        thread.join(CONNECT_TIMEOUT)
        if not outcome:
            raise TimeoutError(f"no answer within {CONNECT_TIMEOUT:.0f}s")
        if outcome[0] is not None:
            raise outcome[0]
    except Exception as err:
        raise ModelUnavailable("The model cluster is unreachable.",
                               detail=f"Could not connect to {where}: {_first_line(err)}. Check that the "
                               "cluster is up (`ray status` there) and the address is right.") from err


def _init(ray, options: dict[str, Any]) -> BaseException | None:
    try:
        ray.init(**options)
        return None
    except BaseException as err:  # handed to the caller's thread
        return err


def _check_reachable(address: str | None) -> None:
    """A host:port address must accept a TCP connection (the GCS) within a few seconds."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
        pass


def deploy(settings: Settings, timeout: float = 300.0, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Deploy or update every model group, wait until each is running, and return where each
    replica landed. A replica the cluster cannot place (too few CPUs or GPUs) or one that fails to
    start is a ModelUnavailable naming the deployment, after `timeout` at the latest."""
    from ray import serve

    connect(settings)
    serve.start(proxy_location="Disabled")  # the bot calls handles; no HTTP proxy
    ensure_board()
    run_apps(applications(settings, only), timeout)
    return placement()


def run_apps(apps: dict[str, Any], timeout: float) -> None:
    """Deploy or update these Serve applications (an update replaces replicas gradually, the old
    ones serving until the new are ready) and wait, bounded, until each runs."""
    from ray import serve

    serve.run_many([serve.RunTarget(app, name=name, route_prefix=None) for name, app in apps.items()],
                   wait_for_applications_running=False)
    wait_running(list(apps), timeout)


def wait_running(names: list[str], timeout: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    ends = time.monotonic() + timeout
    while True:
        status = serve.status().applications
        pending = []
        for name in names:
            app = status.get(name)
            if app is None or app.status != ApplicationStatus.RUNNING:
                if app is not None and app.status == ApplicationStatus.DEPLOY_FAILED:
                    raise ModelUnavailable("A model could not be deployed.",
                                           detail=f"{name} failed to deploy: {_first_line(app.message)}")
                pending.append((name, app))
        if not pending:
            return
        if time.monotonic() > ends:
            name, app = pending[0]
            if app is None:  # nothing deployed under that name: bots started before (or without) `serve`
                raise ModelUnavailable(
                    "A model is not deployed on the cluster.",
                    detail=f"{name} is not deployed after {timeout:.0f}s. `automodel-bot serve` deploys the models "
                    "(with the same MODEL_* settings as the bot): run it, or let it finish, then start the bot again.",
                )
            states = {d: dict(s.replica_states) for d, s in app.deployments.items()}
            raise ModelUnavailable(
                "A model could not be placed on the cluster.",
                detail=f"{name} is not running after {timeout:.0f}s (replicas: {states}). The cluster may lack the "
                "CPUs or GPUs asked for (RAY_REPLICAS, RAY_CPUS_PER_REPLICA, RAY_GPUS_PER_REPLICA): `ray status` "
                "shows what is free.",
            )
        time.sleep(0.5)


def ensure_board():
    """The board actor (created once per cluster, by whoever deploys or connects first)."""
    import ray

    actor = ray.remote(Board).options(name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True,
                                      lifetime="detached", num_cpus=0)
    return actor.remote()


def placement() -> list[dict[str, Any]]:
    """Each replica's deployment, node, device and loaded models, from the board (waits a report
    interval or two for fresh replicas to report)."""
    import ray

    board = ensure_board()
    time.sleep(2 * REPORT_INTERVAL)
    return sorted(ray.get(board.all.remote()), key=lambda r: (r["deployment"], r["replica"]))


def _first_line(err: object) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300].rstrip(".") if text else type(err).__name__
