"""Requests and the answer comparison shared by the batch-invariance and loading tests (#10).

`difference(alone, other)` says where two results of the same request differ: generated text,
labels, tokens and spans must be equal, scores within SCORE_TOLERANCE.
"""

from __future__ import annotations

import dataclasses
import math

from bot.inference.local import LocalBackend
from bot.inference.tasks import BatchContext
from bot.inference.tasks.ask import AskRequest
from bot.inference.tasks.embed import EmbedRequest
from bot.inference.tasks.generate import GenerateRequest
from bot.inference.tasks.mask import MaskRequest
from bot.inference.tasks.ner import NerRequest
from bot.inference.tasks.sentiment import SentimentRequest
from bot.inference.tasks.translate import TranslateRequest

SCORE_TOLERANCE = 1e-4
SHORT = "The bridge in Paris was wonderful."
LONG = (
    "According to the United Nations, 42% of people in Berlin liked the museum, said Alice Johnson, "
    "who works for Google in Tokyo; the festival near the river was delayed on Monday, and the BBC "
    "described the new library in Seoul as brilliant."
)
WORD = "Hello"

# task → (the request under test, companions of very different lengths)
CASES: dict[str, tuple[object, list[object]]] = {
    "generate-greedy": (
        GenerateRequest(SHORT, max_new_tokens=12, temperature=0.0, seed=1),
        [GenerateRequest(LONG, max_new_tokens=20, temperature=0.9, seed=5), GenerateRequest(WORD, max_new_tokens=4, seed=6)],
    ),
    "generate-sampled": (
        GenerateRequest(SHORT, max_new_tokens=12, temperature=0.9, top_p=0.9, seed=42),
        [GenerateRequest(LONG, max_new_tokens=12, temperature=0.0, seed=5), GenerateRequest(WORD, max_new_tokens=12, seed=6)],
    ),
    "mask": (
        MaskRequest("The bridge in [MASK] was wonderful.", top_k=5),
        [MaskRequest(f"{LONG} The [MASK] was [MASK].", top_k=3), MaskRequest("[MASK] !", top_k=1)],
    ),
    # The third companion has the same token budget as the request (9 and 15 tokens, both 48), so
    # the two share one generate call and padding.
    "translate": (
        TranslateRequest(SHORT),
        [TranslateRequest(" ".join([LONG] * 3)), TranslateRequest(WORD), TranslateRequest(f"{SHORT[:-1]}, said Alice.")],
    ),
    "ask": (
        AskRequest("Where was the bridge?", SHORT),
        [AskRequest("Who said it?", " ".join([LONG] * 3)), AskRequest("Why?", WORD)],
    ),
    "ner": (NerRequest("Alice Johnson visited Paris with Bob Smith."), [NerRequest(LONG), NerRequest(WORD)]),
    "sentiment": (SentimentRequest(SHORT), [SentimentRequest(LONG), SentimentRequest(WORD)]),
    "embed": (EmbedRequest(SHORT, "A festival in Tokyo."), [EmbedRequest(LONG, WORD), EmbedRequest(WORD)]),
}
def task_of(case: str) -> str:
    return case.split("-")[0]


def difference(alone, batched, path: str = "result") -> str | None:
    """Where two results differ: text, labels, tokens and spans exactly, scores beyond 1e-4."""
    if dataclasses.is_dataclass(alone):
        return difference(dataclasses.asdict(alone), dataclasses.asdict(batched), path)
    if isinstance(alone, dict):
        if alone.keys() != batched.keys():
            return f"{path}: keys {sorted(alone)} vs {sorted(batched)}"
        return next((d for k in alone if (d := difference(alone[k], batched[k], f"{path}.{k}"))), None)
    if isinstance(alone, (list, tuple)):
        if len(alone) != len(batched):
            return f"{path}: {len(alone)} items vs {len(batched)}"
        return next((d for i, (a, b) in enumerate(zip(alone, batched)) if (d := difference(a, b, f"{path}[{i}]"))), None)
    if isinstance(alone, float) and not isinstance(batched, bool):
        return None if math.isclose(alone, batched, rel_tol=0, abs_tol=SCORE_TOLERANCE) else f"{path}: {alone} vs {batched}"
    return None if alone == batched else f"{path}: {alone!r:.80} vs {batched!r:.80}"


def run(backend: LocalBackend, task: str, requests: list) -> list:
    prepared = [backend.prepare(task, request) for request in requests]
    return backend.run(task, prepared, BatchContext(len(prepared)))


def first_requests() -> dict[str, object]:
    """One request per task (the first case of each): what a cold bot receives all at once."""
    out: dict[str, object] = {}
    for case, (request, _) in CASES.items():
        out.setdefault(task_of(case), request)
    return out
