"""`automodel-bot bench`: the executor against naive one-at-a-time inference, in one process.

Both sides run the same request sequence (a heavy-tailed mix of lengths: most short, a few near
the model's limit) on random-weight models of the real architectures (no download). The naive side
is what the tutorial does per message: tokenize one text, one forward, one at a time (in a thread,
so that the event loop is not what we measure). Reports requests/s, p50/p99 latency, the ratio,
the worst event-loop lag, and for encoders the achieved FLOP/s against a fp32 matmul peak measured
in the same run. `--formats` adds the executor in bf16 and int8 (each row against the peak of its
own format), `--peers` transformers' pipeline. Each encoder task also runs one client paired: every
request on each side in turn, so machine drift does not move the one-client ratio. Prints markdown
tables; `--output` writes them to a file too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import platform
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bot.inference import loading
from bot.inference.torch_threads import in_own_thread
from bot.settings import Settings

ENCODER_TASKS = ("sentiment", "embed", "ner", "ask", "mask")
WORDS = (
    "the model reads every message people send in the server and answers with what it thinks "
    "about weather music games football Berlin Paris friends work school coffee code release bug "
    "review deploy yesterday tomorrow really quite very good bad great awful interesting"
).split()


@dataclasses.dataclass
class Measurement:
    side: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    max_lag: float
    useful_flops: float = 0.0
    tokens: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- inputs -------------------------------------------------------------------------------------


def heavy_tailed_texts(n: int, tokenizer, max_tokens: int, rng: random.Random) -> list[str]:
    """Lengths from a log-normal (median ~12 words) with a few near the model's limit."""
    texts = []
    for _ in range(n):
        words = max(1, int(rng.lognormvariate(math.log(12), 1.0)))
        if rng.random() < 0.03:
            words = 10_000  # a wall of text, trimmed to the limit below
        text = " ".join(rng.choice(WORDS) for _ in range(min(words, max_tokens)))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens - 8]
        texts.append(tokenizer.decode(ids))
    return texts


