"""bf16 products in pieces of a fixed row count (bot/inference/products.py): what they cost.

The bot's own path (LocalBackend.run, packed, bf16) on real-size random weights, in one process:
one short text alone, the first 8 and the first 32 of the bench's heavy-tailed texts, with the
layers' products in one call per layer (as before products.py; on a CPU with AMX rows then differ
from alone) and in pieces of 64, 128 and 256 rows. Each case's median over rounds that take the
variants in turn (A B C D D C B A), so a drift in machine speed weighs on all alike. Also counts
the answers of the 32-text batch that differ from each text alone.

PYTHONPATH=. HF_HUB_OFFLINE=1 LOG_LEVEL=WARNING .venv/bin/python scripts/precision/pieces.py sentiment
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

from bot import bench
from bot.inference import products
from bot.inference.tasks import TASKS
from bot.inference.tasks.base import BatchContext
from bot.settings import load_settings
from bot.synthetic import build_checkpoints

MODELS = Path.home() / ".cache/automodel-bot/bench-models"  # where `automodel-bot bench --size real` builds them
PIECES = (None, "addmm", 64, 128, 256)  # None: one call per layer; "addmm": 128 rows, not prepacked
ROUNDS = 4


async def main(task: str) -> None:
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    texts = bench.heavy_tailed_texts(64, naive.tokenizer, 512 - 24, random.Random(0))[:32]
    del naive
    executor = await bench.started_executor(task, checkpoint, load_settings({}), "bf16")
    backend = executor.backend
    print(f"{task}: products {backend.products(task)} (the probe's verdict on this CPU)")
    prepared = [backend.prepare(task, TASKS[task].sample.__class__(text)) for text in texts]
    short = min(prepared, key=lambda p: abs(len(p.rows[0]["input_ids"]) - 20))
    cases = {"one text": [short], "8 texts": prepared[:8],
             "32 texts": prepared}
    in_pieces, prepacked = products.in_pieces, products._prepacked
    times: dict[tuple[object, str], list[float]] = {}
    differ: dict[object, int] = {}

    def use(piece) -> None:
        products.in_pieces = (lambda weight, bias, piece=None: products.plain(weight, bias)) if piece is None else in_pieces
        products._prepacked = (lambda weight, bias, piece: None) if piece == "addmm" else prepacked
        products.PIECE_ROWS = piece if isinstance(piece, int) else 128
        products._computes.clear()  # each layer builds its compute again, the new way

    for turn in range(ROUNDS):
        for piece in PIECES if turn % 2 == 0 else PIECES[::-1]:
            use(piece)
            for name, batch in cases.items():
                backend.run(task, batch, BatchContext(len(batch)))  # warm
                began = time.perf_counter()
                backend.run(task, batch, BatchContext(len(batch)))
                times.setdefault((piece, name), []).append(time.perf_counter() - began)
            if turn == 0:
                alone = [backend.run(task, [p], BatchContext(1))[0] for p in prepared]
                together = backend.run(task, prepared, BatchContext(len(prepared)))
                differ[piece] = sum(a != b for a, b in zip(alone, together))
    use(128)
    tokens = {name: sum(len(p.rows[0]["input_ids"]) for p in batch) for name, batch in cases.items()}
    print("| products | " + " | ".join(f"{n} ({tokens[n]} tokens) ms" for n in cases) + " | answers of the 32 differing from alone |")
    print("|---|" + "---|" * (len(cases) + 1))
    for piece in PIECES:
        cells = [f"{statistics.median(times[(piece, n)]) * 1000:.1f}" for n in cases]
        label = {None: "one call per layer", "addmm": "pieces of 128 rows, addmm"}.get(piece, f"pieces of {piece} rows, prepacked")
        print(f"| {label} | " + " | ".join(cells) + f" | {differ[piece]}/32 |")
    await executor.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sentiment"))
