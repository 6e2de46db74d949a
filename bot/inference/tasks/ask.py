"""/ask: AutoModelForQuestionAnswering → the answer span in the context, its score and offsets.

Contexts longer than the model's window are cut into overlapping windows (stride); the best span
over all windows wins. A span scoring under MIN_CONFIDENCE is reported as "no confident answer".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bot.inference.errors import InputTooLong
from bot.inference.tasks.base import (
    BatchContext,
    ModelInfo,
    Prepared,
    Task,
    check_fits,
    clean_text,
    encoding_row,
    flatten_rows,
    model_device,
    pad_multiple,
    pad_rows,
    split_counts,
)

MAX_ANSWER_TOKENS = 30
MIN_CONFIDENCE = 0.1
MAX_WINDOWS = 16  # bounds the work one request can cause


@dataclass
class AskRequest:
    question: str
    context: str


@dataclass
class AskResult:
    question: str
    context: str
    answer: str  # exactly context[start:end]; the best span even when not confident
    score: float  # probability of the span (start × end), in [0, 1]
    start: int
    end: int
    confident: bool


class AskTask(Task):
    name = "ask"
    auto_class_name = "AutoModelForQuestionAnswering"
    summary = "Answers a question with a span copied from the context you give."
    sample = AskRequest("Where do I live?", "My name is Wolfgang and I live in Berlin.")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        question = clean_text(request.question, settings, what="question")
        context = clean_text(request.context, settings, what="context")
        question_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        # The question is repeated in every window and must leave room for context.
        check_fits(question_tokens + 3 + 16, info, what="question")
        stride = min(128, (info.max_length - question_tokens) // 4)
        encoding = tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=info.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        windows = len(encoding["input_ids"])
        if windows > MAX_WINDOWS:
            raise InputTooLong(
                f"The context needs {windows} windows of {info.max_length} tokens; the limit is {MAX_WINDOWS}. Shorten it."
            )
        rows = [encoding_row(encoding, i) for i in range(windows)]
        # Only context tokens may be part of the answer.
        in_context = [[seq == 1 for seq in encoding.sequence_ids(i)] for i in range(windows)]
        extra = {"offsets": [list(map(tuple, o)) for o in encoding["offset_mapping"]], "in_context": in_context}
        return Prepared(AskRequest(question, context), rows, extra=extra, sort_key=len(rows[0]["input_ids"]))

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[AskResult]:
        rows, counts = flatten_rows(batch)
        multiple = pad_multiple(model)
        inputs = pad_rows(rows, tokenizer.pad_token_id, model_device(model), multiple=multiple)
        outputs = model(**inputs)
        in_context = [flags for prepared in batch for flags in prepared.extra["in_context"]]
        allowed = pad_rows([{"input_ids": [int(f) for f in flags]} for flags in in_context], 0, inputs["input_ids"].device,
                           multiple=multiple)
        start, end, allowed = outputs.start_logits.float(), outputs.end_logits.float(), allowed["input_ids"].bool()
        # Each window on its own length: a softmax over a padded width sums in another order.
        spans = [span for row, n in enumerate(inputs["attention_mask"].sum(1).tolist())
                 for span in best_spans(start[row:row + 1, :n], end[row:row + 1, :n], allowed[row:row + 1, :n])]
        results = []
        for prepared, window_spans in zip(batch, split_counts(spans, counts)):
            window, (score, s, e) = max(enumerate(window_spans), key=lambda item: item[1][0])
            offsets = prepared.extra["offsets"][window]
            start, end = offsets[s][0], offsets[e][1]
            context = prepared.request.context
            results.append(
                AskResult(prepared.request.question, context, context[start:end], score, start, end, score >= MIN_CONFIDENCE)
            )
        return results


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, allowed: torch.Tensor) -> list[tuple[float, int, int]]:
    """(probability, start, end) of the best span per row, with start <= end < start + MAX_ANSWER_TOKENS."""
    neg = torch.finfo(start_logits.dtype).min
    start_p = torch.softmax(start_logits.masked_fill(~allowed, neg), dim=-1)
    end_p = torch.softmax(end_logits.masked_fill(~allowed, neg), dim=-1)
    scores = start_p.unsqueeze(2) * end_p.unsqueeze(1)  # [rows, start, end]
    length = scores.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=scores.device)
    valid = torch.triu(ones) & ~torch.triu(ones, diagonal=MAX_ANSWER_TOKENS)
    scores = scores.masked_fill(~(valid & allowed.unsqueeze(2) & allowed.unsqueeze(1)), 0.0)
    best, flat = scores.flatten(1).max(dim=-1)
    return [(b, f // length, f % length) for b, f in zip(best.tolist(), flat.tolist())]


TASK = AskTask()