def make_request(task: str, text: str, rng: random.Random, new_tokens: int) -> Any:
    from bot.inference.tasks import ask, embed, generate, mask, ner, sentiment

    if task == "generate":
        return generate.GenerateRequest(text, new_tokens, temperature=0.8, seed=rng.randrange(2**31))
    if task == "mask":
        words = text.split()
        words[len(words) // 2] = "[MASK]"
        return mask.MaskRequest(" ".join(words))
    if task == "ask":
        return ask.AskRequest("what does the model read?", text)
    return {"sentiment": sentiment.SentimentRequest, "ner": ner.NerRequest, "embed": embed.EmbedRequest}[task](text)


# -- measurement helpers ------------------------------------------------------------------------


class LoopLag:
    """Worst delay of a 10 ms timer on the event loop while a measurement runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - before - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()


PEAK_SIZES = (1024, 2048)  # with AMX a 1024³ bf16 product reached half of what 2048³ did (1,650 against 2,950 GFLOP/s)


def matmul_peak_flops(fmt: str = "fp32", seconds: float = 2.0) -> float:
    """Best FLOP/s of a square matrix multiply in a format, 1024³ or 2048³ (the ceiling for encoders
    in it): fp32 and bf16 with torch.mm, int8 as QUANTIZE=int8 runs it (a dynamically quantized Linear)."""
    return max(_matmul_flops(fmt, size, seconds) for size in PEAK_SIZES)


def best_peaks(formats: list[str], known: dict[str, float] | None = None) -> dict[str, float]:
    """Each format's peak (fp32 always) measured now, or the one in `known` where that was higher: on
    a shared VM one measurement came out at 1,764 against 2,630–2,840 GFLOP/s in the runs around it,
    which made every bf16 row's share of the peak read 1.6× too high."""
    measured = {fmt: in_own_thread(matmul_peak_flops, fmt) for fmt in dict.fromkeys(["fp32", *formats])}
    return {fmt: max(flops, (known or {}).get(fmt, 0.0)) for fmt, flops in measured.items()}


def _matmul_flops(fmt: str, size: int, seconds: float) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    if fmt == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    multiply = lambda: torch.mm(a, b)  # noqa: E731
    if fmt == "int8":
        linear = torch.nn.Linear(size, size, bias=False)
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
        multiply = lambda: quantized(a)  # noqa: E731
    best, ends = 0.0, time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < ends:
            start = time.perf_counter()
            for _ in range(4):
                multiply()
            best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def encoder_flops(config, tokens: int, params_no_embed: int) -> float:
    """Useful FLOPs of one unpadded sequence: 2·params·tokens for the dense layers, plus attention."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    return 2 * params_no_embed * tokens + 4 * layers * hidden * tokens * tokens


async def closed_loop(clients: int, requests: list, call) -> tuple[float, list[float], float]:
    """`clients` workers each sending the next request as soon as their previous one returned."""
    latencies: list[float] = []
    cursor = iter(range(len(requests)))

    async def client() -> None:
        for index in cursor:
            start = time.perf_counter()
            await call(requests[index])
            latencies.append(time.perf_counter() - start)

    with LoopLag() as lag:
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return seconds, latencies, lag.worst


async def open_loop(rate: float, requests: list, call, rng: random.Random) -> tuple[float, list[float], float]:
    """Poisson arrivals at `rate` requests/s, whatever the server manages."""
    latencies: list[float] = []

    async def one(request) -> None:
        start = time.perf_counter()
        await call(request)
        latencies.append(time.perf_counter() - start)

    with LoopLag() as lag:
        start = time.perf_counter()
        pending = []
        for request in requests:
            pending.append(asyncio.ensure_future(one(request)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*pending)
        seconds = time.perf_counter() - start
    return seconds, latencies, lag.worst


async def measure_sides(sides: dict, clients: int, run, flops: float) -> dict[str, Measurement]:
    """Every side twice, in the order A B C … C B A, each side's two runs summed, so that a drift in
    machine speed (turbo, another process) weighs on all sides alike."""
    totals = {side: Measurement(side, clients, 0, 0.0, [], 0.0) for side in sides}
    for side in [*sides, *reversed(sides)]:
        seconds, latencies, lag = await run(sides[side])
        total = totals[side]
        total.requests += len(latencies)
        total.seconds += seconds
        total.latencies += latencies
        total.max_lag = max(total.max_lag, lag)
        total.useful_flops += flops
    return totals


# -- the naive side ---------------------------------------------------------------------------


class Naive:
    """The tutorial's way: one text, one tokenizer call, one forward, one at a time."""

    def __init__(self, task: str, checkpoint: Path, quantize: bool = False) -> None:
        from transformers import AutoTokenizer

        from bot.inference.tasks import TASKS

        self.task = task
        self.tokenizer = loading.load_pretrained(AutoTokenizer.from_pretrained, checkpoint)
        self.model = loading.load_pretrained(TASKS[task].auto_class.from_pretrained, checkpoint).eval()
        if quantize:
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.lock = threading.Lock()

    def one(self, request) -> Any:
        with self.lock, torch.inference_mode():
            if self.task == "generate":
                inputs = self.tokenizer(request.prompt, return_tensors="pt")
                out = self.model.generate(
                    **inputs, max_new_tokens=request.max_new_tokens, do_sample=True, temperature=request.temperature,
                    top_p=request.top_p, pad_token_id=self.tokenizer.eos_token_id,
                )
                return out.shape[1] - inputs["input_ids"].shape[1]
            if self.task == "ask":
                inputs = self.tokenizer(request.question, request.context, return_tensors="pt")
            else:
                inputs = self.tokenizer(request.text, return_tensors="pt")
            output = self.model(**inputs)
            if self.task == "ask":
                return torch.softmax(output.start_logits.float(), -1) * torch.softmax(output.end_logits.float(), -1)
            if self.task == "embed":
                return torch.nn.functional.normalize(output.last_hidden_state.mean(1), dim=-1)
            return torch.softmax(output.logits.float(), dim=-1)

    async def __call__(self, request) -> Any:
        return await asyncio.to_thread(in_own_thread, self.one, request)


# -- the report ---------------------------------------------------------------------------------

# Formats the executor is measured in: (DTYPE, QUANTIZE). The naive side is always fp32, the
# tutorial's way.
FORMATS = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("float32", "int8")}


