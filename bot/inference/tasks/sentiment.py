"""/sentiment: AutoModelForSequenceClassification → the top label and every label's probability."""

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
class SentimentRequest:
    text: str


@dataclass
class SentimentResult:
    label: str
    score: float
    scores: dict[str, float]  # every label of the model's id2label, in id order


class SentimentTask(Task):
    name = "sentiment"
    auto_class_name = "AutoModelForSequenceClassification"
    summary = "Classifies the feeling of a text (positive / negative)."
    sample = SentimentRequest("I love using transformers library!")

    def prepare(self, request, tokenizer, info: ModelInfo, settings) -> Prepared:
        text = clean_text(request.text, settings)
        row = encoding_row(tokenizer(text))
        check_fits(len(row["input_ids"]), info)
        return Prepared(SentimentRequest(text), [row], sort_key=len(row["input_ids"]))

    def predict(self, model, tokenizer, batch, ctx: BatchContext) -> list[SentimentResult]:
        inputs = pad_rows([p.rows[0] for p in batch], tokenizer.pad_token_id, model_device(model), multiple=pad_multiple(model))
        probs = torch.softmax(model(**inputs).logits.float(), dim=-1).cpu()
        labels = [model.config.id2label[i] for i in range(probs.shape[1])]
        results = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append(SentimentResult(labels[best], row[best], dict(zip(labels, row))))
        return results


TASK = SentimentTask()
