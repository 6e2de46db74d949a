"""Reliability (#7), bad input: a table of hostile, odd and out-of-range inputs to every command,
sent through the loopback fake Discord to the real bot (all cogs, real executor, tiny models).

Each case must end in one clear reply (ephemeral for a user error, with the words below), nothing
the bot sends may ping or break Discord's limits (the autouse check of tests/test_cogs.py), the
bot's gateway connection stays up (the discord_bot fixture), and the next normal request of the
same command still works. Cases that test_cogs.py::test_user_errors_are_ephemeral already has are
not repeated here. RELIABILITY.md lists what each group shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.fake_discord import (
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    FakeDiscord,
    FakeMessage,
)

# Fixtures of the end-to-end cog tests: the real bot on tiny models, and the autouse check that
# nothing it sends pings anyone or breaks Discord's limits.
from tests.test_cogs import (  # noqa: E402,F401
    _every_sent_message_is_safe,
    backend,
    bot_executor,
    bot_extensions,
    bot_settings,
    env_overrides,
    final,
    sent_payloads,
    shared_backend,
)

ROLE, MEMBER = "<@&123456789012345678>", "<@123456789012345678>"
WORDS = ("Alice met Bob in Paris and they talked about the weather. " * 200)
FLOOD = WORDS[:6000]  # exactly the declared length of a text option
MENTIONS = f"@everyone @here {ROLE} {MEMBER} <#3333333333333333333>"


@dataclass
class Case:
    id: str
    command: str  # a slash command ("admin reload"), or "menu:<name>" for a message context menu
    options: dict | str  # slash options, or the target message's content for a menu
    reply: str | None = None  # a refusal: regex the ephemeral reply must match; None: a result
    check: Callable[[FakeMessage], None] | None = None  # more checks on a result
    guild: bool = True  # False: sent from a DM


def refusal(text: str) -> str:
    return "⚠️ " + re.escape(text)


def shown_text(message: FakeMessage) -> str:
    parts = [message.content or ""]
    for embed in message.embeds:
        parts += [embed.get("title", ""), embed.get("description", ""), embed.get("footer", {}).get("text", "")]
        parts += [f"{f['name']}\n{f['value']}" for f in embed.get("fields", [])]
    return "\n".join(parts)


def neutralized(message: FakeMessage) -> None:
    """Echoed mentions cannot render as mentions, control characters are gone, fences stay closed."""
    text = shown_text(message)
    assert not re.search(r"(?<!\u200b)@(everyone|here)", text), text
    assert "<@" not in text and "<#" not in text, text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\ud800-\udfff]", text), repr(text)
    for embed in message.embeds:
        for value in [embed.get("description", "")] + [f["value"] for f in embed.get("fields", [])]:
            assert value.count("```") % 2 == 0, value


def fields(*names: str) -> Callable[[FakeMessage], None]:
    def check(message: FakeMessage) -> None:
        neutralized(message)
        assert [f["name"] for f in message.embeds[0]["fields"]] == list(names)

    return check


def titled(pattern: str) -> Callable[[FakeMessage], None]:
    def check(message: FakeMessage) -> None:
        neutralized(message)
        assert re.match(pattern, message.embeds[0]["title"]), message.embeds[0]["title"]

    return check


def generated(message: FakeMessage) -> None:
    neutralized(message)
    assert not message.embeds and re.search(r"\n-# \d+ tokens · (length|eos) · seed \d+$", message.content)


TOO_MANY_TOKENS = r"⚠️ The {what} is [\d,]+ tokens; this model reads at most [\d,]+\. Shorten it\."


def tokens(what: str) -> str:
    return TOO_MANY_TOKENS.replace("{what}", re.escape(what))


def declared(option: str, size: int, limit: int) -> str:
    return refusal(f"The {option} is {size:,} characters; the limit is {limit:,}. Shorten it.")


def out_of_range(option: str, low: str, high: str, got: str) -> str:
    return refusal(f"`{option}` must be between {low} and {high} (got {got}).")


GENERATE = {"prompt": "Hello", "max_new_tokens": 4, "seed": 1}

CASES = [
    # -- empty, whitespace-only, invisible ------------------------------------------------------
    Case("empty-text", "sentiment", {"text": ""}, refusal("The text is empty")),
    Case("whitespace-ner", "ner", {"text": " \n\t\r "}, refusal("The text is empty")),
    Case("unicode-spaces", "translate", {"text": "\u3000\u00a0\u2003"}, refusal("The text is empty")),
    Case("zero-width-only", "generate", {"prompt": "\u200b\u200d\u2060\ufeff"}, refusal("The prompt is empty")),
    Case("nul-only", "mask", {"text": "\x00\x00\x00"}, refusal("The text is empty")),
    Case("embed-empty-other", "embed", {"text": "A cat.", "other": ""}, refusal("The second text (`other`) is empty")),
    Case("embed-blank-other", "embed", {"text": "A cat.", "other": " \u200b "}, refusal("The second text (`other`) is empty")),
    Case("blank-question", "ask", {"question": "   ", "context": "Berlin."}, refusal("The question is empty")),
    Case("menu-invisible", "menu:Named entities", "\u200b\u200b", refusal("The text is empty")),
    Case("menu-no-text", "menu:Translate", "", refusal("That message has no text to read")),
    # -- at and over the declared length, and over the model's token limit ------------------------
    Case("text-at-declared-6000", "sentiment", {"text": FLOOD}, tokens("text")),
    Case("text-over-declared-6001", "sentiment", {"text": FLOOD + "x"}, declared("text", 6001, 6000)),
    Case("text-far-over-100k", "ner", {"text": "y" * 100_000}, declared("text", 100_000, 6000)),
    Case("prompt-at-declared-2000", "generate", {"prompt": FLOOD[:2000]}, tokens("prompt plus max_new_tokens")),
    Case("prompt-over-declared-2001", "generate", {"prompt": "z" * 2001}, declared("prompt", 2001, 2000)),
    Case("question-at-declared-500", "ask", {"question": ("x " * 250)[:500], "context": "Berlin."},
         tokens("question")),
    Case("question-over-declared-501", "ask", {"question": "q" * 501, "context": "Berlin."},
         declared("question", 501, 500)),
    Case("other-over-declared", "embed", {"text": "A cat.", "other": "o" * 6001}, declared("second text (`other`)", 6001, 6000)),
    Case("mask-text-over-token-limit", "mask", {"text": "[MASK] " + FLOOD[:3000]}, tokens("text")),
    Case("embed-other-over-token-limit", "embed", {"text": "A cat.", "other": FLOOD[:2000]}, tokens("second text")),
    Case("generate-budget-over-token-limit", "generate", {"prompt": FLOOD[:400], "max_new_tokens": 200},
         tokens("prompt plus max_new_tokens")),
    Case("translate-one-giant-word", "translate", {"text": "w" * 3000},
         refusal("One word of the text is too long to translate. Add spaces or shorten it.")),
    Case("ask-huge-context", "ask", {"question": "Who met Bob?", "context": FLOOD},
         r"⚠️ The context needs \d+ windows of 128 tokens; the limit is 16\. Shorten it\."),
    Case("menu-long-message", "menu:Translate", WORDS[:600], check=fields("Original")),  # translated in pieces
    # -- control characters, NUL, zero-width, right-to-left, emoji, mixed scripts ------------------
    Case("control-chars-around-text", "sentiment", {"text": "\x00\x01I love it\x07\x7f"}, check=titled(r"\w+ \(")),
    Case("nul-inside-text", "ner", {"text": "Alice\x00 met Bob in Paris."}, check=titled("Named entities")),
    Case("right-to-left-override", "translate", {"text": "\u202eHello, my dog is cute.\u202c"},
         check=fields("Original")),
    Case("rtl-marks-mixed-scripts", "generate", {"prompt": "\u200fשלום hello مرحبا\u200e", "max_new_tokens": 4},
         check=generated),
    Case("emoji-only", "sentiment", {"text": "😀🎉🔥👍🏽👨‍👩‍👧"}, check=titled(r"\w+ \(")),
    Case("mixed-scripts-entities", "ner", {"text": "Владимир met 習近平 and Ἀλέξανδρος in Berlin."},
         check=titled("Named entities")),
    Case("combining-marks", "embed", {"text": "cafe\u0301", "other": "café"}, check=titled("Embedding")),
    Case("lone-surrogate", "sentiment", {"text": "fine \ud800 text"}, check=titled(r"\w+ \(")),
    Case("zero-width-inside-mask", "mask", {"text": "Paris\u200b is the [MASK] of France."}, check=fields("mask 1")),
    # -- markdown, code fences, mentions ------------------------------------------------------------
    Case("code-fence", "translate", {"text": "```py\nprint('@everyone')\n```"}, check=fields("Original")),
    Case("markdown-soup", "ner", {"text": "**Alice** ||Bob|| __Paris__ ~~x~~ `y` > quoted [link](https://x.invalid)"},
         check=titled("Named entities")),
    Case("mentions-in-prompt", "generate", {"prompt": MENTIONS, "max_new_tokens": 4}, check=generated),
    Case("mentions-in-question", "ask", {"question": f"Who is {MEMBER}?", "context": f"{MENTIONS} lives in Berlin."},
         check=titled(r"(Answer: |No confident answer)")),
    Case("mentions-menu", "menu:Sentiment", f"{MENTIONS} ```code``` **bold**", check=titled(r"\w+ \(")),
    Case("mentions-around-mask", "mask", {"text": f"[MASK] {MENTIONS}"}, check=fields("mask 1")),
    Case("mentions-to-embed", "embed", {"text": MENTIONS, "other": "```"}, check=titled("Embedding")),
    # -- numbers out of range ---------------------------------------------------------------------
    Case("max-new-tokens-zero", "generate", GENERATE | {"max_new_tokens": 0}, out_of_range("max_new_tokens", "1", "200", "0")),
    Case("max-new-tokens-negative", "generate", GENERATE | {"max_new_tokens": -5},
         out_of_range("max_new_tokens", "1", "200", "-5")),
    Case("max-new-tokens-huge", "generate", GENERATE | {"max_new_tokens": 2**53},
         out_of_range("max_new_tokens", "1", "200", str(2**53))),
    Case("max-new-tokens-absurd", "generate", GENERATE | {"max_new_tokens": 10**40},
         out_of_range("max_new_tokens", "1", "200", "a number of 41 digits")),
    Case("temperature-negative", "generate", GENERATE | {"temperature": -0.5},
         out_of_range("temperature", "0", "2", "-0.5")),
    Case("temperature-huge", "generate", GENERATE | {"temperature": 1e308},
         out_of_range("temperature", "0", "2", "1e+308")),
    Case("temperature-zero-is-greedy", "generate", GENERATE | {"temperature": 0.0}, check=generated),
    Case("top-p-zero", "generate", GENERATE | {"top_p": 0.0}, out_of_range("top_p", "0.01", "1", "0.0")),
    Case("top-p-over-one", "generate", GENERATE | {"top_p": 1.5}, out_of_range("top_p", "0.01", "1", "1.5")),
    Case("seed-negative", "generate", GENERATE | {"seed": -1}, out_of_range("seed", "0", "2147483647", "-1")),
    Case("seed-too-big", "generate", GENERATE | {"seed": 2**31}, out_of_range("seed", "0", "2147483647", "2147483648")),
    Case("top-k-zero", "mask", {"text": "A [MASK].", "top_k": 0}, out_of_range("top_k", "1", "10", "0")),
    Case("top-k-negative", "mask", {"text": "A [MASK].", "top_k": -3}, out_of_range("top_k", "1", "10", "-3")),
    Case("top-k-just-over", "mask", {"text": "A [MASK].", "top_k": 11}, out_of_range("top_k", "1", "10", "11")),
    # -- /mask: no mask, many masks, odd spellings ------------------------------------------------
    Case("mask-spaced-spelling", "mask", {"text": "Paris is the [ MASK ] of France."}, refusal("Put [MASK] (or <mask>)")),
    Case("mask-unclosed", "mask", {"text": "Paris is the [MASK of France."}, refusal("Put [MASK] (or <mask>)")),
    Case("mask-six", "mask", {"text": "[MASK] " * 6}, refusal("Use at most 5 masks per request (found 6).")),
    Case("mask-two-hundred", "mask", {"text": "[MASK]" * 200}, refusal("Use at most 5 masks per request (found 200).")),
    Case("mask-odd-cases", "mask", {"text": "[mask] and <MASK> and [Mask].", "top_k": 2},
         check=fields("mask 1", "mask 2", "mask 3")),
    Case("mask-double-brackets", "mask", {"text": "Paris is the [[MASK]] of France."}, check=fields("mask 1")),
    Case("mask-five-at-limit", "mask", {"text": "[MASK]" * 5, "top_k": 10}, check=fields(*(f"mask {i}" for i in range(1, 6)))),
    # -- /ask without the answer in the context ------------------------------------------------------
    Case("ask-answer-not-in-context", "ask", {"question": "What is the capital of France?", "context": "The sky is blue."},
         check=titled(r"(Answer: |No confident answer)")),
    # -- /admin (as its owner): only allow-listed checkpoints, declared choices ---------------------
    Case("admin-unknown-task", "admin reload", {"task": "summarize"},
         refusal("`task` must be one of: generate, mask, translate, ask, ner, sentiment, embed.")),
    Case("admin-mention-as-task", "admin reload", {"task": "@everyone " * 600},
         refusal("`task` must be one of: generate, mask, translate, ask, ner, sentiment, embed.")),
    Case("admin-path-traversal", "admin reload", {"task": "ner", "checkpoint": "../../../etc/passwd"},
         refusal("`../../../etc/passwd` is not in ADMIN_CHECKPOINTS; add it there first.")),
    Case("admin-url-checkpoint", "admin reload", {"task": "ner", "checkpoint": "https://evil.invalid/x.bin"},
         refusal("`https://evil.invalid/x.bin` is not in ADMIN_CHECKPOINTS; add it there first.")),
    Case("admin-long-checkpoint", "admin reload", {"task": "ner", "checkpoint": "a" * 300},
         r"⚠️ `a{200}` is not in ADMIN_CHECKPOINTS; add it there first\."),
    Case("admin-huge-checkpoint", "admin reload", {"task": "ner", "checkpoint": "a" * 6000},
         declared("checkpoint", 6000, 300)),
    # -- a direct message instead of a server --------------------------------------------------------
    Case("in-a-dm", "sentiment", {"text": "I love it"}, check=titled(r"\w+ \("), guild=False),
]

# The next normal request after each case, per command: it must still work.
NORMAL = {
    "generate": {"prompt": "Hello", "max_new_tokens": 4, "seed": 3},
    "mask": {"text": "Paris is the [MASK] of France."},
    "translate": {"text": "Hello, my dog is cute."},
    "ask": {"question": "Where do I live?", "context": "My name is Wolfgang and I live in Berlin."},
    "ner": {"text": "My name is Wolfgang and I live in Berlin."},
    "sentiment": {"text": "I love using transformers library!"},
    "embed": {"text": "A cat sits on the mat.", "other": "A kitten rests on a rug."},
    "admin reload": {"task": "sentiment"},  # reload the current checkpoint
}


def test_the_matrix_is_big_and_covers_every_command():
    commands = {case.command.split(":")[0] for case in CASES}
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    assert {"generate", "mask", "translate", "ask", "ner", "sentiment", "embed", "menu", "admin reload"} <= commands


async def invoke(fake: FakeDiscord, case: Case, options: dict | str | None = None):
    options = case.options if options is None else options
    if case.command.startswith("menu:"):
        return await fake.invoke_message_command(case.command[5:], options, guild=case.guild)
    return await fake.invoke_slash(case.command, options, guild=case.guild)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input_gets_a_clear_reply_and_the_bot_keeps_working(fake_discord, discord_bot, case):
    interaction = await invoke(fake_discord, case)
    if case.reply is not None:
        reply = await interaction.wait_final(30)
        assert interaction.callback_type == CHANNEL_MESSAGE and reply.ephemeral, (interaction.callback_type, reply)
        assert re.match(case.reply, reply.content), reply.content  # patterns are prefixes of the reply
    else:
        reply = await final(interaction)
        assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE and not reply.ephemeral, reply.content
        assert not reply.content or not reply.content.startswith(("⚠️", "💥", "🚦", "🛑")), reply.content
        if case.check:
            case.check(reply)
    assert not reply.loading
    assert not [e for e in fake_discord.logged_errors], fake_discord.logged_errors  # nothing unexpected

    # The bot is still up, and the same command still works with a normal input.
    command = case.command.split(":")[0]
    if command == "menu":
        after = await fake_discord.invoke_message_command(case.command[5:], "My name is Wolfgang, I live in Berlin.")
    else:
        after = await fake_discord.invoke_slash(case.command, NORMAL[case.command])
    normal = await final(after)
    assert not normal.content or not normal.content.startswith(("⚠️", "💥", "🚦")), normal.content

