"""/generate: AutoModelForCausalLM → a continuation of the prompt, streamed while it is produced.

Requests are batched with left padding. Each row keeps its own temperature, top_p, seed and
max_new_tokens: sampling is done per row by `RowSampler` (so a seeded request gives the same text
whatever it is batched with) and `RowStopper` ends rows that are done, cancelled or over budget.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from bot.inference.tasks.base import (
    BatchContext,
    ModelInfo,
    Prepared,
    Task,
    check_fits,
    check_range,
    clean_text,
    encoding_row,
    model_device,
    pad_multiple,
    pad_rows,
)

TOP_K = 50  # candidates a sampled token is drawn from, before top_p
_HASH_MOD = 2**31


@dataclass
class GenerateRequest:
    prompt: str
    max_new_tokens: int = 50
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    seed: int | None = None
    do_sample: bool = True


@dataclass
class GenerateResult:
    prompt: str
    text: str  # the continuation only
    tokens: int  # tokens generated
    finish_reason: str  # "length", "eos" or "cancelled"
    seed: int | None  # the seed used (drawn at random when not given, so any output can be replayed)


class GenerateTask(Task):
    name = "generate"
    auto_class_name = "AutoModelForCausalLM"
    summary = "Continues your prompt with generated text."
    sample = GenerateRequest("Hello, I'm a language model,", max_new_tokens=8, seed=0)
    # Decoding steps dominate and padding only lengthens the prompt: batch more freely.
    max_padding = 0.5
    padding_side = "left"  # new tokens follow each prompt's last token

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        prompt = clean_text(request.prompt, settings, what="prompt")
        check_range("max_new_tokens", request.max_new_tokens, 1, settings.max_new_tokens)
        check_range("temperature", request.temperature, 0.0, 2.0)
        check_range("top_p", request.top_p, 0.01, 1.0)
        seed = request.seed if request.seed is not None else random.randrange(_HASH_MOD)
        check_range("seed", seed, 0, _HASH_MOD - 1)
        row = encoding_row(tokenizer(prompt))
        check_fits(len(row["input_ids"]) + request.max_new_tokens, info, what="prompt plus max_new_tokens")
        clean = GenerateRequest(
            prompt,
            int(request.max_new_tokens),
            float(request.temperature),
            float(request.top_p),
            int(seed),
            bool(request.do_sample and request.temperature > 0),
        )
        # Batches group requests of similar max_new_tokens first, then similar prompt length.
        return Prepared(
            clean, [row], sort_key=clean.max_new_tokens * 100_000 + len(row["input_ids"]), generated=clean.max_new_tokens
        )

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[GenerateResult]:
        requests = [p.request for p in batch]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        inputs = pad_rows([p.rows[0] for p in batch], pad_id, model_device(model), side=self.padding_side,
                          multiple=pad_multiple(model, self.padding_side))
        prompt_width = inputs["input_ids"].shape[1]
        stopper = RowStopper(requests, prompt_width, tokenizer, ctx)
        output = model.generate(
            **inputs,
            max_new_tokens=max(r.max_new_tokens for r in requests),
            do_sample=False,  # RowSampler has already picked each sampled row's token
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList([RowSampler(requests, prompt_width)]),
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        results = []
        for i, request in enumerate(requests):
            length, reason = stopper.finished.get(i, (output.shape[1] - prompt_width, "length"))
            tokens = output[i, prompt_width : prompt_width + length]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            results.append(GenerateResult(request.prompt, text, int(length), reason, request.seed))
        return results


class RowSampler(LogitsProcessor):
    """Samples each row's next token with its own temperature, top_p and seed, then leaves that token
    as the only choice, so greedy selection in generate() picks it.

    The randomness is a hash of (seed, step, token id) computed for the whole batch at once: no
    per-row Python work, and a row's draw does not depend on the other rows of its batch.
    """

    def __init__(self, requests: list[GenerateRequest], prompt_width: int) -> None:
        self.prompt_width = prompt_width
        self.sampled = torch.tensor([r.do_sample for r in requests])
        # float32 named, not torch's default dtype: another thread's model load changes the default
        # for the whole process while it runs (bot.inference.loading), and a row's draw must not depend on that.
        self.temperature = torch.tensor([max(r.temperature, 1e-5) for r in requests], dtype=torch.float32).unsqueeze(1)
        self.top_p = torch.tensor([r.top_p for r in requests], dtype=torch.float32).unsqueeze(1)
        self.seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64).unsqueeze(1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not bool(self.sampled.any()):
            return scores
        device = scores.device
        step = input_ids.shape[1] - self.prompt_width
        # The TOP_K best tokens, already sorted (transformers samples from top_k=50 by default too):
        # this avoids sorting the whole vocabulary at every step.
        best, token_ids = scores.topk(min(TOP_K, scores.shape[1]), dim=-1)
        logits = best.float() / self.temperature.to(device)
        probs = logits.softmax(dim=-1)
        outside_p = (probs.cumsum(dim=-1) - probs) >= self.top_p.to(device)  # keeps at least the best
        logits = logits.masked_fill(outside_p, float("-inf"))
        noise = _gumbel(self.seeds.to(device), step, token_ids)
        choice = token_ids.gather(1, (logits + noise).argmax(dim=-1, keepdim=True))
        forced = torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)
        return torch.where(self.sampled.to(device).unsqueeze(1), forced, scores)


def _gumbel(seeds: torch.Tensor, step: int, token_ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise for each (seed, step, token id), from an integer hash: a row's draw does not
    depend on its batch. Every intermediate stays below 2**62, so nothing overflows."""
    x = (seeds * 1_000_003 + step * 7919 + token_ids) % _HASH_MOD
    for _ in range(3):
        x = (x * 1_103_515_245 + 12_345) % _HASH_MOD
        x = x ^ (x >> 13)
    uniform = ((x.float() + 0.5) / _HASH_MOD).clamp(1e-9, 1 - 1e-7)
    return -torch.log(-torch.log(uniform))


class RowStopper(StoppingCriteria):
    """Stops rows at their own max_new_tokens, at EOS, or when cancelled; reports partial text."""

    def __init__(self, requests: list[GenerateRequest], prompt_width: int, tokenizer, ctx: BatchContext) -> None:
        self.limits = [r.max_new_tokens for r in requests]
        self.prompt_width = prompt_width
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.finished: dict[int, tuple[int, str]] = {}  # row → (tokens kept, reason)
        self.last_report = time.monotonic()

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        eos = self.tokenizer.eos_token_id
        last = input_ids[:, -1].tolist()
        for i, limit in enumerate(self.limits):
            if i in self.finished:
                continue
            if eos is not None and last[i] == eos:
                self.finished[i] = (generated - 1, "eos")
            elif self.ctx.cancelled(i):
                self.finished[i] = (generated, "cancelled")
            elif generated >= limit:
                self.finished[i] = (limit, "length")
        now = time.monotonic()
        if now - self.last_report >= self.ctx.report_interval:
            self.last_report = now
            for i in range(len(self.limits)):
                if i not in self.finished:
                    self.ctx.report(i, self.tokenizer.decode(input_ids[i, self.prompt_width :], skip_special_tokens=True))
        done = [i in self.finished for i in range(len(self.limits))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


TASK = GenerateTask()
