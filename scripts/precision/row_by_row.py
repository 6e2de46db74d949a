"""Row-by-row attention (bot/inference/attention.py) in bf16 on the real-size random-weight models
that `automodel-bot bench` builds, two parts:

  identity TASK   each text padded to several widths and in mixed batches (one of 32 heavy-tailed
                  lengths, as the executor packs at 32 clients), row by row, against the
                  plain SDPA model on the text alone and unpadded: how many answers differ (0 expected)
                  and by how much; plain SDPA at the same widths for contrast.
  identity generate
                  real-size gpt2: prompts in mixed batches, padded on the left, against each alone,
                  unpadded and as two copies: rows whose scores differ at any of 16 greedy steps.
  two-copies      real-size gpt2, one prompt alone: what running a lone row's products on two copies costs.
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

  speed-generate generate STREAMS REQUESTS
                  /generate (gpt2): naive fp32, the fp32 executor, the bf16 executor under the same-width
                  rule (the code before row-by-row causal attention) and row by row (any widths batch).
                  Requests of 32 new tokens each, so req/s × 32 is tokens/s.

PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision/row_by_row.py speed sentiment 1,8,32 128
PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python scripts/precision/row_by_row.py speed-generate generate 1,8 32
"""

import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import torch

from bot import bench
from bot.inference.attention import MEASURED, rowwise, use_rowwise
from bot.inference.tasks import TASKS
from bot.settings import load_settings
from bot.synthetic import build_checkpoints

MODELS = Path.home() / ".cache/automodel-bot/bench-models"


def bf16_model(task: str, row_by_row: bool) -> Any:
    """The task's real-size model in bf16 on 2 threads (as the bench), with plain SDPA or switched to
    row-by-row attention (the bot's way)."""
    import transformers

    torch.set_num_threads(2)
    auto = getattr(transformers, TASKS[task].auto_class_name)
    model = auto.from_pretrained(build_checkpoints(MODELS, "real")[task], attn_implementation="sdpa").eval()
    model = model.to(torch.bfloat16)
    if row_by_row:
        assert use_rowwise(model)
    return model


def identity(task: str) -> None:
    import transformers

    plain, rows = bf16_model(task, row_by_row=False), bf16_model(task, row_by_row=True)

    def out(model, ids, mask, n):  # the row's real positions of the model's first output
        result = model(input_ids=ids, attention_mask=mask)
        first = next(v for v in result.values() if torch.is_tensor(v))
        return first[:, :n].float() if first.dim() > 2 or task == "ask" else first.float()

    tokenizer = transformers.AutoTokenizer.from_pretrained(plain.name_or_path)
    texts = bench.heavy_tailed_texts(32, tokenizer, 500, random.Random(5))
    full = [len(tokenizer(t, truncation=True, max_length=500)["input_ids"]) for t in texts]  # a full batch's lengths
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
            # mixed batches of six lengths, and one of 32 heavy-tailed lengths (the executor's full batch)
            for lengths in [[int(x) for x in torch.randint(3, 120, (6,))] for _ in range(3)] + [full]:
                ids = torch.randint(1000, 2000, (len(lengths), max(lengths)))
                for i, n in enumerate(lengths):
                    ids[i, n:] = 0
                mask = (ids != 0).long()
                batched = out(model, ids, mask, ids.shape[1])
                for i, n in enumerate(lengths):
                    alone = out(plain, ids[i:i + 1, :n], mask[i:i + 1, :n], n)
                    mine = batched[i:i + 1, :n] if batched.dim() > 2 or task == "ask" else batched[i:i + 1]
                    d = (mine - alone).abs().max().item()
                    total, differ, worst = total + 1, differ + (d > 0), max(worst, d)
        print(f"{task} bf16, {name}: {differ}/{total} answers differ from the text alone and unpadded, worst {worst:.2e}")


def identity_generate() -> None:
    """Real-size gpt2 in bf16: greedy steps of prompts in mixed batches (padded on the left, as the bot
    batches them) against each prompt alone and unpadded on the plain SDPA model, run as two copies
    (a single row's products take another kernel; the bot and its scripts run a lone row so too):
    rows whose scores differ at any of 16 steps."""
    plain, rows = bf16_model("generate", row_by_row=False), bf16_model("generate", row_by_row=True)

    def steps(model, prompts):  # [rows, 16 steps, vocabulary]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             pad_token_id=0, return_dict_in_generate=True, output_logits=True)
        return torch.stack(out.logits, 1).float()

    torch.manual_seed(0)
    batches = [[int(n) for n in torch.randint(1, 60, (size,))] for size in (2, 3, 5, 8, 8, 16)] + [[1, 7, 100, 3]]
    with torch.inference_mode():
        for name, model in (("plain SDPA", plain), ("row by row", rows)):
            differ = total = 0
            worst = 0.0
            for lengths in batches:
                prompts = [torch.randint(1000, 20000, (n,)).tolist() for n in lengths]
                batched = steps(model, prompts)
                for i, prompt in enumerate(prompts):
                    d = (batched[i] - steps(plain, [prompt, prompt])[0]).abs().max().item()
                    total, differ, worst = total + 1, differ + (d > 0), max(worst, d)
            print(f"generate bf16, {name}: {differ}/{total} rows' scores differ from the prompt alone and unpadded "
                  f"at some step of 16, worst {worst:.2e}", flush=True)