def auto_format(task: str) -> str:
    """The format DTYPE=auto picks for a task with a model of its own on this machine's CPU (as
    the bench runs it; a model shared with another task takes fp32 when their formats differ)."""
    from bot.inference.device import native_bf16, resolve_dtypes

    dtypes, _ = resolve_dtypes("auto", torch.device("cpu"), (task,), native_bf16())
    return "bf16" if dtypes[task] == torch.bfloat16 else "fp32"


def _ms(seconds: float, digits: int = 0) -> str:
    return f"{seconds * 1000:.{digits}f}"


def format_rows(task: str, fmt: str, runs: list[dict[str, Measurement]], peaks: dict[str, float]) -> list[str]:
    """One table row per concurrency: naive fp32 against the executor in `fmt`; each side's share of
    the peak of its own format."""
    rows = []
    for run in runs:
        naive, ours = run["naive"], run[fmt]
        clients = f"Poisson {-ours.concurrency:g}/s" if ours.concurrency < 0 else str(ours.concurrency)
        rows.append(
            f"| {task} | {clients} | {naive.rps:.1f} | {ours.rps:.1f} | **{ours.rps / naive.rps:.2f}×** | "
            f"{_ms(naive.quantile(0.5))} / {_ms(naive.quantile(0.99))} | {_ms(ours.quantile(0.5))} / {_ms(ours.quantile(0.99))} | "
            f"{naive.useful_flops / naive.seconds / peaks['fp32']:.0%} | {ours.useful_flops / ours.seconds / peaks[fmt]:.0%} | "
            f"{_ms(naive.max_lag)} / {_ms(ours.max_lag)} |"
        )
    return rows


def goal_row(task: str, runs: list[dict[str, Measurement]], peaks: dict[str, float], pipeline_best: float | None) -> str:
    """#12's ratios for one task: the default format (DTYPE=auto) at the most clients against the
    best pipeline and naive fp32, bf16 against fp32, one client against naive, p99 against naive."""
    closed = [run for run in runs if run["naive"].concurrency > 0]
    one, most, auto = closed[0], closed[-1], auto_format(task)

    def ratio(a: str, b: str) -> str:
        return f"{most[a].rps / most[b].rps:.2f}×" if a in most and b in most else "–"

    bf16_peak = f"{most['bf16'].useful_flops / most['bf16'].seconds / peaks['bf16']:.0%}" if "bf16" in most else "–"
    versus_pipeline = f"{most[auto].rps / pipeline_best:.2f}×" if pipeline_best and auto in most else "–"
    tails = ", ".join(
        f"{run['naive'].concurrency}: {_ms(run[auto].quantile(0.99))} {'≤' if run[auto].quantile(0.99) <= run['naive'].quantile(0.99) else '>'} "
        f"{_ms(run['naive'].quantile(0.99))}" for run in closed if auto in run
    )
    return (f"| {task} | {auto} | {ratio('bf16', 'fp32')} | {versus_pipeline} | {ratio(auto, 'naive')} | {bf16_peak} | "
            f"{one[auto].rps / one['naive'].rps:.2f}× | {tails} |" if auto in most else f"| {task} | {auto} | not measured |")


async def started_executor(task: str, checkpoint: Path, settings: Settings, fmt: str):
    """An executor over one task's checkpoint in a format, warm, with queues too deep to refuse."""
    from bot.inference.executor import Executor
    from bot.inference.local import LocalBackend

    dtype, quantize = FORMATS[fmt]
    settings = dataclasses.replace(
        settings, checkpoints=dict(settings.checkpoints, **{task: str(checkpoint)}), device="cpu", dtype=dtype,
        quantize=quantize, queue_size_per_model=10_000, queue_size_total=10_000, max_queued_per_user=10_000,
    )
    executor = Executor(settings, LocalBackend(settings))
    await executor.start()
    await asyncio.to_thread(executor.backend.warm_up, task)
    return executor


