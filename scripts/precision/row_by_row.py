"""Row-by-row attention (bot/inference/attention.py) in bf16 on the real-size random-weight models
that `automodel-bot bench` builds, two parts:

  identity TASK   each text padded to several widths and in mixed batches, row by row, against the
                  plain SDPA model on the text alone and unpadded: how many answers differ (0 expected)
                  and by how much; plain SDPA at the same widths for contrast.
  speed TASK CLIENTS REQUESTS
                  one process, closed loop, sides A B C D E E D C B A on the same heavy-tailed requests:
                  naive fp32, the fp32 executor on padded rows, the bf16 executor with SDPA over the padded batch
                  (the same-width rule, rows padded to 8: the code before row-by-row attention), the
                  bf16 executor row by row on padded rows (any widths batch, padding under 20 %:
                  the code before packing) and row by row packed (no padding computed at all).

PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision/row_by_row.py identity sentiment
  speed-fp32 TASK CLIENTS REQUESTS
                  the same in fp32: naive, the executor on padded rows with SDPA over the batch,
                  and the executor packed (row by row, no padding computed).

PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision/row_by_row.py speed sentiment 1,8,32 128
"""

import asyncio
import random
import sys
from pathlib import Path

import torch

from bot import bench
from bot.inference.attention import MEASURED, use_rowwise
from bot.inference.tasks import TASKS
from bot.settings import load_settings
from bot.synthetic import build_checkpoints

MODELS = Path.home() / ".cache/automodel-bot/bench-models"


