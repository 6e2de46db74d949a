"""/embed: AutoModel → attention-masked mean pooling of the last hidden state, L2-normalized."""

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
    flatten_rows,
    model_device,
    pad_multiple,
    pad_rows,
    split_counts,
)


@dataclass
class EmbedRequest:
    text: str
    other: str | None = None


@dataclass
class EmbedResult:
    vector: list[float]  # unit length
    norm: float  # length of the mean-pooled vector before normalization
    other_vector: list[float] | None = None
    similarity: float | None = None  # cosine similarity of text and other

    @property
    def dim(self) -> int:
        return len(self.vector)


class EmbedTask(Task):
    name = "embed"
    auto_class_name = "AutoModel"
    summary = "Turns text into a vector; with a second text, how similar the two are."
    sample = EmbedRequest("A cat sits on the mat.", "A kitten rests on a rug.")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        texts = [clean_text(request.text, settings)]
        if request.other is not None:
            texts.append(clean_text(request.other, settings, what="second text (`other`)"))
        rows = [encoding_row(tokenizer(t)) for t in texts]
        for row, what in zip(rows, ("text", "second text")):
            check_fits(len(row["input_ids"]), info, what)
        clean = EmbedRequest(texts[0], texts[1] if len(texts) > 1 else None)
        return Prepared(clean, rows, sort_key=max(len(r["input_ids"]) for r in rows))

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[EmbedResult]:
        rows, counts = flatten_rows(batch)
        inputs = pad_rows(rows, tokenizer.pad_token_id, model_device(model), multiple=pad_multiple(model))
        pooled = mean_pool(model(**inputs).last_hidden_state.float(), inputs["attention_mask"])
        norms = pooled.norm(dim=-1)
        unit = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        results = []
        for vectors, row_norms in zip(split_counts(unit, counts), split_counts(norms.tolist(), counts)):
            result = EmbedResult(vectors[0].tolist(), row_norms[0])
            if len(vectors) == 2:
                result.other_vector = vectors[1].tolist()
                result.similarity = float(vectors[0] @ vectors[1])
            results.append(result)
        return results


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's real tokens: padding must not count, or a vector would depend on its batch."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


TASK = EmbedTask()