def mean_batches(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Each side's mean batch between two (requests, batches) counts of its lane."""
    return {side: (after[side][0] - before[side][0]) / max(1, after[side][1] - before[side][1]) for side in after}


async def bench_encoder(task, checkpoint, settings, args, rng, peaks, formats) -> dict[str, Any]:
    """Naive fp32 and the executor in each format, A B C … C B A on the same requests, at each
    concurrency; then (--peers) transformers' pipeline on the same list."""
    naive = in_own_thread(Naive, task, checkpoint)
    tokenizer = naive.tokenizer
    model_limit = min(512, tokenizer.model_max_length)
    texts = heavy_tailed_texts(args.requests, tokenizer, model_limit - 24, rng)
    requests = [make_request(task, t, rng, args.new_tokens) for t in texts]
    params = sum(p.numel() for n, p in naive.model.named_parameters() if "embeddings" not in n)
    total_flops = sum(encoder_flops(naive.model.config, len(tokenizer(t)["input_ids"]), params) for t in texts)

    executors = {fmt: await started_executor(task, checkpoint, settings, fmt) for fmt in formats}
    await naive(requests[0])  # warm-up

    def submit_to(executor):
        async def call(request):
            return await executor.submit(task, request, user_id=rng.randrange(1000))
        return call

    sides = {"naive": naive, **{fmt: submit_to(executor) for fmt, executor in executors.items()}}

    def served(executors: dict = executors) -> dict[str, tuple[int, int]]:  # format → (requests, batches) so far
        lanes = {fmt: executor.snapshot()["lanes"][task] for fmt, executor in executors.items()}
        return {fmt: (lane["requests"], lane["batches"]) for fmt, lane in lanes.items()}

    runs, mean_batch = [], {}
    for clients in [int(c) for c in args.concurrency.split(",")]:
        before = served()
        runs.append(await measure_sides(sides, clients, lambda call, c=clients: closed_loop(c, requests, call), total_flops))
        after = served()  # the last (most clients) row's mean batch is what is reported
        mean_batch = {**mean_batches(before, after), "clients": clients}
    if args.rate:
        poisson = await measure_sides(sides, -1, lambda call: open_loop(args.rate, requests, call, rng), total_flops)
        for measurement in poisson.values():
            measurement.concurrency = -args.rate  # a rate, not a client count (format_rows prints it so)
        runs.append(poisson)
    times = await paired_times(sides, requests, min(len(requests), 64))
    one_client = {fmt: sum(times["naive"]) / sum(times[fmt]) for fmt in formats}
    for executor in executors.values():
        await executor.shutdown()
    del executors
    out: dict[str, Any] = {"rows": {fmt: format_rows(task, fmt, runs, peaks) for fmt in formats}, "mean_batch": mean_batch,
                           "one_client": one_client, "pairs": len(times["naive"])}
    pipeline_best = None
    if getattr(args, "peers", False) and task in PIPELINES:
        rates = await asyncio.to_thread(in_own_thread, pipeline_rates, task, naive, requests)
        best = max(rates, key=rates.get)
        pipeline_best = rates[best]
        closed = [run for run in runs if run["naive"].concurrency > 0]
        naive_one, auto = closed[0]["naive"], auto_format(task)
        ours = closed[-1].get(auto)
        out["peers"] = (
            f"| {task} | {naive_one.rps:.1f} | " + " | ".join(f"{rates[size]:.1f}" for size in PIPELINE_BATCH_SIZES)
            + f" | {best} | {rates[best] / naive_one.rps:.2f}× | "
            + (f"{ours.rps:.1f} ({auto}, {ours.concurrency} clients) | **{ours.rps / rates[best]:.2f}×** |" if ours else "– | – |")
        )
    out["goals"] = goal_row(task, runs, peaks, pipeline_best)
    if "int8" in formats:
        out["agreement"] = await asyncio.to_thread(in_own_thread, int8_agreement, task, checkpoint, requests[:64])
    del naive
    return out


# What a user would pick instead of this bot: transformers' own pipeline for the task (#12).
PIPELINES = {"sentiment": "text-classification", "ner": "token-classification", "mask": "fill-mask",
             "embed": "feature-extraction"}
PIPELINE_BATCH_SIZES = (1, 8, 32)


def pipeline_rates(task: str, naive: Naive, requests: list) -> dict[int, float]:
    """Requests/s of transformers' pipeline over the same list of requests, per batch_size (the
    pipeline pads each batch to its longest text), on the naive side's model and tokenizer. Each
    batch size runs twice (first and last) so a drift in machine speed weighs on all alike."""
    from transformers import pipeline

    options = {"aggregation_strategy": "simple"} if task == "ner" else {}
    pipe = pipeline(PIPELINES[task], model=naive.model, tokenizer=naive.tokenizer, device="cpu", **options)
    inputs = [r.text for r in requests]
    seconds = dict.fromkeys(PIPELINE_BATCH_SIZES, 0.0)
    order = [*PIPELINE_BATCH_SIZES, *reversed(PIPELINE_BATCH_SIZES)]
    pipe(inputs[:2], batch_size=2)  # warm-up
    for batch_size in order:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in pipe(inputs, batch_size=batch_size):
                pass
            seconds[batch_size] += time.perf_counter() - start
    return {size: 2 * len(inputs) / spent for size, spent in seconds.items()}


def int8_agreement(task: str, checkpoint: Path, requests: list) -> str:
    """How often int8 picks the same top label as fp32, and the mean cosine of their outputs."""
    fp32, int8 = Naive(task, checkpoint), Naive(task, checkpoint, quantize=True)
    same, cosines = 0, []
    for request in requests:
        a, b = fp32.one(request), int8.one(request)
        cosines.append(float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)))
        same += int(a.argmax(-1).equal(b.argmax(-1)))
    return f"same top label {same}/{len(requests)}, mean cosine {statistics.mean(cosines):.4f}"


