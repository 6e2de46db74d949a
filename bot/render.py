"""Result dataclass → readable text. No torch, no Discord: the CLI prints this, and the cogs build
their embeds from the same pieces (bars, percentages, highlighted spans)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.tasks.ask import AskResult
from bot.tasks.embed import EmbedResult
from bot.tasks.generate import GenerateResult
from bot.tasks.mask import MaskResult
from bot.tasks.ner import NerResult
from bot.tasks.sentiment import SentimentResult
from bot.tasks.translate import TranslateResult

BAR_WIDTH = 20


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def percent(fraction: float) -> str:
    return f"{fraction * 100:5.1f}%"


def mark_spans(text: str, spans: list[tuple[int, int, str]], left: str = "[", right: str = "]") -> str:
    """Wrap text[start:end] of each (start, end, tag) span; tags follow the closing mark."""
    out, cursor = [], 0
    for start, end, tag in sorted(spans):
        out.append(text[cursor:start])
        out.append(f"{left}{text[start:end]}{right}{tag}")
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def text_generate(r: GenerateResult) -> str:
    return f"{r.prompt}{r.text}\n\n({r.tokens} tokens, {r.finish_reason}, seed {r.seed})"


def text_mask(r: MaskResult) -> str:
    lines = [r.filled, ""]
    for n, candidates in enumerate(r.candidates, 1):
        lines.append(f"mask {n}:")
        width = max((len(c.token) for c in candidates), default=0)
        lines += [f"  {c.token:<{width}}  {bar(c.score)} {percent(c.score)}" for c in candidates]
    return "\n".join(lines)


def text_translate(r: TranslateResult) -> str:
    return r.translation


def text_ask(r: AskResult) -> str:
    if not r.confident:
        return f"No confident answer (best guess {r.answer!r}, score {r.score:.2f})."
    return f"{r.answer}\n\nscore {r.score:.2f}\n{mark_spans(r.context, [(r.start, r.end, '')], '**', '**')}"


def text_ner(r: NerResult) -> str:
    if not r.entities:
        return f"{r.text}\n\nNo entities found."
    marked = mark_spans(r.text, [(e.start, e.end, f"({e.label})") for e in r.entities])
    legend = [f"  {e.label:<5} {e.word}  {percent(e.score)}" for e in r.entities]
    return "\n".join([marked, "", *legend])


def text_sentiment(r: SentimentResult) -> str:
    width = max(len(label) for label in r.scores)
    rows = [f"{label:<{width}}  {bar(p)} {percent(p)}" for label, p in r.scores.items()]
    return "\n".join([f"{r.label} ({percent(r.score).strip()})", *rows])


def text_embed(r: EmbedResult) -> str:
    head = ", ".join(f"{v:+.4f}" for v in r.vector[:8])
    lines = [f"dimension {r.dim}, norm before normalizing {r.norm:.4f}", f"[{head}, …]"]
    if r.similarity is not None:
        lines.append(f"cosine similarity {r.similarity:+.4f}")
    return "\n".join(lines)


TEXT_RENDERERS: dict[type, Callable[[Any], str]] = {
    GenerateResult: text_generate,
    MaskResult: text_mask,
    TranslateResult: text_translate,
    AskResult: text_ask,
    NerResult: text_ner,
    SentimentResult: text_sentiment,
    EmbedResult: text_embed,
}


def as_text(result: Any) -> str:
    return TEXT_RENDERERS[type(result)](result)
