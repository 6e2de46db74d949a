"""bf16 products in pieces of fixed row counts (bot/inference/products.py): what they cost.

The bot's own path (LocalBackend.run, packed, bf16) on real-size random weights, in one process:
one short text alone, the first 8 and the first 32 of the bench's heavy-tailed texts, with the
layers' products in one call per layer (as before products.py; on a CPU with AMX rows then differ
from alone), in pieces of only 64, only 128 or only 256 rows, and in the sizes the probe kept for each
layer's shape (the bot's way; printed first). Each case's median over rounds that take the
variants in turn (A B C D D C B A), so a drift in machine speed weighs on all alike. Also counts
the answers of the 32-text batch that differ from each text alone.

`ceiling TASK` instead: how close to the bf16 matmul peak (bench's, best of 1024³ and 2048³) the
products alone can come on the 32 texts' rows (1,170 tokens), each layer of the model in turn, in one
call per layer, in pieces of 128 rows and in the probe's sizes, against the whole batch through the
bot (products, attention and the rest; FLOPs as the bench counts them).

PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/pieces.py sentiment
PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/pieces.py ceiling sentiment
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bot import bench
from bot.inference import products
from bot.inference.tasks import TASKS
from bot.inference.tasks.base import BatchContext
from bot.inference.torch_threads import in_own_thread
from bot.settings import load_settings
from bot.synthetic import build_checkpoints

MODELS = Path.home() / ".cache/automodel-bot/bench-models"  # where `automodel-bot bench --size real` builds them
# None: one call per layer; "addmm": 128 rows, not prepacked; a size: only that one; "probed": the bot's
PIECES = (None, "addmm", 64, 128, 256, "probed")
ROUNDS = 8


async def bf16_batch(task: str) -> tuple[Any, list, float]:
    """The task's bf16 executor on real-size random weights, the first 32 of the bench's heavy-tailed
    texts prepared for it, and their useful FLOPs as the bench counts them."""
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    texts = bench.heavy_tailed_texts(64, naive.tokenizer, 512 - 24, random.Random(0))[:32]
    params = sum(p.numel() for name, p in naive.model.named_parameters() if "embeddings" not in name)
    flops = sum(bench.encoder_flops(naive.model.config, len(naive.tokenizer(t)["input_ids"]), params) for t in texts)
    del naive
    executor = await bench.started_executor(task, checkpoint, load_settings({}), "bf16")
    prepared = [executor.backend.prepare(task, TASKS[task].sample.__class__(text)) for text in texts]
    return executor, prepared, flops


async def main(task: str) -> None:
    executor, prepared, _ = await bf16_batch(task)
    backend = executor.backend
    print(f"{task}: products {backend.products(task)} (the probe's verdict on this CPU); piece sizes kept per "
          f"(inputs, outputs, Linear, bias, dtype): {products._sizes_kept}")
    short = min(prepared, key=lambda p: abs(len(p.rows[0]["input_ids"]) - 20))
    cases = {"one text": [short], "8 texts": prepared[:8],
             "32 texts": prepared}
    in_pieces, prepacked = products.in_pieces, products._prepacked
    times: dict[tuple[object, str], list[float]] = {}
    differ: dict[object, int] = {}

    def use(piece) -> None:
        if piece is None:
            products.in_pieces = lambda weight, bias, sizes=(128,): products.plain(weight, bias)
        elif piece == "probed":
            products.in_pieces = in_pieces
        else:
            size = piece if isinstance(piece, int) else 128
            products.in_pieces = lambda weight, bias, sizes=(128,), size=size: in_pieces(weight, bias, (size,))
        products._prepacked = (lambda weight, bias: None) if piece == "addmm" else prepacked
        products._computes.clear()  # each layer builds its compute again, the new way

    for turn in range(ROUNDS):
        for piece in PIECES if turn % 2 == 0 else PIECES[::-1]:
            use(piece)
            for name, batch in cases.items():
                backend.run(task, batch, BatchContext(len(batch)))  # warm
                times.setdefault((piece, name), []).append(_timed(lambda batch=batch: backend.run(task, batch, BatchContext(len(batch)))))
            if turn == 0:
                alone = [backend.run(task, [p], BatchContext(1))[0] for p in prepared]
                together = backend.run(task, prepared, BatchContext(len(prepared)))
                differ[piece] = sum(a != b for a, b in zip(alone, together))
    use("probed")
    tokens = {name: sum(len(p.rows[0]["input_ids"]) for p in batch) for name, batch in cases.items()}
    print("| products | " + " | ".join(f"{n} ({tokens[n]} tokens) ms" for n in cases) + " | answers of the 32 differing from alone |")
    print("|---|" + "---|" * (len(cases) + 1))
    for piece in PIECES:
        cells = [f"{statistics.median(times[(piece, n)]) * 1000:.1f}" for n in cases]
        label = {None: "one call per layer", "addmm": "pieces of 128 rows, addmm",
                 "probed": "pieces of the sizes the probe kept, prepacked"}.get(piece, f"pieces of {piece} rows only, prepacked")
        print(f"| {label} | " + " | ".join(cells) + f" | {differ[piece]}/32 |")
    await executor.shutdown()


async def ceiling(task: str) -> None:
    executor, prepared, flops = await bf16_batch(task)
    backend = executor.backend
    peak = in_own_thread(bench.matmul_peak_flops, "bf16")  # torch work on threads that end (torch_threads.py)
    tokens = sum(len(p.rows[0]["input_ids"]) for p in prepared)
    layers = products._layers(backend._models[backend._key(task)].model)
    ways = {"one call per layer": lambda weight, bias, shape: products.plain(weight, bias),
            "pieces of 128 rows": lambda weight, bias, shape: products.in_pieces(weight, bias),
            "pieces of the probe's sizes": lambda weight, bias, shape: products.in_pieces(weight, bias, products._kept_sizes(shape))}
    work = sum(2 * tokens * module.weight.numel() for module, _ in layers)

    def products_only(make) -> float:
        with torch.inference_mode():
            rows = {inputs: torch.randn(tokens, inputs).bfloat16() for inputs in {shape[0] for _, shape in layers}}
            computes = [(make((m.weight if shape[2] else m.weight.t()).detach(), m.bias, shape), rows[shape[0]])
                        for m, shape in layers]

            def one_pass() -> None:
                for compute, inputs in computes:
                    compute(inputs)

            one_pass()
            return statistics.median(_timed(one_pass) for _ in range(7))

    print(f"{task}, 32 texts ({tokens} tokens), bf16 peak {peak / 1e9:.0f} GFLOP/s")
    print("| what | ms | GFLOP/s | % of bf16 peak |\n|---|---|---|---|")
    for way, make in ways.items():
        seconds = in_own_thread(products_only, make)
        print(f"| products only, {way} | {seconds * 1000:.0f} | {work / seconds / 1e9:.0f} | {work / seconds / peak:.0%} |")
    backend.run(task, prepared, BatchContext(len(prepared)))
    seconds = statistics.median(_timed(lambda: backend.run(task, prepared, BatchContext(len(prepared)))) for _ in range(7))
    print(f"| the whole batch through the bot | {seconds * 1000:.0f} | {flops / seconds / 1e9:.0f} | {flops / seconds / peak:.0%} |")
    await executor.shutdown()


def _timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


if __name__ == "__main__":
    if sys.argv[1:2] == ["ceiling"]:
        asyncio.run(ceiling(sys.argv[2] if len(sys.argv) > 2 else "sentiment"))
    else:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sentiment"))