async def bench_generate(checkpoint, settings, args, rng, formats) -> list[str]:
    """Aggregate tokens/s of the executor's streams in each format (int8 aside: it ruins text),
    against one naive fp32 stream; formats A B … B A at each stream count."""
    naive = in_own_thread(Naive, "generate", checkpoint)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(128)]
    formats = [fmt for fmt in formats if fmt != "int8"]
    executors = {fmt: await started_executor("generate", checkpoint, settings, fmt) for fmt in formats}

    async def measure(call, streams: int, count: int) -> tuple[float, list[float], float]:
        requests = [make_request("generate", p, rng, args.new_tokens) for p in prompts[:count]]
        produced = []

        async def one(request):
            produced.append(await call(request))

        seconds, latencies, lag = await closed_loop(streams, requests, one)
        return sum(produced) / seconds, latencies, lag

    def submit_to(executor):
        async def call(request):
            return (await executor.submit("generate", request, user_id=rng.randrange(1000))).tokens
        return call

    base, _, _ = await measure(naive, 1, 4)
    rows = [f"| generate (naive fp32, one at a time) | 1 | {base:.1f} | 1.00× | | |"]
    for streams in [int(s) for s in args.generate_streams.split(",")]:
        totals = {fmt: [0.0, [], 0.0] for fmt in formats}
        for fmt in [*formats, *reversed(formats)]:  # four rounds each: past the start-up
            rate, latencies, lag = await measure(submit_to(executors[fmt]), streams, 4 * streams)
            total = totals[fmt]
            total[0] += rate / 2
            total[1] += latencies
            total[2] = max(total[2], lag)
        for fmt, (rate, latencies, lag) in totals.items():
            rows.append(f"| generate (executor {fmt}) | {streams} | {rate:.1f} | **{rate / base:.2f}×** | "
                        f"{statistics.median(latencies):.2f} s | {_ms(lag)} |")
    for executor in executors.values():
        await executor.shutdown()
    return rows


