"""/ner: AutoModelForTokenClassification → entity spans grouped from B-/I- tags ("simple" aggregation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bot.inference.tasks.base import (
    BatchContext,
    ModelInfo,
    Prepared,
    Task,
    check_fits,
    clean_text,
    encoding_row,
    model_device,
    pad_multiple,
    pad_rows,
)


@dataclass
class NerRequest:
    text: str


@dataclass
class Entity:
    word: str  # exactly text[start:end]
    label: str  # PER, ORG, LOC, MISC (the tag without B-/I-)
    score: float  # mean probability of the entity's tokens
    start: int
    end: int


@dataclass
class NerResult:
    text: str
    entities: list[Entity]


class NerTask(Task):
    name = "ner"
    auto_class_name = "AutoModelForTokenClassification"
    summary = "Finds the people, organisations, places and other names in a text."
    sample = NerRequest("My name is Wolfgang and I live in Berlin.")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        text = clean_text(request.text, settings)
        encoding = tokenizer(text, return_offsets_mapping=True)
        row = encoding_row(encoding)
        check_fits(len(row["input_ids"]), info)
        offsets = [tuple(o) for o in encoding["offset_mapping"]]
        special = tokenizer.get_special_tokens_mask(row["input_ids"], already_has_special_tokens=True)
        return Prepared(
            NerRequest(text), [row], extra={"offsets": offsets, "special": special}, sort_key=len(offsets)
        )

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[NerResult]:
        inputs = pad_rows([p.rows[0] for p in batch], tokenizer.pad_token_id, model_device(model), multiple=pad_multiple(model))
        probs = torch.softmax(model(**inputs).logits.float(), dim=-1)
        scores, label_ids = probs.max(dim=-1)
        scores, label_ids = scores.cpu().tolist(), label_ids.cpu().tolist()
        id2label = model.config.id2label
        results = []
        for i, prepared in enumerate(batch):
            tokens = [
                (id2label[label_ids[i][t]], scores[i][t], start, end)
                for t, ((start, end), special) in enumerate(zip(prepared.extra["offsets"], prepared.extra["special"]))
                if not special and end > start
            ]
            results.append(NerResult(prepared.request.text, group_entities(prepared.request.text, tokens)))
        return results


def group_entities(text: str, tokens: list[tuple[str, float, int, int]]) -> list[Entity]:
    """Merge consecutive tokens of one type into spans; a B- tag or a change of type starts a new one."""
    entities: list[Entity] = []
    current: tuple[str, list[float], int, int] | None = None
    for tag, score, start, end in tokens:
        prefix, kind = tag.split("-", 1) if "-" in tag else ("", tag)
        kind = "" if tag == "O" else kind
        continues = current is not None and kind and kind == current[0] and prefix != "B"
        if continues:
            current = (current[0], current[1] + [score], current[2], end)
            continue
        if current is not None:
            entities.append(_entity(text, current))
        current = (kind, [score], start, end) if kind else None
    if current is not None:
        entities.append(_entity(text, current))
    return entities


def _entity(text: str, span: tuple[str, list[float], int, int]) -> Entity:
    kind, scores, start, end = span
    return Entity(text[start:end], kind, sum(scores) / len(scores), start, end)


TASK = NerTask()
