"""INFERENCE=ray for real (#11): a local Ray started by this module (2 CPUs, token auth off, its own
temporary directory), the seven tasks deployed as Ray Serve replicas running tiny models, and the
bot-side RayExecutor driving them — no mock of Ray. Nothing of Ray is left when the module ends.

What users see must not change: the same answers as the local path, streamed /generate, Cancel
stopping the work on the replica, deadlines, busy replies, every request ending exactly once even
when a replica dies mid-batch, several replicas sharing load, /status and /models per replica, a
rolling /admin reload, and shutdown with requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.client import EXTENSIONS
from bot.inference import ray_client, ray_serve
from bot.inference.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    ModelUnavailable,
    QueueFull,
    ShuttingDown,
)
from bot.inference.local import LocalBackend
from bot.inference.ray_client import RayExecutor
from bot.inference.tasks.generate import GenerateRequest
from bot.inference.tasks.sentiment import SentimentRequest
from bot.settings import SettingsError, load_settings
from tests.answers import difference, first_requests, run
from tests.fake_discord import GUILD_ID, TOKEN, USER_ID
from tests.test_code_button import press, script_of
from tests.test_cogs import _every_sent_message_is_safe, final, slash  # noqa: F401
from tests.test_ops import bot_process, free_port, process_env, wait_ready

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

QUEUE = 8  # per replica: small, so a busy reply is quick to reach


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    ends = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < ends, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.05)


def ray_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def kill_replica(deployment: str) -> None:
    """Kill the deployment's (only) replica; Serve replaces it in a few seconds."""
    [name] = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)  # SERVE_REPLICA::app#deployment#id
              if a["name"].startswith("SERVE_REPLICA::") and a["name"].split("#")[1] == deployment]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


