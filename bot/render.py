"""Result dataclass → readable text (for the CLI) and Discord messages (for the cogs). No torch.

Both share the same pieces (bars, percentages, marked spans); Discord replies also respect the
platform's length limits and neutralize markdown and mentions in echoed text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import discord

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


# -- Discord messages ----------------------------------------------------------------------------
# Limits of one message (Discord's): content 2000, embed description 4096, field value 1024, 6000
# characters across all embeds. Longer output is cut at a line or word boundary with a visible note,
# and the full text is attached as a file.

CONTENT_LIMIT = 2000
DESCRIPTION_LIMIT = 4096
FIELD_LIMIT = 1024
EMBED_TOTAL_LIMIT = 6000
CUT_NOTE = "\n… (cut to fit Discord; the full text is attached)"
COLORS = {"POSITIVE": 0x2ECC71, "NEGATIVE": 0xE74C3C}
ENTITY_STYLE = {"PER": "🟦", "ORG": "🟧", "LOC": "🟩", "MISC": "🟪"}
ZERO_WIDTH = "\u200b"


@dataclasses.dataclass
class Reply:
    """What one Discord message says; the cog turns it into send/edit calls."""

    content: str | None = None
    embeds: list = dataclasses.field(default_factory=list)
    files: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # (filename, data)


def fit(text: str, limit: int, note: str = CUT_NOTE) -> tuple[str, bool]:
    """`text` cut to `limit` characters at a line (else word) boundary, with `note` appended."""
    if len(text) <= limit:
        return text, False
    room = limit - len(note)
    cut = text.rfind("\n", 0, room)
    if cut < room // 2:
        cut = text.rfind(" ", 0, room)
    if cut < room // 2:
        cut = room
    return text[:cut].rstrip() + note, True


def safe(text: str) -> str:
    """User or model text shown back: markdown and mentions neutralized (nothing pings or formats)."""
    text = discord.utils.escape_markdown(text, ignore_links=False)
    text = discord.utils.escape_mentions(text)
    return text.replace("<@", "<" + ZERO_WIDTH + "@").replace("<#", "<" + ZERO_WIDTH + "#")


def quote(text: str, limit: int = 600) -> str:
    shown, _ = fit(safe(text), limit, note=" …")
    return "> " + shown.replace("\n", "\n> ")


def _embed(title: str, description: str = "", color: int = 0x5865F2) -> discord.Embed:
    return discord.Embed(title=title[:256], description=fit(description, DESCRIPTION_LIMIT)[0], color=color)


def _field(embed: discord.Embed, name: str, value: str, inline: bool = False) -> None:
    embed.add_field(name=name[:256], value=fit(value, FIELD_LIMIT, note="\n…")[0] or "-", inline=inline)


def _block(text: str) -> str:
    return "```\n" + text.replace("```", "`\u200b``") + "\n```"


def reply_generate(r: GenerateResult, streaming: bool = False) -> Reply:
    full = f"**{safe(r.prompt)}**{safe(r.text)}"
    status = "✍️ writing…" if streaming else f"{r.tokens} tokens · {r.finish_reason} · seed {r.seed}"
    footer = f"\n-# {status}"
    content, cut = fit(full, CONTENT_LIMIT - len(footer))
    files = [("generation.txt", (r.prompt + r.text).encode())] if cut and not streaming else []
    return Reply(content=content + footer, files=files)


def reply_mask(r: MaskResult) -> Reply:
    embed = _embed("Fill-mask", f"{safe(r.filled)}")
    for n, candidates in enumerate(r.candidates, 1):
        width = max((len(c.token) for c in candidates), default=1)
        rows = [f"{c.token[:24]:<{min(width, 24)}} {bar(c.score, 12)} {percent(c.score)}" for c in candidates]
        _field(embed, f"mask {n}", _block("\n".join(rows)))
    embed.set_footer(text=f"top {len(r.candidates[0]) if r.candidates else 0} candidates per {r.mask_token}")
    return Reply(embeds=[embed])


def reply_translate(r: TranslateResult) -> Reply:
    text, cut = fit(safe(r.translation), DESCRIPTION_LIMIT)
    embed = _embed("Translation", text)
    _field(embed, "Original", quote(r.source, 900))
    if r.chunks > 1:
        embed.set_footer(text=f"long text: translated in {r.chunks} pieces")
    files = [("translation.txt", r.translation.encode())] if cut else []
    return Reply(embeds=[embed], files=files)


def reply_ask(r: AskResult) -> Reply:
    if not r.confident:
        embed = _embed("No confident answer", "The context may not contain the answer. Try rephrasing the question.",
                       color=0x95A5A6)
        _field(embed, "Best guess", f"{safe(r.answer) or '-'} (score {r.score:.2f})")
        return Reply(embeds=[embed])
    embed = _embed(f"Answer: {r.answer[:200]}", "")
    # Show the context around the answer, the answer in bold.
    start, end = max(0, r.start - 700), min(len(r.context), r.end + 700)
    around = (
        ("…" if start else "") + safe(r.context[start : r.start]) + f"**__{safe(r.context[r.start : r.end])}__**"
        + safe(r.context[r.end : end]) + ("…" if end < len(r.context) else "")
    )
    embed.description = fit(around, DESCRIPTION_LIMIT)[0]
    embed.set_footer(text=f"score {r.score:.2f} · characters {r.start}–{r.end} of the context")
    return Reply(embeds=[embed])


def reply_ner(r: NerResult) -> Reply:
    spans = [(e.start, e.end, f"`{e.label}`") for e in r.entities]
    pieces, cursor = [], 0
    for start, end, tag in sorted(spans):
        pieces += [safe(r.text[cursor:start]), f"**{safe(r.text[start:end])}**{tag}"]
        cursor = end
    pieces.append(safe(r.text[cursor:]))
    embed = _embed("Named entities", "".join(pieces) if r.entities else safe(r.text) + "\n\n*No entities found.*")
    by_label: dict[str, list[str]] = {}
    for e in r.entities:
        by_label.setdefault(e.label, []).append(f"{safe(e.word)} ({percent(e.score).strip()})")
    for label, words in by_label.items():
        _field(embed, f"{ENTITY_STYLE.get(label, '⬜')} {label}", ", ".join(words), inline=True)
    return Reply(embeds=[embed])


def reply_sentiment(r: SentimentResult) -> Reply:
    width = max(len(label) for label in r.scores)
    rows = [f"{label:<{width}} {bar(p)} {percent(p)}" for label, p in r.scores.items()]
    embed = _embed(f"{r.label} ({percent(r.score).strip()})", _block("\n".join(rows)), COLORS.get(r.label, 0x5865F2))
    return Reply(embeds=[embed])


def reply_embed(r: EmbedResult) -> Reply:
    embed = _embed("Embedding", "Mean-pooled last hidden state, L2-normalized.")
    _field(embed, "dimension", str(r.dim), inline=True)
    _field(embed, "norm before normalizing", f"{r.norm:.4f}", inline=True)
    if r.similarity is not None:
        _field(embed, "cosine similarity", f"**{r.similarity:+.4f}**", inline=True)
    _field(embed, "first values", _block(", ".join(f"{v:+.4f}" for v in r.vector[:8]) + ", …"))
    payload = {"dimension": r.dim, "norm": r.norm, "vector": r.vector}
    if r.other_vector is not None:
        payload.update(other_vector=r.other_vector, cosine_similarity=r.similarity)
    return Reply(embeds=[embed], files=[("embedding.json", json.dumps(payload).encode())])


DISCORD_RENDERERS: dict[type, Callable[[Any], Reply]] = {
    GenerateResult: reply_generate,
    MaskResult: reply_mask,
    TranslateResult: reply_translate,
    AskResult: reply_ask,
    NerResult: reply_ner,
    SentimentResult: reply_sentiment,
    EmbedResult: reply_embed,
}


def as_reply(result: Any) -> Reply:
    return DISCORD_RENDERERS[type(result)](result)