def bench_continuous(checkpoint: Path, new_tokens: int, rng: random.Random) -> list[str]:
    """Batched generate() against a warm, persistent ContinuousBatchingManager on the same prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = loading.load_pretrained(AutoTokenizer.from_pretrained, checkpoint)
    model = loading.load_pretrained(AutoModelForCausalLM.from_pretrained, checkpoint).eval()
    prompts = [tokenizer(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))))["input_ids"] for _ in range(16)]
    pad = tokenizer.eos_token_id

    def batched(count: int) -> None:
        batch = prompts[:count]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pad)

    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=pad)
    manager = model.init_continuous_batching(generation_config=config)
    manager.start()

    def continuous(count: int) -> None:
        for i in range(count):
            manager.add_request(prompts[i], max_new_tokens=new_tokens)
        for _ in range(count):
            manager.get_result(timeout=600)

    batched(8), continuous(8)  # warm both
    rows = []
    for count in (1, 8, 16):
        seconds = {}
        for name, run in (("generate", batched), ("continuous", continuous)):
            start = time.perf_counter()
            run(count)
            seconds[name] = time.perf_counter() - start
        tokens = count * new_tokens
        rows.append(f"| {count} | {tokens / seconds['generate']:.1f} | {tokens / seconds['continuous']:.1f} | "
                    f"{seconds['continuous'] / seconds['generate']:.2f}× |")
    manager.stop(block=True)
    return rows


async def bench_ray(task, checkpoint, settings, args, rng) -> tuple[list[str], dict]:
    """The local executor and a RayExecutor on one replica of the same checkpoint, A B B A on the
    same requests. Overhead = ray latency - local latency at the same quantile."""
    from ray import serve

    from bot.inference import ray_serve
    from bot.inference.executor import Executor
    from bot.inference.local import LocalBackend
    from bot.inference.ray_client import RayExecutor, call_size, fast_handle

    naive = in_own_thread(Naive, task, checkpoint)
    texts = heavy_tailed_texts(args.requests, naive.tokenizer, min(512, naive.tokenizer.model_max_length) - 24, rng)
    requests = [make_request(task, t, rng, args.new_tokens) for t in texts]
    del naive
    settings = dataclasses.replace(
        settings, checkpoints=dict(settings.checkpoints, **{task: str(checkpoint)}), device="cpu",
        queue_size_per_model=10_000, queue_size_total=10_000, max_queued_per_user=10_000,
        inference="ray", ray_address=None, ray_replicas={task: (1, 1)}, ray_cpus={task: 0.0},
    )
    local = Executor(settings, LocalBackend(settings))
    await local.start()
    await asyncio.to_thread(local.backend.warm_up, task)
    remote = RayExecutor(settings, only=(task,))
    remote.call_size = call_size(Settings())  # the default queue's, not this bench's huge one's
    await remote.start()

    async def on(executor, request):
        return await executor.submit(task, request, user_id=rng.randrange(1000))

    sides = {"local": lambda r: on(local, r), "ray": lambda r: on(remote, r)}
    await sides["ray"](requests[0])

    async def served() -> dict[str, tuple[int, int]]:  # side → (requests, batches) so far
        await asyncio.sleep(1.5 * ray_serve.REPORT_INTERVAL)  # the replica's counts reach the board
        await remote.refresh()
        lanes = {"local": local.snapshot()["lanes"][task], "ray": remote.snapshot()["lanes"][task]}
        return {side: (lane["requests"], lane["batches"]) for side, lane in lanes.items()}

    runs, per_call, mean_batch = [], [], []
    after = await served()
    for clients in [int(c) for c in args.concurrency.split(",")]:
        calls, before = remote.calls[task], after  # nothing ran since the last row's count
        runs.append(await measure_sides(sides, clients, lambda call, c=clients: closed_loop(c, requests, call), 0.0))
        sent = 2 * len(requests)  # measure_sides runs each side twice
        per_call.append(f"{clients} client(s) {sent / max(1, remote.calls[task] - calls):.1f}")
        after = await served()
        mean_batch.append(f"{clients} client(s) " + " / ".join(f"{size:.1f}" for size in mean_batches(before, after).values()))
    times = await paired_times(sides, requests, 100)
    differences = sorted(there - here for here, there in zip(times["local"], times["ray"]))
    paired = differences[len(differences) // 2], differences[int(len(differences) * 0.9)]
    group = ray_serve.deployment_of(settings)[task]
    handle = serve.get_deployment_handle(group, app_name=ray_serve.app_name(group))
    handle = fast_handle(handle)  # as RayExecutor's
    # The transport alone, both ways a handle can carry a call, alternating: over the replica's
    # gRPC server (ours) and as a Ray actor call returning a reference (Serve's default, and our
    # fallback: see RayExecutor.enqueue).
    pings: dict[str, list[float]] = {"actor call": [], "gRPC": []}
    ways = {"actor call": handle.options(_by_reference=True), "gRPC": handle.options(_by_reference=False)}
    for _ in range(200):
        for way, h in ways.items():
            began = time.perf_counter()
            await h.ping.remote()
            pings[way].append(time.perf_counter() - began)
    await local.shutdown()
    await remote.shutdown()  # also stops the pings' router: Serve caches one handle per deployment
    await asyncio.to_thread(serve.delete, ray_serve.app_name(group))  # the next task gets the cores
    rows = []
    for here, there in ((run["local"], run["ray"]) for run in runs):
        overhead = (there.quantile(0.5) - here.quantile(0.5), there.quantile(0.99) - here.quantile(0.99))
        rows.append(
            f"| {task} | {here.concurrency} | {here.rps:.1f} | {there.rps:.1f} | **{there.rps / here.rps:.2f}×** | "
            f"{_ms(here.quantile(0.5))} / {_ms(here.quantile(0.99))} | {_ms(there.quantile(0.5))} / {_ms(there.quantile(0.99))} | "
            f"{overhead[0] * 1000:+.1f} / {overhead[1] * 1000:+.1f} |"
        )
    return rows, {"paired": paired, "per_call": per_call, "mean_batch": mean_batch,
                  "pings": {way: (_ms(sorted(p)[len(p) // 2], 1), _ms(sorted(p)[int(len(p) * 0.99)], 1))
                            for way, p in pings.items()}}


async def paired_times(sides: dict, requests: list, pairs: int) -> dict[str, list[float]]:
    """Each request on every side in turn, one client, the order reversed every other request: a
    per-request comparison that a drift in machine speed, or which texts land near the middle of
    a distribution, does not move (a difference of two runs' p50s does)."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(pairs):
        request = requests[i % len(requests)]
        for side in (list(sides) if i % 2 else list(sides)[::-1]):
            began = time.perf_counter()
            await sides[side](request)
            times[side].append(time.perf_counter() - began)
    return times


def machine_line(args: argparse.Namespace, peaks: dict[str, float]) -> str:
    from bot.inference.device import native_bf16

    return (
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.python_version()}, native bf16: {native_bf16() or 'no'}; models: {args.size} random-weight "
        f"architectures; {args.requests} requests per row; matmul peaks (best of 1024³ and 2048³; with encoder "
        "tasks measured again before each, each task's rows against the best so far): "
        + ", ".join(f"{fmt} {flops / 1e9:.1f} GFLOP/s" for fmt, flops in peaks.items()) + "."
    )