@contextlib.asynccontextmanager
async def replica_stopped(executor: RayExecutor, deployment: str):
    """The deployment's (only) replica stopped with SIGSTOP (alive, silent) until the block ends."""
    await executor.refresh()
    [replica] = [r for r in executor.replicas if r["deployment"] == deployment]
    os.kill(replica["pid"], signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(replica["pid"], signal.SIGCONT)


@pytest.fixture(scope="module")
def ray_env(tiny_env) -> dict[str, str]:
    """Two /sentiment replicas, one of every other group; no CPU reserved per replica (2 cores)."""
    return tiny_env | {
        "INFERENCE": "ray",
        "RAY_ADDRESS": "auto",  # the bot side joins the cluster this module started
        "RAY_REPLICAS": "sentiment=2",
        "RAY_CPUS_PER_REPLICA": "0",
        "QUEUE_SIZE_PER_MODEL": str(QUEUE),
        "MAX_QUEUED_PER_USER": "64",
        "SHUTDOWN_GRACE": "2",
        "STREAM_INTERVAL": "0",  # every generated token is reported: tiny models write fast
    }


@pytest.fixture(scope="module")
def ray_settings(ray_env):
    return load_settings(ray_env)


@pytest.fixture(scope="module")
def cluster(ray_settings):
    """A local Ray with Serve and the seven tasks deployed; shut down, and checked gone, after."""
    assert not ray_processes(), f"Ray processes before the test: {ray_processes()}"
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE",)}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token written into ~/.ray
    ray.init(num_cpus=2, include_dashboard=False, namespace=ray_serve.NAMESPACE, _temp_dir=temp,
             log_to_driver=False)
    try:
        placement = ray_serve.deploy(dataclasses.replace(ray_settings, ray_address=None), timeout=240)
        yield placement
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        deadline = time.monotonic() + 20
        while ray_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
        assert not ray_processes(), f"Ray processes left over: {ray_processes()}"


@pytest.fixture
async def executor(cluster, ray_settings):
    ex = RayExecutor(ray_settings)
    await ex.start()
    yield ex
    await ex.shutdown(grace=5)


@pytest.fixture(scope="module")
def local_backend(tiny_settings) -> LocalBackend:
    return LocalBackend(tiny_settings)


def test_every_replica_is_placed_and_reported(cluster):
    deployments = sorted(r["deployment"] for r in cluster)
    assert deployments == ["ask", "generate", "mask+embed", "ner", "sentiment", "sentiment", "translate"]
    for replica in cluster:
        assert replica["node"] and all(m["loaded"] for m in replica["models"]), replica


def test_per_task_ray_settings_size_each_deployment():
    """RAY_REPLICAS (a count, or MIN-MAX for autoscaling), RAY_CPUS_PER_REPLICA and
    RAY_GPUS_PER_REPLICA (fractions allowed) reach each model group's Serve options; a group that
    serves two tasks (mask+embed share bert) takes the larger of its tasks' values."""
    settings = load_settings({"INFERENCE": "ray", "RAY_REPLICAS": "sentiment=1-4,mask=2", "RAY_GPUS_PER_REPLICA": "0.25",
                              "RAY_CPUS_PER_REPLICA": "ner=2,embed=0.5"})
    deployments = {name: app._bound_deployment for name, app in ray_serve.applications(settings).items()}
    assert set(deployments) == {ray_serve.app_name(g) for g in ("generate", "mask+embed", "translate", "ask", "ner", "sentiment")}
    sentiment, shared, ner = (deployments[ray_serve.app_name(g)] for g in ("sentiment", "mask+embed", "ner"))
    scaling = sentiment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert shared.num_replicas == 2 and shared._deployment_config.autoscaling_config is None
    assert shared.ray_actor_options["num_cpus"] == 1.0  # max(mask's default 1, embed's 0.5)
    assert ner.ray_actor_options["num_cpus"] == 2.0 and ner.num_replicas == 1
    assert {d.ray_actor_options["num_gpus"] for d in deployments.values()} == {0.25}
    for env, message in (({"RAY_REPLICAS": "sentiment=0"}, "1 <= MIN <= MAX"), ({"RAY_REPLICAS": "3-1"}, "1 <= MIN <= MAX"),
                         ({"RAY_REPLICAS": "chat=2"}, "unknown task 'chat'"), ({"RAY_GPUS_PER_REPLICA": "-1"}, ">= 0")):
        with pytest.raises(SettingsError, match=re.escape(message)):
            load_settings(env)


async def test_requests_take_the_tuned_serve_path(executor, ray_settings):
    """#11: the bot's handles route on its own event loop and call replicas over gRPC (resent as
    actor calls when a replica says nothing: see enqueue); every replica runs with SERVE_ENV, which
    reaches it only through its runtime_env (the bot does not set it in its own environment, so a
    local Ray does not pass it on), and without Serve's access log."""
    handles, actor_handles = list(executor._handles.values()), list(executor._actor_handles.values())
    assert handles and all(not h.handle_options._by_reference for h in handles)
    assert all(h.handle_options._by_reference for h in actor_handles)  # the fallback (see enqueue)
    assert all(h.is_initialized and not h.init_options._run_router_in_separate_loop for h in handles + actor_handles)
    assert "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD" not in os.environ
    await executor.refresh()
    assert executor.replicas and all(r["serve_env"] == ray_serve.SERVE_ENV == {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"} for r in executor.replicas), executor.replicas
    for name, tasks in ray_serve.model_groups(ray_settings).items():
        deployment = ray_serve.group_application(ray_settings, name, tasks)._bound_deployment
        assert deployment.logging_config["enable_access_log"] is False


async def test_every_task_answers_as_the_local_path_does(executor, local_backend):
    requests = first_requests()
    answers = await asyncio.wait_for(asyncio.gather(
        *(executor.submit(task, request, user_id=i) for i, (task, request) in enumerate(requests.items()))), 120)
    for (task, request), answer in zip(requests.items(), answers):
        assert difference(run(local_backend, task, [request])[0], answer) is None, task


async def test_generate_streams_and_cancel_stops_the_row_on_the_replica(executor):
    partials: list[str] = []
    long = GenerateRequest("Streaming from a replica", max_new_tokens=200, temperature=0.9, seed=3)
    companions = [asyncio.ensure_future(executor.submit("generate", dataclasses.replace(long, seed=s), user_id=100 + s))
                  for s in range(3)]
    job = await executor.enqueue("generate", long, user_id=1, on_progress=partials.append)
    await wait_until(lambda: partials, "a streamed partial text", timeout=60)
    assert isinstance(partials[0], str)
    executor.cancel(job.id)
    with pytest.raises(Cancelled):
        await asyncio.wait_for(executor.wait(job), 10)
    await asyncio.wait_for(asyncio.gather(*companions), 120)

    await wait_until(lambda: replica_outcomes(executor, "generate", "Cancelled") >= 1,
                     "the replica's executor to count the cancel", timeout=15)


def replica_outcomes(executor: RayExecutor, task: str, outcome: str) -> int:
    """How many of the task's jobs ended so in the replicas' executors, as last told to the board."""
    return sum(count for r in executor.replicas for (t, o), count in r["outcomes"] if t == task and o == outcome)


async def test_requests_arriving_together_share_a_call(executor, local_backend):
    """A burst of one task travels in calls of a quarter of a replica's queue (QUEUE // 4 = 2
    here), each answer still its own text's answer alone; a streamed request has a call of its own.
    (Not more than QUEUE: Serve's router may send several calls of one loop turn to the same
    replica, and one run of 9 in 5 calls had the ninth refused as busy.)"""
    requests = [SentimentRequest(f"{word} film, {n} stars") for n, word in enumerate(["great", "awful"] * (QUEUE // 2))]
    calls = executor.calls["sentiment"]
    answers = await asyncio.wait_for(asyncio.gather(
        *(executor.submit("sentiment", request, user_id=i) for i, request in enumerate(requests))), 60)
    assert executor.calls["sentiment"] - calls == QUEUE // 2  # 2 a call
    for request, answer in zip(requests, answers):
        assert difference(run(local_backend, "sentiment", [request])[0], answer) is None, request
    calls = executor.calls["generate"]
    prompt = GenerateRequest("Alone", max_new_tokens=3, seed=1)
    await asyncio.wait_for(asyncio.gather(executor.submit("generate", prompt, user_id=1, on_progress=lambda _: None),
                                          executor.submit("generate", prompt, user_id=2)), 60)
    assert executor.calls["generate"] - calls == 2


async def test_a_fault_in_one_request_of_a_call_fails_that_one_only(executor, local_backend):
    """A request the replica cannot even prepare (here not a request at all: the cogs never send
    one, a bug could) ends as InferenceFailed; the request sharing its call gets its answer."""
    good = SentimentRequest("a fine film")
    calls = executor.calls["sentiment"]
    outcomes = await asyncio.wait_for(asyncio.gather(executor.submit("sentiment", good, user_id=1),
                                                     executor.submit("sentiment", None, user_id=2),
                                                     return_exceptions=True), 60)
    assert executor.calls["sentiment"] - calls == 1
    assert difference(run(local_backend, "sentiment", [good])[0], outcomes[0]) is None, outcomes[0]
    assert isinstance(outcomes[1], InferenceFailed) and "Try again" in str(outcomes[1]), repr(outcomes[1])
    assert executor._jobs == {}


def recording_admitted(handle, admitted: list[list[bool]]):
    """The handle, passing each call on as it is, after noting its requests' `admitted` flags."""
    def remote(task, requests):
        admitted.append([flag for *_, flag in requests])
        return handle.options(stream=True).run.remote(task, requests)

    return SimpleNamespace(options=lambda **_: SimpleNamespace(run=SimpleNamespace(remote=remote)))


async def test_cancel_in_a_shared_call_stops_the_call_and_sends_the_others_again(executor, monkeypatch):
    """The replica stops a call whole, so Cancel on one request of a shared call stops both rows on
    the replica and sends the other again, marked as admitted (Executor.enqueue does not refuse it
    for its first copy, which may still count there): it still gets its own answer, once."""
    slow = GenerateRequest("Sharing a call", max_new_tokens=200, seed=6)
    expected = await asyncio.wait_for(executor.submit("generate", slow), 120)
    await executor.refresh()
    cancelled, calls = replica_outcomes(executor, "generate", "Cancelled"), executor.calls["generate"]
    jobs = await asyncio.wait_for(asyncio.gather(*(executor.enqueue("generate", dataclasses.replace(slow, seed=seed),
                                                                    user_id=seed) for seed in (7, 6))), 30)
    assert executor.calls["generate"] - calls == 1 and jobs[0].call is jobs[1].call
    await wait_until(lambda: jobs[0].started_at, "the batch to start")
    admitted: list[list[bool]] = []
    monkeypatch.setitem(executor._handles, "generate", recording_admitted(executor._handles["generate"], admitted))
    executor.cancel(jobs[0].id)
    with pytest.raises(Cancelled):
        await asyncio.wait_for(executor.wait(jobs[0]), 10)
    assert executor.calls["generate"] - calls == 2  # the other, sent again
    assert admitted == [[True]]  # as accepted already: its first copy may still count against the replica's caps
    assert (await asyncio.wait_for(executor.wait(jobs[1]), 120)) == expected
    await wait_until(lambda: replica_outcomes(executor, "generate", "Cancelled") >= cancelled + 2,
                     "the replica to stop both rows of the call", timeout=15)
    assert executor._jobs == {}


async def test_an_expired_deadline_is_reported_not_computed(executor):
    """A request whose deadline passes while it waits behind a running batch is dropped on the
    replica (its deadline travels as seconds remaining) and ends as DeadlineExceeded."""
    blocker = await executor.enqueue("generate", GenerateRequest("Hold the worker", max_new_tokens=200, seed=5),
                                     user_id=1)
    await wait_until(lambda: blocker.started_at, "the blocking batch to start")
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(executor.submit("generate", GenerateRequest("Too late", max_new_tokens=2, seed=1),
                                               user_id=2, timeout=0.05), 30)
    assert (await executor.wait(blocker)).tokens > 0


async def test_a_full_replica_queue_is_a_busy_reply(executor):
    slow = GenerateRequest("Fill the queue", max_new_tokens=200, seed=1)
    outcomes = await asyncio.wait_for(asyncio.gather(
        *(executor.submit("generate", dataclasses.replace(slow, seed=i), user_id=i) for i in range(3 * QUEUE)),
        return_exceptions=True), 180)
    busy = [o for o in outcomes if isinstance(o, QueueFull)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert busy and done, [type(o).__name__ for o in outcomes]
    assert all("busy" in str(o) for o in busy)
    assert len(busy) + len(done) == len(outcomes), [o for o in outcomes if isinstance(o, BaseException) and o not in busy]


async def test_two_replicas_share_the_load(executor):
    for wave in range(5):  # waves of QUEUE: one replica alone could queue each wave whole
        await asyncio.wait_for(asyncio.gather(*(executor.submit("sentiment", SentimentRequest(f"text {wave} {i}"),
                                                                user_id=i) for i in range(QUEUE))), 120)

    def served() -> list[int]:  # per replica, as last reported (every second) to the board
        return [r["lanes"]["sentiment"]["requests"] for r in executor.replicas if r["deployment"] == "sentiment"]

    await wait_until(lambda: sum(served()) >= 5 * QUEUE, "both replicas to report their counts", timeout=15)
    assert len(served()) == 2 and all(n > 0 for n in served()), served()


async def test_a_replica_killed_mid_batch_ends_every_request_once(executor):
    slow = GenerateRequest("Until the replica dies", max_new_tokens=200, seed=2)
    jobs = await asyncio.gather(*(executor.enqueue("generate", dataclasses.replace(slow, seed=i), user_id=i)
                                  for i in range(4)))  # in shared calls, two a call
    assert len({job.call for job in jobs}) == 2
    await wait_until(lambda: any(job.started_at for job in jobs), "the batch to start")
    kill_replica("generate")
    outcomes = await asyncio.wait_for(asyncio.gather(*(executor.wait(job) for job in jobs), return_exceptions=True), 60)
    for outcome in outcomes:  # each ended once: its result, or a clear error naming what to do
        assert not isinstance(outcome, BaseException) or (
            isinstance(outcome, InferenceFailed) and "Try again" in str(outcome)), repr(outcome)
    assert executor._jobs == {}
    # Serve replaces the replica; the task answers again.
    await asyncio.wait_for(_until_answers(executor, "generate", GenerateRequest("back", max_new_tokens=3, seed=1)), 90)


async def test_a_call_without_word_from_its_replica_is_resent_as_an_actor_call(executor, monkeypatch):
    """A gRPC call that hears nothing from its replica (a replica that just died reads as
    "unavailable" over gRPC, and Serve's router can keep the call on it) is cancelled and resent
    once as a Ray actor call; the request still ends once, with its answer. The replica is stopped
    (SIGSTOP) past FIRST_EVENT_WAIT, then let go."""
    request = first_requests()["ner"]

    async def served() -> int:  # requests the ner replica has run, as it last told the board
        await asyncio.sleep(ray_serve.REPORT_INTERVAL * 2.5)
        await executor.refresh()
        return sum(r["lanes"]["ner"]["requests"] for r in executor.replicas if r["deployment"] == "ner")

    expected = await executor.submit("ner", request)
    ran, before = await served(), executor.resent["ner"]
    monkeypatch.setattr(ray_client, "FIRST_EVENT_WAIT", 1.0)
    async with replica_stopped(executor, "ner"):
        answer = asyncio.ensure_future(executor.submit("ner", request, timeout=60))
        await wait_until(lambda: executor.resent["ner"] == before + 1, "the call to be resent")
    monkeypatch.undo()  # the wait is the bot's again before any other call
    try:
        assert (await asyncio.wait_for(answer, 30)) == expected
    finally:
        answer.cancel()
    assert executor.resent["ner"] == before + 1 and executor._jobs == {}
    assert executor.snapshot()["resent"]["ner"] == before + 1
    assert await served() == ran + 1  # the cancelled call did not run as well


async def test_a_replica_that_hangs_ends_its_requests_at_their_deadline(executor, monkeypatch):
    """A replica stopped (SIGSTOP: alive, silent) cannot answer: the bot stops waiting once the
    deadline and DEADLINE_SLACK have passed, and the request ends as DeadlineExceeded."""
    monkeypatch.setattr(ray_client, "DEADLINE_SLACK", 1.0)
    async with replica_stopped(executor, "ner"):
        outcomes = await asyncio.wait_for(asyncio.gather(  # one call of two: neither waits past its deadline
            *(executor.submit("ner", first_requests()["ner"], user_id=i, timeout=1.0 + i) for i in range(2)),
            return_exceptions=True), 30)
        assert all(isinstance(outcome, DeadlineExceeded) for outcome in outcomes), outcomes
    assert executor._jobs == {}
    await asyncio.wait_for(_until_answers(executor, "ner", first_requests()["ner"]), 60)


async def _until_answers(executor, task, request):
    while True:
        try:
            return await executor.submit(task, request)
        except (InferenceFailed, QueueFull, DeadlineExceeded):
            await asyncio.sleep(0.5)


async def test_status_and_models_describe_each_replica(executor):
    await executor.refresh()
    snapshot = executor.snapshot()
    assert snapshot["lanes"]["sentiment"]["replicas"] == 2
    rows = {row["task"]: row for row in snapshot["models"]}
    assert len(rows["sentiment"]["replicas"]) == 2 and rows["mask"]["shared_with"] == ["embed"]
    for row in rows.values():
        assert row["loaded"] and row["replicas"], row
        for replica in row["replicas"]:
            assert replica["node"] and replica["device"] == "cpu" and replica["loaded"]


async def test_shutdown_with_requests_in_flight_ends_each_once(cluster, ray_settings):
    ex = RayExecutor(ray_settings)
    await ex.start()
    slow = GenerateRequest("In flight at shutdown", max_new_tokens=200, seed=4)
    jobs = [await ex.enqueue("generate", dataclasses.replace(slow, seed=i), user_id=i) for i in range(3)]  # a call each
    jobs += await asyncio.gather(*(ex.enqueue("generate", dataclasses.replace(slow, seed=i), user_id=i)
                                   for i in range(3, 7)))  # two calls of two
    await ex.shutdown(grace=0.2)
    outcomes = await asyncio.wait_for(asyncio.gather(*(ex.wait(job) for job in jobs), return_exceptions=True), 10)
    assert all(not isinstance(o, BaseException) or isinstance(o, ShuttingDown) for o in outcomes), outcomes
    assert ex._jobs == {}
    with pytest.raises(ShuttingDown):
        await ex.enqueue("sentiment", SentimentRequest("too late"))


async def test_admin_reload_is_a_rolling_update(executor, tiny_checkpoints, tmp_path, local_backend):
    """/admin reload's backend call, with requests flowing: none fails, and then the task answers
    from the new checkpoint (a copy of the old one, so the answer is the same)."""
    copy = tmp_path / "sentiment-copy"
    shutil.copytree(tiny_checkpoints["sentiment"], copy)
    request = SentimentRequest("during the update")
    reload = asyncio.ensure_future(asyncio.to_thread(executor.backend.set_checkpoint, "sentiment", str(copy)))
    answers = []
    while not reload.done():
        answers.append(await asyncio.wait_for(executor.submit("sentiment", request), 60))
        await asyncio.sleep(0.2)
    await reload
    assert answers and executor.backend.checkpoints["sentiment"] == str(copy)
    after = await executor.submit("sentiment", request)
    expected = run(local_backend, "sentiment", [request])[0]
    assert all(difference(expected, answer) is None for answer in [*answers, after])

    def checkpoints() -> set[str]:
        return {m["checkpoint"] for r in executor.replicas for m in r["models"] if m["task"] == "sentiment"}

    await wait_until(lambda: checkpoints() == {str(copy)}, "only new replicas on the board", timeout=20)


# -- the bot on Ray, through the fake Discord -------------------------------------------------------


@pytest.fixture
def bot_settings(ray_settings, tmp_path):
    return dataclasses.replace(ray_settings, discord_token=TOKEN, discord_guild_id=GUILD_ID, user_cooldown=0.0,
                               state_dir=tmp_path / "state", owner_ids=(USER_ID,))


@pytest.fixture
def bot_extensions() -> tuple[str, ...]:
    return EXTENSIONS


@pytest.fixture
def bot_executor():
    return None  # setup_hook builds it from the settings: INFERENCE=ray gives the RayExecutor


async def test_the_bot_answers_and_describes_replicas_on_ray(cluster, fake_discord, discord_bot):
    assert isinstance(discord_bot.executor, RayExecutor)
    reply = await slash(fake_discord, "sentiment", {"text": "I love this"})
    assert reply.embeds and "%" in reply.embeds[0]["title"]
    source = script_of(await press(fake_discord, reply))  # the Code button (#14) on a reply from a replica
    await discord_bot.executor.refresh()
    dtype, _ = discord_bot.executor.backend.precision("sentiment")  # as the replicas run it (DTYPE=auto)
    backend = discord_bot.executor.backend
    assert backend.packed("sentiment") and backend.rows_alone("sentiment")  # CPU replicas run encoders packed (their reports)
    assert ("from_pretrained(checkpoint)" if dtype == "float32" else f"from_pretrained(checkpoint, dtype=torch.{dtype})") in source
    models = await (await fake_discord.invoke_slash("models")).wait_final(10)
    assert models.embeds[0]["footer"]["text"].startswith("DTYPE=auto: ")  # why, from the replicas' own CPU
    fields = {f["name"]: f["value"] for f in models.embeds[0]["fields"]}
    assert fields["/sentiment"].count("replica on node") == 2 and fields["/ner"].count("replica on node") == 1
    status = await (await fake_discord.invoke_slash("status")).wait_final(10)
    assert "replicas" in status.embeds[0]["description"]


async def output_of(process: asyncio.subprocess.Process, timeout: float) -> str:
    """What the process printed by the time it exited; killed, whatever happens, if it has not."""
    try:
        return (await asyncio.wait_for(process.communicate(), timeout))[0].decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the compose profile's shape: `serve`, then two bot processes by shard range ------------------------


async def test_two_bot_processes_by_shard_range_share_one_serve_application(cluster, ray_env, fake_discord, tmp_path):
    """docker-compose.ray.yml without docker, on this module's cluster: `automodel-bot serve`
    deploys (updates) the models and prints where each replica landed; then two `automodel-bot
    run` processes, shards 0-1 and 2-3 of 4, join the cluster. The fake sends the guild's events
    to shard 2 and DMs to shard 0, as Discord would, so each process answers its own users, from
    the same replicas; only the process with shard 0 syncs commands."""
    address = ray.get_runtime_context().gcs_address
    base = process_env(**ray_env | {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"})
    served = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "serve", "--timeout", "120", env=base, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    printed = await output_of(served, 180)
    assert served.returncode == 0, printed
    landed = [line.split() for line in printed.splitlines() if line.split()[:1] in (["sentiment"], ["ner"])]
    assert {row[0] for row in landed} == {"ner", "sentiment"} and all(row[3] == "cpu" for row in landed)
    # `serve` replaced every replica (a rolling update); retired ones leave the board within STALE_AFTER.
    board = ray_serve.ensure_board()
    expected = sorted(r["deployment"] for r in cluster)
    await wait_until(lambda: sorted(r["deployment"] for r in ray.get(board.all.remote())) == expected,
                     "the replaced replicas to leave the board", 60)

    bots: list[tuple[asyncio.subprocess.Process, int, Path]] = []
    try:
        for shards in ("0-1", "2-3"):
            port, log = free_port(), tmp_path / f"bot-{shards}.log"
            env = base | {"DISCORD_TOKEN": TOKEN, "DISCORD_GUILD_ID": str(GUILD_ID), "SHARD_COUNT": "4",
                          "SHARD_IDS": shards, "METRICS_PORT": str(port), "STATE_DIR": str(tmp_path / f"state-{shards}"),
                          "AUTOMODEL_TEST_IDENTIFY_SPACING": "1"}
            with log.open("w") as log_file:
                bots.append((await bot_process(fake_discord, env, tmp_path, log_file), port, log))
        for process, port, log in bots:
            await wait_ready(port, process, log, timeout=120)
        identified = [frame["d"]["shard"] for frame in fake_discord.gateway_frames if frame.get("op") == 2]
        assert sorted(identified) == [[0, 4], [1, 4], [2, 4], [3, 4]]  # each shard identified once

        in_guild = await fake_discord.invoke_slash("sentiment", {"text": "I love this"})
        in_dm = await fake_discord.invoke_slash("sentiment", {"text": "I love this"}, guild=False)
        assert (in_guild.shard, in_dm.shard) == (2, 0)  # so process 2-3 answers one, process 0-1 the other
        guild_reply, dm_reply = await final(in_guild, 60), await final(in_dm, 60)
        assert guild_reply.embeds and "%" in guild_reply.embeds[0]["title"]
        assert dm_reply.embeds[0]["title"] == guild_reply.embeds[0]["title"]  # one model, one answer

        described = []
        for guild in (True, False):  # /models from each process: the same replicas of one application
            reply = await (await fake_discord.invoke_slash("models", guild=guild)).wait_final(30)
            fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
            described.append(fields["/sentiment"])
        assert described[0] == described[1] and described[0].count("replica on node") == 2
        syncs = [r for r in fake_discord.requests if r.route.startswith("PUT /applications/")]
        assert len(syncs) == 1  # by the process that runs shard 0

        for process, _, _ in bots:
            process.send_signal(signal.SIGTERM)
        assert [await asyncio.wait_for(process.wait(), 30) for process, _, _ in bots] == [0, 0]
    finally:
        for process, _, _ in bots:
            if process.returncode is None:
                process.kill()
                await process.wait()
    first, second = (log.read_text() for _, _, log in bots)
    for text, own, other in ((first, (0, 1), (2, 3)), (second, (2, 3), (0, 1))):  # discord.py logs each shard's connection
        assert all(f"Shard ID {i} has connected" in text for i in own)
        assert not any(f"Shard ID {i} has connected" in text for i in other)
    assert "commands are synced by the process that runs shard 0" in second
    assert "Traceback" not in first + second and TOKEN not in first + second


# -- start-up failures: one line, never a hang ---------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HF_HUB_OFFLINE": "1"} | env
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=full, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())  # no developer .env


def test_serve_on_an_unreachable_cluster_ends_in_one_line():
    done = cli({"RAY_ADDRESS": "127.0.0.1:1"}, "serve")
    assert done.returncode == 3
    [line] = [line for line in done.stderr.splitlines() if line.startswith("automodel-bot:")]
    assert "Could not connect to RAY_ADDRESS=127.0.0.1:1" in line and "Traceback" not in done.stderr


def test_serve_without_a_cluster_address_says_what_to_do():
    done = cli({}, "serve")
    assert done.returncode == 2 and "RAY_ADDRESS is empty" in done.stderr and "ray start --head" in done.stderr


def test_a_model_nobody_deployed_says_to_run_serve(cluster):
    with pytest.raises(ModelUnavailable) as refused:
        ray_serve.wait_running(["automodel-bot-test.never-deployed"], timeout=1)
    assert "not deployed after 1s" in refused.value.detail and "`automodel-bot serve`" in refused.value.detail


async def test_run_on_an_unreachable_cluster_ends_in_one_line(fake_discord, tmp_path):
    """`automodel-bot run` with INFERENCE=ray, against the fake Discord: the cluster is joined
    in setup_hook, and an unreachable one ends start-up with one line and exit 3."""
    env = process_env(DISCORD_TOKEN=TOKEN, INFERENCE="ray", RAY_ADDRESS="127.0.0.1:1", STATE_DIR=str(tmp_path / "state"))
    process = await bot_process(fake_discord, env, tmp_path, asyncio.subprocess.PIPE)
    printed = await output_of(process, 120)
    assert process.returncode == 3, printed
    [line] = [line for line in printed.splitlines() if line.startswith("automodel-bot:")]
    assert "Could not connect to RAY_ADDRESS=127.0.0.1:1" in line and "Traceback" not in printed
    assert not [f for f in fake_discord.gateway_frames if f.get("op") == 2]  # never connected to the gateway


def test_a_replica_the_cluster_cannot_place_is_one_clear_error(cluster, ray_settings):
    settings = dataclasses.replace(ray_settings, ray_gpus={"sentiment": 1.0})  # no GPU in this cluster
    app = ray_serve.group_application(settings, "sentiment", ("sentiment",))
    name = "automodel-bot-test.unplaceable"
    try:
        with pytest.raises(ModelUnavailable) as refused:
            ray_serve.run_apps({name: app}, timeout=5)
        assert "could not be placed" in str(refused.value) and "RAY_GPUS_PER_REPLICA" in refused.value.detail
    finally:
        serve.delete(name)
