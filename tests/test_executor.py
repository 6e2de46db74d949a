"""The shared executor on real tiny models: batching, fairness, backpressure, deadlines,
cancellation, OOM splitting and exactly-once completion."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable

import pytest

from bot.inference import executor as executor_module
from bot.inference.errors import (
    BotError,
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    InputError,
    ModelUnavailable,
    QueueFull,
    ShuttingDown,
    UserBusy,
)
from bot.inference.executor import Executor, cut_batch
from bot.inference.local import LocalBackend
from bot.inference.tasks.base import Prepared
from bot.inference.tasks.generate import GenerateRequest
from bot.inference.tasks.sentiment import SentimentRequest
from tests.faults import InjectingBackend

TEXTS = ["short", "a rather longer text about the weather in Berlin today", "mid sized text", "x " * 60]


@pytest.fixture(scope="module")
def real_backend(tiny_settings) -> LocalBackend:
    backend = LocalBackend(tiny_settings)
    for task in ("sentiment", "generate"):
        backend.warm_up(task)
    return backend


def make_settings(tiny_settings, **changes):
    return dataclasses.replace(tiny_settings, **changes)


async def started(settings, backend) -> Executor:
    executor = Executor(settings, backend)
    await executor.start()
    return executor


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll the executor's state until `predicate` holds; fail, saying what was awaited, after
    `timeout` seconds."""
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.001)