def identity(task: str) -> None:
    import transformers

    torch.set_num_threads(2)
    checkpoint = build_checkpoints(MODELS, "real")[task]
    auto = getattr(transformers, TASKS[task].auto_class_name)
    plain = auto.from_pretrained(checkpoint, attn_implementation="sdpa").eval().to(torch.bfloat16)
    rows = auto.from_pretrained(checkpoint, attn_implementation="sdpa").eval().to(torch.bfloat16)
    assert use_rowwise(rows)

    def out(model, ids, mask, n):  # the row's real positions of the model's first output
        result = model(input_ids=ids, attention_mask=mask)
        first = next(v for v in result.values() if torch.is_tensor(v))
        return first[:, :n].float() if first.dim() > 2 or task == "ask" else first.float()

    torch.manual_seed(0)
    for name, model in (("plain SDPA", plain), ("row by row", rows)):
        differ = total = 0
        worst = 0.0
        with torch.inference_mode():
            for n in (5, 10, 13, 21, 37, 100):
                ids = torch.randint(1000, 2000, (1, n))
                alone = out(plain, ids, torch.ones(1, n, dtype=torch.long), n)
                for width in (16 * (-(-n // 16)), 128, 256):
                    padded = torch.zeros(1, width, dtype=torch.long)
                    padded[:, :n] = ids
                    mask = (padded != 0).long()
                    d = (out(model, padded, mask, n) - alone).abs().max().item()
                    total, differ, worst = total + 1, differ + (d > 0), max(worst, d)
            for _ in range(3):  # mixed batches of six lengths
                lengths = [int(x) for x in torch.randint(3, 120, (6,))]
                ids = torch.randint(1000, 2000, (6, max(lengths)))
                for i, n in enumerate(lengths):
                    ids[i, n:] = 0
                mask = (ids != 0).long()
                for i, n in enumerate(lengths):
                    alone = out(plain, ids[i:i + 1, :n], mask[i:i + 1, :n], n)
                    d = (out(model, ids, mask, n)[i:i + 1] - alone).abs().max().item()
                    total, differ, worst = total + 1, differ + (d > 0), max(worst, d)
        print(f"{task} bf16, {name}: {differ}/{total} answers differ from the text alone and unpadded, worst {worst:.2e}")


async def speed(task: str, clients: list[int], n: int) -> None:
    rng = random.Random(11)
    settings = load_settings()
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    requests = [bench.make_request(task, t, rng, 20) for t in bench.heavy_tailed_texts(n, naive.tokenizer, 512 - 24, rng)]
    rows = await bench.started_executor(task, checkpoint, settings, "bf16")
    padded = await bench.started_executor(task, checkpoint, settings, "bf16")
    without_packing(padded)
    padded.backend.batch_rule = lambda task: "any"
    same_width = await bench.started_executor(task, checkpoint, settings, "bf16")
    without_packing(same_width, "sdpa")  # SDPA over the padded batch, as before
    assert same_width.backend.batch_rule(task) == "same width" and rows.backend.batch_rule(task) == "packed"
    fp32 = await bench.started_executor(task, checkpoint, settings, "fp32")
    without_packing(fp32, "sdpa")  # padded, as before packing
    fp32.backend.batch_rule = lambda task: "any"

    def via(executor):
        async def call(request):
            return await executor.submit(task, request, user_id=rng.randrange(1000))
        return call

    sides = {"naive fp32": naive, "fp32 padded": via(fp32), "bf16 same width": via(same_width),
             "bf16 row by row padded": via(padded), "bf16 packed": via(rows)}
    for c in clients:
        got = await bench.measure_sides(sides, c, lambda call, c=c: bench.closed_loop(c, requests, call), 0.0)
        print(f"{task} {c} clients: " + ", ".join(f"{k} {v.rps:.1f} req/s (p99 {v.quantile(0.99) * 1000:.0f} ms)"
                                                  for k, v in got.items())
              + f"; packed / padded {got['bf16 packed'].rps / got['bf16 row by row padded'].rps:.2f}x"
              + f", packed / same width {got['bf16 packed'].rps / got['bf16 same width'].rps:.2f}x"
              + f", packed / fp32 padded {got['bf16 packed'].rps / got['fp32 padded'].rps:.2f}x", flush=True)
    for executor in (rows, padded, same_width, fp32):
        await executor.shutdown()


def without_packing(executor, attention: str | None = None) -> None:
    """The executor's models without the encoder's packing hooks (rows padded, as before packing),
    and with `attention` ("sdpa": over the padded batch) in place of row by row if given."""
    for loaded in executor.backend._models.values():
        stack = getattr(loaded.model.base_model, MEASURED[loaded.model.config.model_type])
        stack._forward_pre_hooks.clear()
        stack._forward_hooks.clear()
        if attention:
            loaded.model.set_attn_implementation(attention)


def with_packing(executor) -> None:
    for loaded in executor.backend._models.values():
        assert use_rowwise(loaded.model)
    executor.backend.batch_rule = lambda task: "packed"


async def speed_fp32(task: str, clients: list[int], n: int) -> None:
    """fp32 only: naive, the executor on padded rows (SDPA over the batch) and packed."""
    rng = random.Random(11)
    settings = load_settings()
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    requests = [bench.make_request(task, t, rng, 20) for t in bench.heavy_tailed_texts(n, naive.tokenizer, 512 - 24, rng)]
    padded = await bench.started_executor(task, checkpoint, settings, "fp32")
    without_packing(padded, "sdpa")
    padded.backend.batch_rule = lambda task: "any"
    packed = await bench.started_executor(task, checkpoint, settings, "fp32")
    with_packing(packed)

    def via(executor):
        async def call(request):
            return await executor.submit(task, request, user_id=rng.randrange(1000))
        return call

    sides = {"naive fp32": naive, "fp32 padded": via(padded), "fp32 packed": via(packed)}
    for c in clients:
        got = await bench.measure_sides(sides, c, lambda call, c=c: bench.closed_loop(c, requests, call), 0.0)
        print(f"{task} {c} clients: " + ", ".join(f"{k} {v.rps:.1f} req/s (p99 {v.quantile(0.99) * 1000:.0f} ms)"
                                                  for k, v in got.items())
              + f"; packed / padded {got['fp32 packed'].rps / got['fp32 padded'].rps:.2f}x", flush=True)
    for executor in (padded, packed):
        await executor.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "identity":
        identity(sys.argv[2])
    elif sys.argv[1] == "speed-fp32":
        asyncio.run(speed_fp32(sys.argv[2], [int(c) for c in sys.argv[3].split(",")], int(sys.argv[4])))
    else:
        asyncio.run(speed(sys.argv[2], [int(c) for c in sys.argv[3].split(",")], int(sys.argv[4])))
