"""Model loading under concurrency (#10): cold starts, failed loads, a load in progress, memory-budget
unloading and /admin reload during traffic. transformers' from_pretrained is not thread-safe
(bot/inference/loading.py says why); every answer here must still equal the request's answer alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import transformers
from transformers import PreTrainedModel

from bot.inference import loading
from bot.inference.errors import ModelUnavailable
from bot.inference.executor import Executor
from bot.inference.local import LocalBackend
from tests.answers import difference, first_requests, run

ROOT = Path(__file__).resolve().parent.parent
COLD_STARTS = 3


def cold_start(settings) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEVICE": "cpu", "PRELOAD": "0"}
    env.update({f"MODEL_{task.upper()}": checkpoint for task, checkpoint in settings.checkpoints.items()})
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cold_start.py")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("attempt", range(COLD_STARTS))
def test_cold_start_with_all_seven_commands_at_once(peaked_settings, attempt):
    """A fresh process, nothing loaded, the first request of every task at the same moment: every
    one succeeds and equals the same request asked alone afterwards; no tensor is left on the meta
    device and tie_weights is the real one."""
    report = cold_start(peaked_settings)
    assert {task: outcome for task, outcome in report["tasks"].items() if outcome != {"error": None, "difference": None}} == {}
    assert report["loaded"] == 6  # mask and embed share one model
    assert report["on_meta"] == []
    assert report["tie_weights_intact"]


@pytest.fixture
def fresh_backend(peaked_settings):
    """A backend with nothing loaded, and tie_weights put back whatever a test did to it."""
    yield LocalBackend(peaked_settings)
    PreTrainedModel.tie_weights = loading._TIE_WEIGHTS


def loads_at_once(backend: LocalBackend, tasks: list[str]) -> dict[str, BaseException | None]:
    """Acquire each task's model from its own thread, all released by one barrier."""
    barrier = threading.Barrier(len(tasks))
    outcome: dict[str, BaseException | None] = {}

    def load(task: str) -> None:
        barrier.wait()
        try:
            backend.release(backend.acquire(task))
            outcome[task] = None
        except BaseException as err:  # recorded for the assertion
            outcome[task] = err

    threads = [threading.Thread(target=load, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a model load did not finish in 120 s"
    return outcome


def assert_tied(backend: LocalBackend) -> None:
    """GPT-2's lm_head is its token embedding: loaded with data, and the same tensor."""
    loaded = backend.acquire("generate")
    try:
        assert loading.meta_tensors(loaded.model) == []
        assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()
    finally:
        backend.release(loaded)


@pytest.mark.parametrize("attempt", range(5))
def test_six_models_loading_at_the_same_instant_all_load_whole(peaked_settings, fresh_backend, attempt):
    """The tightest race: tokenizers ready, six model loads released by one barrier. Without the
    load lock most attempts leave a tied weight on the meta device (measured: 6 of 8)."""
    tasks = ["generate", "mask", "translate", "ask", "ner", "sentiment"]
    for task in tasks:
        fresh_backend.tokenizer(task)
    assert loads_at_once(fresh_backend, tasks) == dict.fromkeys(tasks)
    for loaded in fresh_backend._models.values():
        assert loading.meta_tensors(loaded.model) == [], loaded.checkpoint
    assert_tied(fresh_backend)


def test_a_failed_load_among_concurrent_loads_poisons_nothing(peaked_settings, fresh_backend, tmp_path):
    broken = tmp_path / "broken-ner"
    shutil.copytree(peaked_settings.checkpoints["ner"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    fresh_backend.checkpoints["ner"] = str(broken)
    fresh_backend.tokenizer("ner")  # the tokenizer is fine; the weights are not

    outcome = loads_at_once(fresh_backend, ["generate", "mask", "translate", "ner", "sentiment"])

    assert isinstance(outcome.pop("ner"), ModelUnavailable)
    assert outcome == dict.fromkeys(outcome)  # the others loaded
    assert PreTrainedModel.tie_weights is loading._TIE_WEIGHTS
    later = LocalBackend(peaked_settings)  # and later loads still tie weights
    assert_tied(later)
    request = first_requests()["generate"]
    assert difference(run(later, "generate", [request])[0], run(fresh_backend, "generate", [request])[0]) is None


def test_tie_weights_left_patched_elsewhere_is_put_back_before_a_load(fresh_backend, caplog):
    """What an unguarded overlapping load leaves behind (the no-op restored as the "original")."""
    PreTrainedModel.tie_weights = lambda self, *args, **kwargs: None
    with caplog.at_level(logging.WARNING, logger="bot.inference.loading"):
        assert_tied(fresh_backend)
    assert PreTrainedModel.tie_weights is loading._TIE_WEIGHTS
    assert "left patched" in caplog.text


def test_a_model_with_tensors_on_meta_is_refused(fresh_backend, monkeypatch):
    """What an overlapping load used to return: lm_head without data. Refused, never served."""
    real = transformers.AutoModelForCausalLM.from_pretrained

    def leaves_meta(checkpoint, **options):
        model = real(checkpoint, **options)
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight, device="meta"))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", leaves_meta)
    with pytest.raises(ModelUnavailable) as refused:
        fresh_backend.acquire("generate")
    assert "meta device" in refused.value.detail
    assert not fresh_backend.is_loaded("generate")


async def test_a_load_in_progress_does_not_hold_up_tasks_that_are_ready(peaked_settings, fresh_backend):
    """While one load holds the process-wide load lock (a 1.3 GB download, say), first requests of
    four other tasks wait for it — and a task already loaded keeps answering."""
    await asyncio.to_thread(fresh_backend.warm_up, "sentiment")
    executor = Executor(peaked_settings, fresh_backend)
    await executor.start()
    cold = ["generate", "translate", "ask", "ner"]
    requests = first_requests()
    try:
        loading._LOCK.acquire()
        try:
            waiting = [asyncio.create_task(executor.submit(task, requests[task], user_id=i)) for i, task in enumerate(cold)]
            for _ in range(500):  # until all four are tokenizing, i.e. waiting for their tokenizer's load
                if all(executor.lanes[task].preparing for task in cold):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the cold requests never reached tokenizing")
            answer = await asyncio.wait_for(executor.submit("sentiment", requests["sentiment"], user_id=9), timeout=30)
            assert difference(run(fresh_backend, "sentiment", [requests["sentiment"]])[0], answer) is None
            assert not any(task.done() for task in waiting), "a cold task answered while the load lock was held"
        finally:
            loading._LOCK.release()
        answers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=120)
    finally:
        await executor.shutdown()
    for task, answer in zip(cold, answers):
        assert difference(run(fresh_backend, task, [requests[task]])[0], answer) is None, task


async def test_unloading_and_reload_during_traffic_keep_every_answer(peaked_settings, tmp_path, caplog):
    """A memory budget smaller than any two models (every load unloads the idle others) and an
    /admin reload of sentiment while all seven tasks are busy, several rounds: every request
    succeeds with the answer it gets alone."""
    reference = LocalBackend(peaked_settings)
    requests = first_requests()
    alone = {task: run(reference, task, [request])[0] for task, request in requests.items()}
    copy = tmp_path / "sentiment-copy"
    shutil.copytree(peaked_settings.checkpoints["sentiment"], copy)

    settings = dataclasses.replace(peaked_settings, memory_budget_mb=0.5, max_queued_per_user=64)
    backend = LocalBackend(settings)
    executor = Executor(settings, backend)
    await executor.start()
    try:
        with caplog.at_level(logging.INFO, logger="bot.inference.local"):
            for round_ in range(3):
                submitted = [executor.submit(task, request, user_id=round_ * 10 + i)
                             for i, (task, request) in enumerate(requests.items())]
                if round_ == 1:
                    submitted.append(asyncio.to_thread(backend.set_checkpoint, "sentiment", str(copy)))
                answers = await asyncio.wait_for(asyncio.gather(*submitted), timeout=180)
                for task, answer in zip(requests, answers):
                    assert difference(alone[task], answer) is None, (round_, task)
    finally:
        await executor.shutdown()
    assert backend.checkpoints["sentiment"] == str(copy)
    assert caplog.text.count("Unloaded") >= 6, "the budget never unloaded anything"
    for loaded in backend._models.values():
        assert loading.meta_tensors(loaded.model) == []


def test_loads_and_batches_run_torch_on_threads_that_end_with_them(fresh_backend, monkeypatch):
    """libgomp keeps an OpenMP pool for every thread that ran torch ops, and once the pools hold more
    threads than there are CPUs every op pays a wake-up (bot/inference/torch_threads.py): a load and
    a batch each run on a thread of their own, gone by the time they return."""
    threads: list[threading.Thread] = []
    load = fresh_backend._load_model

    def recorded_load(*args):
        threads.append(threading.current_thread())
        return load(*args)

    monkeypatch.setattr(fresh_backend, "_load_model", recorded_load)
    fresh_backend.set_checkpoint("sentiment", fresh_backend.checkpoints["sentiment"])
    model = fresh_backend._models[fresh_backend._key("sentiment")].model
    hook = model.register_forward_pre_hook(lambda *_: threads.append(threading.current_thread()))
    try:
        answers = run(fresh_backend, "sentiment", [first_requests()["sentiment"]] * 2)
    finally:
        hook.remove()
    assert len(threads) == 2 and len(answers) == 2
    assert all(thread is not threading.current_thread() and not thread.is_alive() for thread in threads)