async def test_concurrent_requests_are_batched_and_match_single_results(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    executor = await started(make_settings(tiny_settings, max_queued_per_user=100), backend)
    try:
        backend.gate.clear()  # let the queue fill so one batch can take many
        texts = [TEXTS[i % len(TEXTS)] for i in range(24)]
        jobs = [await executor.enqueue("sentiment", SentimentRequest(t), user_id=i % 5) for i, t in enumerate(texts)]
        backend.gate.set()
        results = await asyncio.gather(*(executor.wait(job) for job in jobs))
        assert len(results) == len(texts)
        assert max(size for _, size in backend.batches) > 1
        single = await executor.submit("sentiment", SentimentRequest(texts[3]))
        assert single.scores == pytest.approx(results[3].scores, abs=1e-5)
        snapshot = executor.snapshot()
        assert snapshot["lanes"]["sentiment"]["requests"] == len(texts) + 1
        assert snapshot["outcomes"][("sentiment", "ok")] == len(texts) + 1
    finally:
        await executor.shutdown()


async def test_max_batch_size_one_turns_batching_off(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    executor = await started(make_settings(tiny_settings, max_batch_size=1, max_queued_per_user=100), backend)
    try:
        backend.gate.clear()
        jobs = [await executor.enqueue("sentiment", SentimentRequest(t)) for t in TEXTS * 2]
        backend.gate.set()
        await asyncio.gather(*(executor.wait(j) for j in jobs))
        assert {size for _, size in backend.batches} == {1}
    finally:
        await executor.shutdown()


def job_of_length(n: int) -> executor_module.Job:
    prepared = Prepared(None, [{"input_ids": [0] * n}], sort_key=n)
    return executor_module.Job(0, "t", 0, prepared, None, 0.0, 0.0)


def test_cut_batch_keeps_the_anchor_and_the_token_budget():
    window = [job_of_length(n) for n in (400, 50, 52, 51, 380, 53, 390, 49)]
    batch = cut_batch(window, max_size=32, budget=512)
    assert batch == [window[0]]  # the anchor (served least recently) always runs; two long ones exceed 512
    short = cut_batch(window[1:], max_size=32, budget=512)
    assert sorted(j.prepared.sort_key for j in short) == [49, 50, 51, 52, 53]  # similar lengths together
    assert len(cut_batch(window[1:], max_size=2, budget=10_000)) == 2
    # Short and long requests are not padded together: padding is computed, and wasted.
    mixed = cut_batch([job_of_length(10), job_of_length(12), job_of_length(400)], max_size=32, budget=100_000)
    assert sorted(j.prepared.sort_key for j in mixed) == [10, 12]


def test_cut_batch_same_width_takes_only_rows_padded_like_the_anchor():
    window = [job_of_length(n) for n in (10, 12, 15, 17, 9, 8)]  # padded widths 16 16 16 24 16 8
    batch = cut_batch(window, max_size=32, budget=10_000, max_padding=1.0, same_width=True)
    assert sorted(j.prepared.sort_key for j in batch) == [9, 10, 12, 15]
    assert len(cut_batch(window, max_size=32, budget=10_000, max_padding=1.0)) == 6  # fp32: padding allowed


def test_cut_batch_packed_takes_any_lengths_and_counts_real_tokens():
    """A packed model computes no padding (attention.py): short and long rows go together, and the
    budget is the rows' real tokens."""
    window = [job_of_length(10), job_of_length(12), job_of_length(400)]
    assert len(cut_batch(window, max_size=32, budget=422, packed=True)) == 3  # padded: 3 × 400 tokens
    assert sorted(j.prepared.sort_key for j in cut_batch(window, max_size=32, budget=421, packed=True)) == [10, 12]
    assert len(cut_batch(window, max_size=2, budget=10_000, packed=True)) == 2


def test_a_returning_user_keeps_their_place_in_line():
    """Line order is when a user's next job joined it: a user served earlier who asks again is not
    put behind everyone who arrived after them (before: behind every newcomer, the p99 tail)."""
    lane = executor_module.Lane("t")
    returning, newcomer, flooding = job_of_length(5), job_of_length(5), job_of_length(5)
    returning.user_id, returning.enqueued_at = 1, 11.0
    newcomer.user_id, newcomer.enqueued_at = 2, 12.0
    lane.last_served[1] = 10.0
    lane.push(newcomer)
    lane.push(returning)
    assert lane.service_order() == [1, 2]
    # A user with jobs queued since t=0 but served at t=13 counts from 13: after both of them.
    flooding.user_id, flooding.enqueued_at = 3, 0.0
    lane.last_served[3] = 13.0
    lane.push(flooding)
    assert lane.service_order() == [1, 2, 3]


async def test_a_flooding_user_does_not_push_others_back(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    settings = make_settings(tiny_settings, max_batch_size=1, max_queued_per_user=20)
    executor = await started(settings, backend)
    try:
        backend.gate.clear()
        order: list[int] = []
        flood = [await executor.enqueue("sentiment", SentimentRequest(f"flood {i}"), user_id=1) for i in range(10)]
        other = await executor.enqueue("sentiment", SentimentRequest("my turn"), user_id=2)
        for job in [*flood, other]:
            job.future.add_done_callback(lambda _, uid=job.user_id, jid=job.id: order.append(jid))
        assert executor.position(other)[0] <= 2
        backend.gate.set()
        await asyncio.gather(*(executor.wait(j) for j in [*flood, other]))
        assert order.index(other.id) <= 2  # served within the first round-robin turns, not 11th
    finally:
        await executor.shutdown()


async def test_queue_full_and_user_cap_fail_at_once(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    settings = make_settings(tiny_settings, queue_size_per_model=3, max_queued_per_user=2, max_batch_size=1)
    executor = await started(settings, backend)
    try:
        backend.gate.clear()
        first = await executor.enqueue("sentiment", SentimentRequest("one"), user_id=1)
        await wait_until(lambda: first.state == "running", "the worker to take `first` (it blocks on the gate)")
        jobs = [await executor.enqueue("sentiment", SentimentRequest("q"), user_id=u) for u in (2, 3, 4)]
        with pytest.raises(QueueFull, match="busy") as full:
            await executor.enqueue("sentiment", SentimentRequest("q"), user_id=5)
        assert full.value.retry_after >= 1
        await executor.enqueue("generate", GenerateRequest("hi", 2), user_id=1)
        with pytest.raises(UserBusy, match="already have 2"):
            await executor.enqueue("ner", type("R", (), {"text": "x"})(), user_id=1)
        # Accepted once already (a Ray call sent again after another's Cancel): not refused again.
        again = [await executor.enqueue("sentiment", SentimentRequest("again"), user_id=u, admitted=True) for u in (5, 1)]
        backend.gate.set()
        await asyncio.gather(*(executor.wait(j) for j in [first, *jobs, *again]))
    finally:
        await executor.shutdown()


async def test_expired_and_cancelled_jobs_are_dropped_not_computed(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    executor = await started(make_settings(tiny_settings, max_batch_size=1, max_queued_per_user=10), backend)
    try:
        backend.gate.clear()
        blocker = await executor.enqueue("sentiment", SentimentRequest("blocker"))
        await wait_until(lambda: blocker.state == "running", "the worker to take the blocker")
        expiring = await executor.enqueue("sentiment", SentimentRequest("expires"), timeout=0.01)
        cancelled = await executor.enqueue("sentiment", SentimentRequest("cancelled"))
        kept = await executor.enqueue("sentiment", SentimentRequest("kept"))
        place, eta = executor.position(kept)
        assert place == 3 and eta >= 0
        assert executor.cancel(cancelled.id)
        with pytest.raises(Cancelled):
            await executor.wait(cancelled)  # ends at once, before the gate opens
        await wait_until(lambda: time.monotonic() > expiring.deadline, "the expiring request's deadline")
        backend.gate.set()
        with pytest.raises(DeadlineExceeded, match="waited too long"):
            await executor.wait(expiring)
        await executor.wait(blocker)
        await executor.wait(kept)
        assert len(backend.batches) == 2  # blocker and kept only
    finally:
        await executor.shutdown()


async def test_generation_streams_and_stops_when_cancelled(tiny_settings, real_backend, monkeypatch):
    executor = await started(make_settings(tiny_settings, stream_interval=0.0), real_backend)
    try:
        partials: list[str] = []
        job = await executor.enqueue(
            "generate", GenerateRequest("Once upon a time", 200, seed=3), on_progress=partials.append
        )
        await wait_until(lambda: len(partials) >= 3, "three streamed partial results", timeout=30)
        assert executor.cancel(job.id)
        with pytest.raises(Cancelled) as stopped:
            await executor.wait(job)
        partial = stopped.value.partial
        assert partial.finish_reason == "cancelled" and partial.tokens < 200
        assert job.partial is not None
    finally:
        await executor.shutdown()


async def test_out_of_memory_splits_the_batch(tiny_settings, real_backend):
    poison = "poison"

    def oom(task, batch):
        if len(batch) > 2 or any(p.request.text == poison for p in batch):
            return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    backend = InjectingBackend(real_backend, fault=oom)
    executor = await started(make_settings(tiny_settings, max_queued_per_user=100), backend)
    try:
        backend.gate.clear()
        texts = [f"text {i}" for i in range(7)] + [poison]
        jobs = [await executor.enqueue("sentiment", SentimentRequest(t)) for t in texts]
        backend.gate.set()
        outcomes = await asyncio.gather(*(executor.wait(j) for j in jobs), return_exceptions=True)
        assert [isinstance(o, InferenceFailed) for o in outcomes] == [False] * 7 + [True]
        assert "memory" in str(outcomes[-1])
        sizes = [size for _, size in backend.batches]
        assert max(sizes) > 2 and sizes.count(1) >= 2  # split down to single requests
    finally:
        await executor.shutdown()


async def test_one_bad_request_fails_alone(tiny_settings, real_backend):
    def broken(task, batch):
        return ValueError("boom") if any(p.request.text == "bad" for p in batch) else None

    backend = InjectingBackend(real_backend, fault=broken)
    executor = await started(make_settings(tiny_settings, max_queued_per_user=100), backend)
    try:
        backend.gate.clear()
        jobs = [await executor.enqueue("sentiment", SentimentRequest(t)) for t in ("good", "bad", "fine")]
        backend.gate.set()
        outcomes = await asyncio.gather(*(executor.wait(j) for j in jobs), return_exceptions=True)
        assert isinstance(outcomes[1], InferenceFailed) and "error id" in str(outcomes[1])
        assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)
    finally:
        await executor.shutdown()


async def test_unavailable_model_fails_only_its_task(tiny_settings, real_backend):
    settings = make_settings(tiny_settings, checkpoints=dict(tiny_settings.checkpoints, ner="/nonexistent/model"))
    executor = await started(settings, LocalBackend(settings))
    try:
        with pytest.raises(ModelUnavailable) as err:
            await executor.submit("ner", type("R", (), {"text": "Berlin"})())
        assert "/nonexistent" not in str(err.value) and "MODEL_NER" in err.value.detail
        assert (await executor.submit("sentiment", SentimentRequest("still works"))).label
    finally:
        await executor.shutdown()


async def test_shutdown_resolves_everything_queued(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    executor = await started(make_settings(tiny_settings, max_batch_size=1, max_queued_per_user=100), backend)
    backend.gate.clear()
    jobs = [await executor.enqueue("sentiment", SentimentRequest(f"t{i}")) for i in range(6)]
    await wait_until(lambda: jobs[0].state == "running", "the worker to take the first request")
    backend.gate.set()
    await executor.shutdown()
    outcomes = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
    assert all(job.future.done() for job in jobs)
    assert not isinstance(outcomes[0], BaseException), outcomes[0]  # the running one finished
    assert sum(isinstance(o, ShuttingDown) for o in outcomes) >= 5
    with pytest.raises(ShuttingDown):
        await executor.enqueue("sentiment", SentimentRequest("late"))


async def test_memory_budget_unloads_the_least_recently_used_idle_model(tiny_settings):
    probe = LocalBackend(tiny_settings)
    size = probe.acquire("sentiment").nbytes
    backend = LocalBackend(make_settings(tiny_settings, memory_budget_mb=1.5 * size / 2**20))
    backend.warm_up("sentiment")
    assert backend.is_loaded("sentiment")
    backend.warm_up("ask")
    assert backend.is_loaded("ask") and not backend.is_loaded("sentiment")


async def test_a_thousand_requests_with_faults_all_end_exactly_once(tiny_settings, real_backend):
    rng = random.Random(7)

    def chaos(task, batch):
        roll = rng.random()
        if roll < 0.1:
            return RuntimeError("CUDA out of memory")
        if roll < 0.15:
            return ValueError("injected failure")
        return None

    backend = InjectingBackend(real_backend, fault=chaos)
    settings = make_settings(tiny_settings, queue_size_per_model=40, queue_size_total=60, max_queued_per_user=1000)
    executor = await started(settings, backend)
    outcomes: Counter[str] = Counter()
    jobs = []
    try:
        for i in range(1000):
            request = SentimentRequest("" if i % 97 == 0 else f"message {i} " * rng.randint(1, 20))
            try:
                job = await executor.enqueue("sentiment", request, user_id=i % 13, timeout=rng.choice([0.001, 30.0, 30.0]))
            except BotError as err:
                outcomes[type(err).__name__] += 1
                await asyncio.sleep(0.002)  # let the worker drain a little
                continue
            jobs.append(job)
            if rng.random() < 0.05:
                executor.cancel(job.id)
        results = await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs), return_exceptions=True), 120)
    finally:
        await executor.shutdown()
    for result in results:
        outcomes["ok" if not isinstance(result, BaseException) else type(result).__name__] += 1
    assert sum(outcomes.values()) == 1000
    assert all(job.future.done() for job in jobs)
    assert outcomes["ok"] > 0 and 1 <= outcomes["InputError"] <= 11  # an empty text meets a full queue first
    assert set(outcomes) <= {"ok", "InputError", "InputTooLong", "QueueFull", "DeadlineExceeded", "Cancelled", "InferenceFailed"}
    recorded = Counter()
    for (_, outcome), n in executor.outcomes.items():
        recorded[outcome] += n
    assert sum(recorded.values()) == len(jobs)  # the executor counted each accepted job once
    assert not executor._jobs


async def test_invalid_input_is_refused_before_queueing(tiny_settings, real_backend):
    executor = await started(tiny_settings, real_backend)
    try:
        with pytest.raises(InputError, match="empty"):
            await executor.enqueue("sentiment", SentimentRequest("   "))
        with pytest.raises(InputError, match="Unknown task"):
            await executor.enqueue("summarize", SentimentRequest("x"))
        assert executor.snapshot()["queued"] == 0
    finally:
        await executor.shutdown()


async def test_cancelling_a_running_job_ends_it_as_cancelled(tiny_settings, real_backend):
    backend = InjectingBackend(real_backend)
    executor = await started(tiny_settings, backend)
    try:
        backend.gate.clear()
        job = await executor.enqueue("sentiment", SentimentRequest("already running"))
        await wait_until(lambda: job.state == "running", "the worker to take the job")
        assert executor.cancel(job.id)
        backend.gate.set()
        with pytest.raises(Cancelled) as cancelled:
            await executor.wait(job)
        assert cancelled.value.partial is not None  # computed, but the user asked not to see it
    finally:
        await executor.shutdown()


async def test_refused_requests_are_counted_by_reason(tiny_settings, real_backend):
    executor = await started(tiny_settings, real_backend)
    try:
        with pytest.raises(InputError):
            await executor.enqueue("sentiment", SentimentRequest(""))
        assert executor.snapshot()["refused"] == {("sentiment", "InputError"): 1}
        assert executor.snapshot()["outcomes"] == {}
    finally:
        await executor.shutdown()


def test_a_failed_checkpoint_swap_leaves_the_task_as_it_was(tiny_settings, tiny_checkpoints, peaked_checkpoints):
    backend = LocalBackend(tiny_settings)
    before = backend.checkpoints["sentiment"]
    with pytest.raises(ModelUnavailable):
        backend.set_checkpoint("sentiment", "/nonexistent/checkpoint")
    with pytest.raises(ModelUnavailable) as refused:
        backend.set_checkpoint("sentiment", str(tiny_checkpoints["ask"]))  # no classification head
    assert "is a DistilBertForQuestionAnswering checkpoint" in refused.value.detail
    assert backend.checkpoints["sentiment"] == before
    backend.set_checkpoint("sentiment", str(peaked_checkpoints["sentiment"]))  # loads first, then switches
    assert backend.checkpoints["sentiment"] == str(peaked_checkpoints["sentiment"]) and backend.is_loaded("sentiment")


def test_torch_threads_setting_limits_torch(tiny_settings):
    import torch

    before = torch.get_num_threads()
    try:
        LocalBackend(make_settings(tiny_settings, torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