async def bench_on_ray(args, settings, tasks, checkpoints, rng) -> list[str]:
    lines = ["| task | clients | local req/s | ray req/s | ray / local | local p50/p99 ms | ray p50/p99 ms | overhead p50/p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    import ray

    try:  # one local Ray for every task: a second one started seconds after the first could time out
        for task in dict.fromkeys(tasks):  # once each: Serve caches a handle per deployment, stopped after its rows
            if task in ENCODER_TASKS:
                rows, extra = await bench_ray(task, checkpoints[task], settings, args, rng)
                lines += rows
                p50, p90 = extra["paired"]
                notes.append(f"- {task}: paired overhead (ray - local on the same request, 100 pairs, one client): "
                             f"median {p50 * 1000:+.1f} ms, p90 {p90 * 1000:+.1f} ms")
                notes.append(f"- {task}: requests per call (those of one loop turn share one): "
                             + ", ".join(extra["per_call"]))
                notes.append(f"- {task}: mean batch, local / ray replica: " + ", ".join(extra["mean_batch"]))
                notes.append(f"- {task}: handle round trip of a call that does no work, p50 / p99 ms: "
                             + "; ".join(f"{way} {p50} / {p99}" for way, (p50, p99) in extra["pings"].items()))
    finally:
        ray.shutdown()
    return [*lines, "", *notes]


ENCODER_HEADER = ("| task | clients | naive fp32 req/s | executor {fmt} req/s | ratio | naive p50/p99 ms | "
                  "executor p50/p99 ms | naive % of fp32 peak | executor % of {fmt} peak | max loop lag ms (naive / executor) |")


async def bench(args: argparse.Namespace, settings: Settings) -> str:
    from bot.synthetic import build_checkpoints

    rng = random.Random(args.seed)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if args.quantize and "int8" not in formats:
        formats.append("int8")
    started = time.perf_counter()
    checkpoints = await asyncio.to_thread(in_own_thread, build_checkpoints, args.models_dir, args.size)
    peaks = best_peaks(formats)
    lines = [machine_line(args, peaks), ""]
    if args.inference == "ray":
        lines += await bench_on_ray(args, settings, tasks, checkpoints, rng)
        return "\n".join([*lines, f"- total bench time {time.perf_counter() - started:.0f} s"])
    tables: dict[str, list[str]] = {fmt: [] for fmt in formats}
    peers, goals, notes = [], [], []
    for task in tasks:
        if task not in ENCODER_TASKS:
            continue
        peaks = best_peaks(formats, peaks)  # again before each task: the best of two is less often a busy moment's
        out = await bench_encoder(task, checkpoints[task], settings, args, rng, peaks, formats)
        for fmt, rows in out["rows"].items():
            tables[fmt] += rows
        goals.append(out["goals"])
        peers += [out["peers"]] if "peers" in out else []
        batch = dict(out["mean_batch"])
        clients = batch.pop("clients", "?")
        notes.append(f"- {task}: mean executor batch at {clients} clients "
                     + ", ".join(f"{b:.1f} ({fmt})" for fmt, b in batch.items()))
        notes.append(f"- {task}: one client, paired ({out['pairs']} requests on each side in turn): executor / naive "
                     + ", ".join(f"{ratio:.2f}× ({fmt})" for fmt, ratio in out["one_client"].items()))
        if "agreement" in out:
            notes.append(f"- {task} int8 vs fp32: {out['agreement']}")
    for fmt, rows in tables.items():
        if rows:
            lines += [f"Executor in {fmt} against naive fp32:", "", ENCODER_HEADER.format(fmt=fmt), "|---" * 10 + "|", *rows, ""]
    if peers:
        sizes = " | ".join(f"pipeline batch_size {size} req/s" for size in PIPELINE_BATCH_SIZES)
        lines += [f"| task | naive req/s (1 client) | {sizes} | best batch_size | best pipeline / naive | "
                  "executor req/s (DTYPE=auto) | executor / best pipeline |",
                  "|---|---|" + "---|" * len(PIPELINE_BATCH_SIZES) + "---|---|---|---|", *peers, ""]
    if goals:
        lines += ["| task | DTYPE=auto picks | bf16 / fp32 executor (most clients) | auto / best pipeline | auto / naive fp32 | "
                  "bf16 % of bf16 peak | one client: auto / naive | p99 ms, auto vs naive (clients: auto ≤ naive) |",
                  "|---" * 8 + "|", *goals, ""]
    if "generate" in tasks:
        lines += ["| /generate | concurrent streams | aggregate tokens/s | vs one naive stream | p50 latency | max loop lag ms |",
                  "|---|---|---|---|---|---|"]
        lines += await bench_generate(checkpoints["generate"], settings, args, rng, formats)
        lines.append("")
    if args.continuous:
        lines += ["| prompts at once | batched generate() tokens/s | continuous batching tokens/s | generate() speed-up |",
                  "|---|---|---|---|"]
        lines += await asyncio.to_thread(in_own_thread, bench_continuous, checkpoints["generate"], args.new_tokens, rng)
        lines.append("")
    lines[0] = machine_line(args, peaks)  # the best peaks measured, which the last task's rows used
    lines += [*notes, f"- total bench time {time.perf_counter() - started:.0f} s"]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(bench(args, settings))
    print(report)
    if args.output:
        args.output.write_text(report + "\n")
    return 0
