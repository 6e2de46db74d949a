"""Result dataclass → readable text (for the CLI) and Discord messages (for the cogs). No torch.

Both share the same pieces (bars, percentages, marked spans); Discord replies also respect the
platform's length limits and neutralize markdown and mentions in echoed text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import discord

from bot.inference.tasks.ask import AskResult
from bot.inference.tasks.embed import EmbedResult
from bot.inference.tasks.generate import GenerateResult
from bot.inference.tasks.mask import MaskResult
from bot.inference.tasks.ner import NerResult
from bot.inference.tasks.sentiment import SentimentResult
from bot.inference.tasks.translate import TranslateResult

BAR_WIDTH = 20


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def percent(fraction: float) -> str:
    return f"{fraction * 100:5.1f}%"


def mark_spans(
    text: str,
    spans: list[tuple[int, int, str]],
    left: str = "[",
    right: str = "]",
    escape: Callable[[str], str] = str,
) -> str:
    """Wrap text[start:end] of each (start, end, tag) span; tags follow the closing mark. `escape`
    applies to the text only, not to the marks."""
    out, cursor = [], 0
    for start, end, tag in sorted(spans):
        out.append(escape(text[cursor:start]))
        out.append(f"{left}{escape(text[start:end])}{right}{tag}")
        cursor = end
    out.append(escape(text[cursor:]))
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
    width = max(len(e.word) for e in r.entities)
    legend = [f"  {e.label:<5} {e.word:<{width}}  {percent(e.score)}" for e in r.entities]
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
# Limits of one message (Discord's): content 2000; embed title 256, description 4096, 25 fields of
# name 256 and value 1024, 6000 characters across all embeds. Longer output is cut at a line or word
# boundary with a visible note; where the note says so, the full text is attached as a file.

CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_LIMIT = 1024
FIELD_COUNT_LIMIT = 25
EMBED_TOTAL_LIMIT = 6000
HEADER_ROOM = 120  # content kept free for a line the cog puts on top ("Cancelled", a late-delivery mention)
DESCRIPTION_ROOM = 500  # fields stop being added when less than this would be left for the description
MAX_LABELS = 10  # /sentiment rows shown; models with more labels show the likeliest
CUT_NOTE = "\n… (cut to fit Discord; the full text is attached)"
SHORT_NOTE = "\n… (cut to fit Discord)"
STREAM_NOTE = "\n…"
COLORS = {"POSITIVE": 0x2ECC71, "NEGATIVE": 0xE74C3C}
BLURPLE, GREY = 0x5865F2, 0x95A5A6
ENTITY_STYLE = {"PER": "🟦", "ORG": "🟧", "LOC": "🟩", "MISC": "🟪"}
ZERO_WIDTH = "\u200b"
# Newlines and tabs stay. Also dropped: bidi embeddings and overrides (U+202A-U+202E), which would
# reverse the bot's own text after them, and lone surrogates, which are not text (and not UTF-8).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\ud800-\udfff]")


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


def tail(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` characters, starting at a word where possible."""
    if len(text) <= limit:
        return text
    start = len(text) - limit
    space = text.find(" ", start, start + limit // 2)
    return text[space + 1 if space >= 0 else start :]


def safe(text: str) -> str:
    """User or model text shown back: markdown and mentions neutralized (nothing pings or formats),
    control characters (which byte-level models can emit) and bidi overrides dropped."""
    text = CONTROL.sub("", text)
    text = discord.utils.escape_markdown(text, ignore_links=False)
    text = discord.utils.escape_mentions(text)
    return text.replace("<@", "<" + ZERO_WIDTH + "@").replace("<#", "<" + ZERO_WIDTH + "#")


def quote(text: str, limit: int = 600) -> str:
    shown, _ = fit(safe(text), limit, note=" …")
    return "> " + shown.replace("\n", "\n> ")


def prepend(reply: Reply, line: str) -> Reply:
    """`reply` with `line` above its content; renderers leave HEADER_ROOM for it."""
    content = line + (f"\n{reply.content}" if reply.content else "")
    return dataclasses.replace(reply, content=fit(content, CONTENT_LIMIT, note=SHORT_NOTE)[0])


def _embed(title: str, color: int = BLURPLE) -> discord.Embed:
    return discord.Embed(title=fit(title.replace("\n", " "), TITLE_LIMIT, note="…")[0], color=color)


def _fields(embed: discord.Embed, fields: list[tuple[str, str, bool]]) -> int:
    """Add (name, value, inline) fields while the embed has room (25 fields, and the 6000-character
    total minus DESCRIPTION_ROOM); return how many were added."""
    for added, (name, value, inline) in enumerate(fields):
        name = fit(name, TITLE_LIMIT, note="…")[0]
        value = fit(value, FIELD_LIMIT, note="\n…")[0] or "-"
        full = len(embed.fields) >= FIELD_COUNT_LIMIT
        if full or len(embed) + len(name) + len(value) > EMBED_TOTAL_LIMIT - DESCRIPTION_ROOM:
            return added
        embed.add_field(name=name, value=value, inline=inline)
    return len(fields)


def _finish(
    embed: discord.Embed, description: str, attachment: tuple[str, str] | None = None, incomplete: bool = False
) -> Reply:
    """Give the description the room the title, fields and footer left. When the description was cut
    (or `incomplete`: fields were left out), attach `attachment` (filename, full text) and say so."""
    room = min(DESCRIPTION_LIMIT, EMBED_TOTAL_LIMIT - len(embed))
    embed.description, cut = fit(description, room, CUT_NOTE if attachment else SHORT_NOTE)
    files = [(attachment[0], attachment[1].encode())] if attachment and (cut or incomplete) else []
    return Reply(embeds=[embed], files=files)


def _block(text: str, limit: int = FIELD_LIMIT) -> str:
    """A code block of at most `limit` characters (cut inside, so the fence always closes)."""
    inner, _ = fit(text.replace("```", "`\u200b``"), limit - 8, note="\n…")
    return "```\n" + inner + "\n```"


def reply_generate(r: GenerateResult, streaming: bool = False) -> Reply:
    status = "✍️ writing…" if streaming else f"{r.tokens} tokens · {r.finish_reason} · seed {r.seed}"
    footer = f"\n-# {status}"
    note = STREAM_NOTE if streaming else CUT_NOTE
    room = CONTENT_LIMIT - HEADER_ROOM - len(footer)
    prompt = safe(r.prompt)
    long_prompt = len(prompt) > room // 2
    if long_prompt:  # the continuation follows the end of the prompt: show that end
        prompt = "…" + safe(tail(r.prompt, room // 4))
    body, cut = fit(f"**{prompt}**{safe(r.text)}", room - len(note) if long_prompt else room, note)
    if long_prompt and not cut:
        body += note
    files = [("generation.txt", (r.prompt + r.text).encode())] if (cut or long_prompt) and not streaming else []
    return Reply(content=body + footer, files=files)


def reply_mask(r: MaskResult) -> Reply:
    embed = _embed("Fill-mask")
    fields = []
    for n, candidates in enumerate(r.candidates, 1):
        width = min(24, max((len(c.token) for c in candidates), default=1))
        rows = [f"{c.token[:24]:<{width}} {bar(c.score, 12)} {percent(c.score)}" for c in candidates]
        fields.append((f"mask {n}", _block("\n".join(rows)), False))
    missing = len(fields) - _fields(embed, fields)
    footer = f"top {len(r.candidates[0]) if r.candidates else 0} candidates per {r.mask_token}"
    embed.set_footer(text=footer + (f" · {missing} more masks in the attached file" if missing else ""))
    return _finish(embed, safe(r.filled), ("fill-mask.txt", text_mask(r)), incomplete=bool(missing))


def reply_translate(r: TranslateResult) -> Reply:
    embed = _embed("Translation")
    _fields(embed, [("Original", quote(r.source, 900), False)])
    if r.chunks > 1:
        embed.set_footer(text=f"long text: translated in {r.chunks} pieces")
    return _finish(embed, safe(r.translation), ("translation.txt", r.translation))


def reply_ask(r: AskResult) -> Reply:
    question = ("Question", quote(r.question, 300), False)
    if not r.confident:
        embed = _embed("No confident answer", GREY)
        _fields(embed, [question, ("Best guess", f"{safe(r.answer) or '-'} (score {r.score:.2f})", False)])
        return _finish(embed, "The context may not contain the answer. Try rephrasing the question.")
    embed = _embed(f"Answer: {safe(r.answer)}")
    _fields(embed, [question])
    embed.set_footer(text=f"score {r.score:.2f} · characters {r.start}–{r.end} of the context")
    # Show the context around the answer, the answer in bold.
    start, end = max(0, r.start - 700), min(len(r.context), r.end + 700)
    around = (
        ("…" if start else "") + safe(r.context[start : r.start]) + f"**__{safe(r.context[r.start : r.end])}__**"
        + safe(r.context[r.end : end]) + ("…" if end < len(r.context) else "")
    )
    return _finish(embed, around)


def reply_ner(r: NerResult) -> Reply:
    marked = mark_spans(r.text, [(e.start, e.end, f"`{e.label}`") for e in r.entities], "**", "**", escape=safe)
    by_label: dict[str, list[str]] = {}
    for e in r.entities:
        by_label.setdefault(e.label, []).append(f"{safe(e.word)} ({percent(e.score).strip()})")
    embed = _embed("Named entities")
    fields = [(f"{ENTITY_STYLE.get(label, '⬜')} {label}", ", ".join(words), True) for label, words in by_label.items()]
    missing = len(fields) - _fields(embed, fields)
    count = f"{len(r.entities)} entities" if r.entities else "No entities found."
    embed.set_footer(text=count + (f" · {missing} more kinds in the attached file" if missing else ""))
    return _finish(embed, marked, ("entities.txt", text_ner(r)), incomplete=bool(missing))


def reply_sentiment(r: SentimentResult) -> Reply:
    ranked = list(r.scores.items())
    if len(ranked) > MAX_LABELS:
        ranked = sorted(ranked, key=lambda item: -item[1])[:MAX_LABELS]
    width = min(24, max(len(label) for label, _ in ranked))
    rows = [f"{label[:24]:<{width}} {bar(p)} {percent(p)}" for label, p in ranked]
    if len(r.scores) > len(ranked):
        rows.append(f"… and {len(r.scores) - len(ranked)} less likely labels")
    embed = _embed(f"{safe(r.label)} ({percent(r.score).strip()})", COLORS.get(r.label, BLURPLE))
    return _finish(embed, _block("\n".join(rows), DESCRIPTION_LIMIT))


def reply_embed(r: EmbedResult) -> Reply:
    embed = _embed("Embedding")
    fields = [("dimension", str(r.dim), True), ("norm before normalizing", f"{r.norm:.4f}", True)]
    if r.similarity is not None:
        fields.append(("cosine similarity", f"**{r.similarity:+.4f}**", True))
    fields.append(("first values", _block(", ".join(f"{v:+.4f}" for v in r.vector[:8]) + ", …"), False))
    _fields(embed, fields)
    reply = _finish(embed, "Mean-pooled last hidden state, L2-normalized. The full vector is attached.")
    payload = {"dimension": r.dim, "norm": r.norm, "vector": r.vector}
    if r.other_vector is not None:
        payload.update(other_vector=r.other_vector, cosine_similarity=r.similarity)
    reply.files.append(("embedding.json", json.dumps(payload).encode()))
    return reply


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
