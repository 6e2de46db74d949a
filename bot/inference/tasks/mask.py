"""/mask: AutoModelForMaskedLM → the top candidates for every mask, and the sentence filled in."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from bot.inference.errors import InputError
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

# Spellings people type for "the missing word"; all become the model's own mask token.
_MASK_SPELLINGS = re.compile(r"\[mask\]|<mask>", re.IGNORECASE)


@dataclass
class MaskRequest:
    text: str
    top_k: int = 5


@dataclass
class Candidate:
    token: str
    score: float


@dataclass
class MaskResult:
    text: str  # the input with every mask spelled as the model's mask token
    mask_token: str
    candidates: list[list[Candidate]]  # per mask, best first
    filled: str  # the text with each mask replaced by its best candidate


class MaskTask(Task):
    name = "mask"
    auto_class_name = "AutoModelForMaskedLM"
    summary = "Guesses the word hidden behind [MASK], with probabilities."
    sample = MaskRequest("Paris is the [MASK] of France.")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        text = normalize_masks(clean_text(request.text, settings), tokenizer.mask_token)
        check_range("top_k", request.top_k, 1, settings.max_top_k)
        masks = text.count(tokenizer.mask_token)
        if masks == 0:
            raise InputError("Put [MASK] (or <mask>) where the missing word goes, e.g. `Paris is the [MASK] of France.`")
        if masks > settings.max_masks:
            raise InputError(f"Use at most {settings.max_masks} masks per request (found {masks}).")
        row = encoding_row(tokenizer(text))
        check_fits(len(row["input_ids"]), info)
        return Prepared(MaskRequest(text, int(request.top_k)), [row], sort_key=len(row["input_ids"]))

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[MaskResult]:
        inputs = pad_rows([p.rows[0] for p in batch], tokenizer.pad_token_id, model_device(model), multiple=pad_multiple(model))
        where = inputs["input_ids"] == tokenizer.mask_token_id
        logits = _mask_logits(model, inputs, where).float()  # [masks in batch, vocab]
        top_k = max(p.request.top_k for p in batch)
        probs, ids = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
        probs, ids = probs.cpu().tolist(), ids.cpu().tolist()
        per_row = where.sum(dim=1).tolist()
        results, cursor = [], 0
        for prepared, count in zip(batch, per_row):
            k = prepared.request.top_k
            candidates = [
                [Candidate(_token_text(tokenizer, t), p) for t, p in zip(ids[m][:k], probs[m][:k])]
                for m in range(cursor, cursor + count)
            ]
            cursor += count
            results.append(_result(prepared.request.text, tokenizer.mask_token, candidates))
        return results


def _token_text(tokenizer, token_id: int) -> str:
    """A candidate as a reader wants it: WordPiece's "##" continuation mark dropped."""
    text = tokenizer.decode([token_id]).strip()
    return text[2:] if text.startswith("##") and len(text) > 2 else text


def normalize_masks(text: str, mask_token: str) -> str:
    return _MASK_SPELLINGS.sub(lambda _: mask_token, text)


def _mask_logits(model, inputs: dict[str, torch.Tensor], where: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits at the masked positions only.

    The full MLM output is [batch, length, vocab] (hundreds of MB for a big batch); running the
    head on the few masked positions keeps memory flat. Heads we don't know get the full forward.
    """
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None:
        return model(**inputs).logits[where]
    hidden = model.base_model(**inputs).last_hidden_state
    return head(hidden[where])


def _result(text: str, mask_token: str, candidates: list[list[Candidate]]) -> MaskResult:
    pieces = text.split(mask_token)
    filled = pieces[0]
    for options, piece in zip(candidates, pieces[1:]):
        filled += (options[0].token if options else mask_token) + piece
    return MaskResult(text, mask_token, candidates, filled)


TASK = MaskTask()
