"""Torch's OpenMP pools: what a second thread running torch work costs every op (BENCHMARKS.md
"Torch work on more than one thread"). Two parts:

  ops        small ops (layer norm, tanh, one-query SDPA, an 8-row addmm) timed on the main
             thread, then on a second thread: once two threads have run parallel regions,
             libgomp counts more OpenMP threads than CPUs and stops spinning between regions.
  generate   the executor on real-size gpt2, 8 /generate requests of 32 tokens at once, in fp32
             and bf16: model warmed up on another thread first (as `bench` does), or only ever
             run on the lane's own worker thread; each case in a process of its own. Before
             bot/inference/torch_threads.py the first case was the slow one; since, the two match.

PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/thread_pools.py ops
PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/thread_pools.py generate
"""

import asyncio
import dataclasses
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch


def per_op_us(op, reps: int = 300) -> float:
    for _ in range(10):
        op()
    began = time.perf_counter()
    for _ in range(reps):
        op()
    return round((time.perf_counter() - began) / reps * 1e6, 1)


def ops() -> dict[str, float]:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        weight, bias, rows = torch.randn(768, 3072, dtype=dtype), torch.randn(3072, dtype=dtype), torch.randn(8, 768, dtype=dtype)
        norm, query, keys = torch.nn.LayerNorm(768).to(dtype), torch.randn(1, 12, 1, 64, dtype=dtype), torch.randn(1, 12, 40, 64, dtype=dtype)
        name = str(dtype).removeprefix("torch.")
        cases = {
            "addmm 8 rows": lambda: torch.addmm(bias, rows, weight),  # noqa: B023 (called at once, below)
            "layer norm": lambda: norm(rows),  # noqa: B023
            "tanh": lambda: torch.tanh(rows),  # noqa: B023
            "sdpa, one query": lambda: torch.nn.functional.scaled_dot_product_attention(query, keys, keys),  # noqa: B023
        }
        with torch.inference_mode():
            out.update({f"{name} {case}": per_op_us(op) for case, op in cases.items()})
    return out


async def generate(fmt: str, warm_elsewhere: bool) -> float:
    from bot import bench
    from bot.inference.executor import Executor
    from bot.inference.local import LocalBackend
    from bot.settings import load_settings
    from bot.synthetic import build_checkpoints

    checkpoint = build_checkpoints(Path.home() / ".cache/automodel-bot/bench-models", "real")["generate"]
    rng = random.Random(1)
    base = load_settings({})
    dtype, quantize = bench.FORMATS[fmt]
    settings = dataclasses.replace(base, checkpoints={**base.checkpoints, "generate": str(checkpoint)}, device="cpu",
                                   dtype=dtype, quantize=quantize, max_queued_per_user=100)
    executor = Executor(settings, LocalBackend(settings))
    await executor.start()
    if warm_elsewhere:
        await asyncio.to_thread(executor.backend.warm_up, "generate")
    requests = [bench.make_request("generate", " ".join(rng.choice(bench.WORDS) for _ in range(rng.randint(4, 16))), rng, 32)
                for _ in range(8)]
    rates = []
    for _ in range(3):  # the first round loads the model when it was not warmed up
        began = time.perf_counter()
        results = await asyncio.gather(*(executor.submit("generate", r, user_id=i) for i, r in enumerate(requests)))
        rates.append(sum(result.tokens for result in results) / (time.perf_counter() - began))
    await executor.shutdown()
    return round(max(rates[1:]), 1)


if __name__ == "__main__":
    if sys.argv[1] == "ops":
        print("main thread  ", ops())
        second: list = []
        thread = threading.Thread(target=lambda: second.append(ops()))
        thread.start()
        thread.join()
        print("second thread", second[0])
    elif sys.argv[1] == "generate-one":  # one process per case: a process's pools never go away
        print(asyncio.run(generate(sys.argv[2], sys.argv[3] == "elsewhere")))
    else:
        for fmt in ("fp32", "bf16"):
            rates = {where: subprocess.run([sys.executable, __file__, "generate-one", fmt, where], capture_output=True,
                                           text=True, check=True).stdout.split()[-1] for where in ("elsewhere", "lane")}
            print(f"generate {fmt}, 8 requests at once, tokens/s: warmed up on another thread {rates['elsewhere']}, "
                  f"only on the lane's thread {rates['lane']}")
