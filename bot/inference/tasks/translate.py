"""/translate: AutoModelForSeq2SeqLM → a translation by beam search (num_beams=4, as in the tutorial).

Text longer than the model's window is split at sentence ends (words, for one over-long sentence)
into chunks that each fit; the chunk translations are joined. Nothing is silently cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.inference.errors import InputTooLong
from bot.inference.tasks.base import (
    BatchContext,
    ModelInfo,
    Prepared,
    Task,
    clean_text,
    encoding_row,
    flatten_rows,
    model_device,
    pad_rows,
    padded_width,
    split_counts,
)

NUM_BEAMS = 4
MAX_CHUNKS = 16  # bounds the work one request can cause
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass
class TranslateRequest:
    text: str


@dataclass
class TranslateResult:
    source: str
    translation: str
    chunks: int  # how many pieces the source was translated in


class TranslateTask(Task):
    name = "translate"
    auto_class_name = "AutoModelForSeq2SeqLM"
    summary = "Translates text (English → German with the default checkpoint)."
    sample = TranslateRequest("Hello, my dog is cute.")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        text = clean_text(request.text, settings)
        limit = info.max_length - 2  # room for the end-of-sequence token
        chunks = pack_chunks(text, lambda piece: len(tokenizer(piece, add_special_tokens=False)["input_ids"]), limit)
        if len(chunks) > MAX_CHUNKS:
            raise InputTooLong(f"The text needs {len(chunks)} pieces to translate; the limit is {MAX_CHUNKS}. Shorten it.")
        rows = [encoding_row(tokenizer(chunk)) for chunk in chunks]
        return Prepared(TranslateRequest(text), rows, sort_key=max(len(r["input_ids"]) for r in rows))

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[TranslateResult]:
        rows, counts = flatten_rows(batch)
        limit = getattr(model.config, "max_position_embeddings", 512)
        # Beam search ends each row at the batch's max_new_tokens, so rows run together only when
        # their budgets are equal: a row's translation must not depend on its neighbours.
        groups: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(new_token_budget(len(row["input_ids"]), limit), []).append(index)
        texts: list[str] = [""] * len(rows)
        for budget, members in groups.items():
            inputs = pad_rows([rows[i] for i in members], tokenizer.pad_token_id, model_device(model))
            output = model.generate(**inputs, num_beams=NUM_BEAMS, max_new_tokens=budget)
            for index, text in zip(members, tokenizer.batch_decode(output, skip_special_tokens=True)):
                texts[index] = text
        return [
            TranslateResult(prepared.request.text, " ".join(t.strip() for t in pieces), len(pieces))
            for prepared, pieces in zip(batch, split_counts(texts, counts))
        ]


def new_token_budget(source_tokens: int, limit: int) -> int:
    """Most tokens a translation of `source_tokens` may have: twice the source (rounded up to a
    multiple of 8, so rows of similar length share a generate call) plus 16, within the model's
    positions. It depends on the row alone, never on its batch."""
    return min(limit, 2 * padded_width(source_tokens) + 16)


def pack_chunks(text: str, count_tokens, limit: int) -> list[str]:
    """Greedily pack sentences into chunks of at most `limit` tokens; split long sentences by words."""
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in _SENTENCE_END.split(text))):
        if count_tokens(sentence) <= limit:
            pieces.append(sentence)
        else:
            words = sentence.split()
            if any(count_tokens(word) > limit for word in words):
                raise InputTooLong("One word of the text is too long to translate. Add spaces or shorten it.")
            pieces.extend(_pack(words, count_tokens, limit))
    return _pack(pieces, count_tokens, limit)


def _pack(parts: list[str], count_tokens, limit: int) -> list[str]:
    """Join consecutive parts with spaces while the joined text stays within `limit` tokens."""
    packed: list[str] = []
    for part in parts:
        joined = f"{packed[-1]} {part}" if packed else part
        if packed and count_tokens(joined) <= limit:
            packed[-1] = joined
        else:
            packed.append(part)
    return packed


TASK = TranslateTask()
