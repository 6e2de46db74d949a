"""Where a packed batch's time goes, fp32 against bf16 (issue #12's "bf16 ≥ 2.0× fp32" goal).

  batch TASK      the bot's own path (LocalBackend.run) on the first 32 of the bench's heavy-tailed
                  texts, real-size random weights, in fp32 then bf16: the batch's time (median of 5)
                  and torch's profile of one run, by operator.
  sdpa            one row's attention (12 heads of 64, the shape of distilbert and bert-base) at
                  several lengths: torch's CPU flash kernel in fp32 and in bf16, and bf16 rows
                  attended in fp32 (upcast, attend, cast back).

PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/where_time_goes.py batch sentiment
PYTHONPATH=. .venv/bin/python scripts/precision/where_time_goes.py sdpa
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bot import bench
from bot.inference.tasks import TASKS
from bot.inference.tasks.base import BatchContext
from bot.settings import load_settings
from bot.synthetic import build_checkpoints

MODELS = Path.home() / ".cache/automodel-bot/bench-models"  # where `automodel-bot bench --size real` builds them


def median_time(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def batch(task: str) -> None:
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    texts = bench.heavy_tailed_texts(64, naive.tokenizer, 512 - 24, random.Random(0))[:32]
    del naive
    for fmt in ("fp32", "bf16"):
        executor = await bench.started_executor(task, checkpoint, load_settings({}), fmt)
        backend = executor.backend
        prepared = [backend.prepare(task, TASKS[task].sample.__class__(text)) for text in texts]

        def run(backend=backend, prepared=prepared) -> None:
            backend.run(task, prepared, BatchContext(len(prepared)))

        run()
        tokens = sum(len(p.rows[0]["input_ids"]) for p in prepared)
        print(f"{task} {fmt}: batch of {len(prepared)} ({tokens} tokens) {median_time(run, 5) * 1000:.0f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            run()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        await executor.shutdown()


def sdpa() -> None:
    print("| row length | flash fp32 µs | flash bf16 µs | bf16 attended in fp32 µs |\n|---|---|---|---|")
    for length in (8, 16, 37, 64, 128, 256, 500):
        q, k, v = (torch.randn(1, 12, length, 64) for _ in range(3))
        qb, kb, vb = (x.bfloat16() for x in (q, k, v))

        def upcast(qb=qb, kb=kb, vb=vb) -> torch.Tensor:
            return F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float()).bfloat16()

        sides = (partial(F.scaled_dot_product_attention, q, k, v), partial(F.scaled_dot_product_attention, qb, kb, vb), upcast)
        with torch.inference_mode():
            for side in sides:
                median_time(side, 20)  # warm
            micros = [median_time(side, 200) * 1e6 for side in sides]
        print(f"| {length} | " + " | ".join(f"{m:.0f}" for m in micros) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["batch"]:
        asyncio.run(batch(sys.argv[2] if len(sys.argv) > 2 else "sentiment"))
    else:
        sdpa()
