"""Prometheus metrics and health endpoints, served by aiohttp on the bot's own event loop.

    GET /metrics   Prometheus text format, from a CollectorRegistry of this bot's own
    GET /healthz   200 whenever the event loop answers (liveness: restart the process if not)
    GET /readyz    200 only while connected to the Discord gateway with the executor taking jobs;
                   503 otherwise, with {"ready": false, "reason": "..."} (readiness)

Requests, latencies, batch sizes and tokens are counted by an executor listener as each job ends;
queue depth, model state and device memory are read from executor.snapshot() at scrape time. Every
metric is described in the README's Operations section.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from bot.client import AutoModelBot
    from bot.inference.executor import Job

log = logging.getLogger(__name__)

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def not_ready_reason(bot: AutoModelBot) -> str | None:
    """Why the bot should not get traffic now, or None when it is ready."""
    if bot.is_closed():
        return "the Discord connection is closed"
    executor = bot.executor
    if executor is None or not getattr(executor, "accepting", True):
        return "shutting down: the executor takes no new jobs"
    if not bot.is_ready():
        return "starting: not connected to the Discord gateway yet"
    if not gateway_open(bot):
        return "the Discord gateway connection dropped; reconnecting"
    return None


def gateway_open(bot: Any) -> bool:
    shards = getattr(bot, "shards", None)  # AutoShardedBot: every shard must be up
    if isinstance(shards, dict):
        return bool(shards) and not any(shard.is_closed() for shard in shards.values())
    return bot.ws is not None and bot.ws.open


class Metrics:
    """The bot's metrics in a registry of its own (several bots, as in tests, never collide)."""

    def __init__(self, bot: AutoModelBot) -> None:
        self.bot = bot
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "automodel_requests",
            "Requests that ended, by task and outcome (ok or the error)",
            ["task", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "automodel_queue_wait_seconds",
            "Time from enqueue to the start of compute",
            ["task"],
            buckets=SECONDS,
            registry=r,
        )
        self.compute = Histogram(
            "automodel_compute_seconds",
            "Compute time of the batch each request rode in",
            ["task"],
            buckets=SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "automodel_batch_size",
            "Size of the batch each request rode in",
            ["task"],
            buckets=BATCH_SIZES,
            registry=r,
        )
        self.tokens = Counter(
            "automodel_tokens", "Input tokens of computed requests (rate = tokens/s)", ["task"], registry=r
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        r.register(_StateCollector(bot))

    def observe(self, job: Job, outcome: str) -> None:
        """Executor listener (called on the event loop when a job ends)."""
        self.requests.labels(job.task, outcome).inc()
        if job.started_at is None:  # dropped before it ran: counted above, no timings
            return
        self.queue_wait.labels(job.task).observe(job.started_at - job.enqueued_at)
        if job.finished_at is not None:
            self.compute.labels(job.task).observe(job.finished_at - job.started_at)
        self.batch_size.labels(job.task).observe(job.batch_size)
        self.tokens.labels(job.task).inc(getattr(job.prepared, "cost", 0) or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges read at scrape time: executor.snapshot() and the Discord connection."""

    def __init__(self, bot: AutoModelBot) -> None:
        self.bot = bot

    def collect(self):
        bot = self.bot
        yield _gauge(
            "automodel_ready", "1 when /readyz answers 200", [], [([], not_ready_reason(bot) is None)]
        )
        yield _gauge(
            "automodel_discord_connected",
            "1 while the Discord gateway connection is open",
            [],
            [([], bot.is_ready() and not bot.is_closed() and gateway_open(bot))],
        )
        yield _gauge("automodel_guilds", "Servers the bot is in", [], [([], len(bot.guilds))])
        if math.isfinite(bot.latency):
            yield _gauge(
                "automodel_discord_latency_seconds", "Gateway heartbeat round trip", [], [([], bot.latency)]
            )
        executor = bot.executor
        if executor is None or not hasattr(executor, "snapshot"):
            return
        yield _gauge(
            "automodel_accepting_jobs",
            "1 while the executor takes new jobs (0 once shutting down)",
            [],
            [([], executor.accepting)],
        )
        try:
            snapshot = executor.snapshot()
        except Exception:
            log.exception("executor.snapshot() failed during a metrics scrape")
            return
        lanes = snapshot["lanes"]
        yield _gauge(
            "automodel_queue_depth",
            "Requests waiting in the queue",
            ["task"],
            [([task], lane["queued"]) for task, lane in lanes.items()],
        )
        yield _gauge(
            "automodel_running_requests",
            "Requests in the batch being computed",
            ["task"],
            [([task], lane["running"]) for task, lane in lanes.items()],
        )
        refused = CounterMetricFamily(
            "automodel_refused_requests", "Requests refused before queueing (invalid, too long, busy)", labels=["task", "reason"]
        )
        for (task, reason), count in snapshot.get("refused", {}).items():
            refused.add_metric([task, reason], count)
        yield refused
        models = snapshot["models"]
        yield _gauge(
            "automodel_model_loaded",
            "1 when the task's model is loaded",
            ["task", "checkpoint"],
            [([m["task"], m["checkpoint"]], m["loaded"]) for m in models],
        )
        weights: dict[tuple, int] = {}  # tasks sharing a checkpoint share one copy: count it once
        for m in models:
            if m["loaded"] and m.get("memory_bytes"):
                weights[(m["checkpoint"], tuple(sorted([m["task"], *m.get("shared_with", [])])))] = m[
                    "memory_bytes"
                ]
        yield _gauge(
            "automodel_loaded_weights_bytes",
            "Weights of all loaded models (MEMORY_BUDGET_MB compares to this)",
            [],
            [([], sum(weights.values()))],
        )
        memory = snapshot.get("memory")
        if memory:
            yield _gauge(
                "automodel_device_memory_bytes",
                "GPU memory: allocated and reserved by torch, free and total on the device",
                ["kind"],
                [([kind], value) for kind, value in memory.items()],
            )


def _gauge(name: str, documentation: str, labels: list[str], samples: list[tuple[list[str], float]]):
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, float(value))
    return family


class MetricsServer:
    """aiohttp server for /metrics, /healthz and /readyz, started and stopped by the bot."""

    def __init__(self, bot: AutoModelBot, host: str, port: int) -> None:
        self.bot = bot
        self.host, self.port = host, port
        self.metrics = Metrics(bot)
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        from bot.inference.errors import BotError

        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as err:
            await runner.cleanup()
            raise BotError(
                f"METRICS_PORT={self.port}: cannot listen on {self.host}:{self.port} ({err.strerror or err}). "
                "Pick another port or free this one."
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]  # the real one when port 0 asked the OS to pick
        log.info("Metrics on http://%s:%d/metrics; health on /healthz and /readyz", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = not_ready_reason(self.bot)
        if reason is not None:
            return web.json_response({"ready": False, "reason": reason}, status=503)
        return web.json_response({"ready": True})