def two_copies_cost() -> None:
    """Real-size gpt2 in bf16, row by row, one prompt alone, 32 greedy tokens: a lone row's matrix
    products on two copies (the bot) against on one row, sides A B B A three times."""
    import time

    model = bf16_model("generate", row_by_row=True)
    copies = {module: module.forward for module in model.modules() if getattr(module, "_automodel_two_rows", False)}
    ids = torch.randint(1000, 20000, (1, 12))

    def rate(two: bool) -> float:
        for module, forward in copies.items():
            module.forward = forward if two else type(module).forward.__get__(module)
        started = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32,
                       do_sample=False, pad_token_id=0)
        return 32 / (time.perf_counter() - started)

    with torch.inference_mode():
        rate(True)
        sides = {True: 0.0, False: 0.0}
        for two in (True, False, False, True) * 3:
            sides[two] += rate(two) / 6
    print(f"generate bf16, one prompt alone: two copies {sides[True]:.1f} tokens/s, one row {sides[False]:.1f}; "
          f"{sides[True] / sides[False]:.2f}x")


async def executor_of(task: str, checkpoint, fmt: str, layout: str):
    """A warm executor in `fmt` whose model runs "packed" or "row by row" (the bot's way: encoders
    packed, decoders row by row in half precision), "padded" (encoders row by row in half precision,
    SDPA over the batch in fp32; the code before packing) or "same width" (SDPA over the padded batch
    under the same-width rule, a lone decoder row's products as they come: the code before
    row-by-row attention)."""
    executor = await bench.started_executor(task, checkpoint, load_settings(), fmt)
    models = [loaded.model for loaded in executor.backend._models.values()]
    if layout in ("packed", "row by row"):
        assert all(rowwise(model) for model in models)
        assert executor.backend.batch_rule(task) == ("packed" if layout == "packed" else "any")
        return executor
    for model in models:
        if model.config.model_type in MEASURED:  # without the encoder's packing hooks
            stack = getattr(model.base_model, MEASURED[model.config.model_type])
            stack._forward_pre_hooks.clear()
            stack._forward_hooks.clear()
        else:  # a decoder: one row's matrix products on one row
            for module in model.modules():
                vars(module).pop("forward", None)
        if layout == "same width" or fmt == "fp32":
            model.set_attn_implementation("sdpa")
    if layout == "padded":
        executor.backend.batch_rule = lambda task: "any"
    assert executor.backend.batch_rule(task) == ("any" if layout == "padded" else "same width")
    return executor


async def compare(task: str, clients: list[int], n: int, layouts: dict[str, tuple[str, str]],
                  ratios: list[tuple[str, str]]) -> None:
    """Naive fp32 and one executor per named (format, layout), closed loop on the same heavy-tailed
    requests, with the req/s ratios of the named pairs."""
    rng = random.Random(11)
    checkpoint = build_checkpoints(MODELS, "real")[task]
    naive = bench.Naive(task, checkpoint)
    if task == "generate":  # the bench's prompts: 4-16 words, 32 new tokens each
        texts = [" ".join(rng.choice(bench.WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n)]
        requests = [bench.make_request(task, t, rng, 32) for t in texts]
    else:
        requests = [bench.make_request(task, t, rng, 20) for t in bench.heavy_tailed_texts(n, naive.tokenizer, 512 - 24, rng)]
    executors = {name: await executor_of(task, checkpoint, fmt, layout) for name, (fmt, layout) in layouts.items()}

    def via(executor):
        async def call(request):
            return await executor.submit(task, request, user_id=rng.randrange(1000))
        return call

    sides = {"naive fp32": naive, **{name: via(executor) for name, executor in executors.items()}}
    for c in clients:
        got = await bench.measure_sides(sides, c, lambda call, c=c: bench.closed_loop(c, requests, call), 0.0)
        print(f"{task} {c} clients: " + ", ".join(f"{k} {v.rps:.1f} req/s (p99 {v.quantile(0.99) * 1000:.0f} ms)"
                                                  for k, v in got.items())
              + "; " + ", ".join(f"{a} / {b} {got[a].rps / got[b].rps:.2f}x" for a, b in ratios), flush=True)
    for executor in executors.values():
        await executor.shutdown()


SPEED = {  # name → (format, layout), and the ratios printed
    "speed": ({"fp32 padded": ("fp32", "padded"), "bf16 same width": ("bf16", "same width"),
               "bf16 row by row padded": ("bf16", "padded"), "bf16 packed": ("bf16", "packed")},
              [("bf16 packed", "bf16 row by row padded"), ("bf16 packed", "bf16 same width"),
               ("bf16 packed", "fp32 padded")]),
    "speed-fp32": ({"fp32 padded": ("fp32", "padded"), "fp32 packed": ("fp32", "packed")},
                   [("fp32 packed", "fp32 padded")]),
    "speed-generate": ({"fp32": ("fp32", "padded"), "bf16 same width": ("bf16", "same width"),
                        "bf16 row by row": ("bf16", "row by row")},
                       [("bf16 row by row", "bf16 same width"), ("bf16 row by row", "fp32"), ("bf16 same width", "fp32")]),
}


if __name__ == "__main__":
    if sys.argv[1] == "identity":
        identity_generate() if sys.argv[2] == "generate" else identity(sys.argv[2])
    elif sys.argv[1] == "two-copies":
        two_copies_cost()
    else:
        layouts, ratios = SPEED[sys.argv[1]]
        asyncio.run(compare(sys.argv[2], [int(c) for c in sys.argv[3].split(",")], int(sys.argv[4]), layouts, ratios))
