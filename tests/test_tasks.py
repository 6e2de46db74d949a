"""The seven tasks on tiny random-weight models, through the product's loading path (LocalBackend).

Random weights say nothing about words, so these tests check structure and invariants: N in → N
out, offsets that index the original text, probabilities that sum to 1, seeds that reproduce.
"""

from __future__ import annotations

import math

import pytest

from bot.inference.errors import InputError, InputTooLong
from bot.inference.local import LocalBackend
from bot.inference.tasks import TASKS, BatchContext
from bot.inference.tasks.ask import AskRequest
from bot.inference.tasks.embed import EmbedRequest
from bot.inference.tasks.generate import GenerateRequest
from bot.inference.tasks.mask import MaskRequest, _token_text
from bot.inference.tasks.ner import NerRequest, group_entities
from bot.inference.tasks.sentiment import SentimentRequest
from bot.inference.tasks.translate import TranslateRequest, pack_chunks

LONG_CONTEXT = " ".join(f"Sentence number {i} says that Anna lives in Vienna and works for Siemens." for i in range(40))


@pytest.fixture(scope="module")
def backend(tiny_settings) -> LocalBackend:
    return LocalBackend(tiny_settings)


def run(backend: LocalBackend, task: str, requests: list) -> list:
    prepared = [backend.prepare(task, r) for r in requests]
    results = backend.run(task, prepared, BatchContext(len(prepared)))
    assert len(results) == len(requests)
    return results


def test_every_task_runs_its_sample(backend):
    for name, task in TASKS.items():
        (result,) = run(backend, name, [task.sample])
        assert result is not None
        assert backend.is_loaded(name)


def test_sentiment_probabilities_cover_every_label(backend):
    results = run(backend, "sentiment", [SentimentRequest(t) for t in ("good", "bad and long " * 10, "ok")])
    for result in results:
        assert set(result.scores) == {"NEGATIVE", "POSITIVE"}
        assert math.isclose(sum(result.scores.values()), 1.0, rel_tol=1e-5)
        assert result.score == max(result.scores.values())
        assert result.scores[result.label] == result.score


def test_batched_result_equals_single_result(backend):
    texts = ["short", "a much longer text that needs more padding than the others do", "mid length text"]
    batched = run(backend, "sentiment", [SentimentRequest(t) for t in texts])
    for text, together in zip(texts, batched):
        (alone,) = run(backend, "sentiment", [SentimentRequest(text)])
        assert alone.scores == pytest.approx(together.scores, abs=1e-5)


def test_embed_unit_vectors_and_cosine(backend):
    same, other = run(backend, "embed", [EmbedRequest("hello world", "hello world"), EmbedRequest("a", "b c d")])
    hidden = backend.acquire("embed").model.config.hidden_size
    for result in (same, other):
        assert result.dim == hidden
        assert math.isclose(sum(v * v for v in result.vector), 1.0, rel_tol=1e-4)
        assert -1.0001 <= result.similarity <= 1.0001
        assert result.similarity == pytest.approx(sum(a * b for a, b in zip(result.vector, result.other_vector)), abs=1e-4)
    assert same.similarity == pytest.approx(1.0, abs=1e-4)
    (single,) = run(backend, "embed", [EmbedRequest("only one")])
    assert single.similarity is None and single.other_vector is None


def test_mask_and_embed_share_one_copy_of_the_weights(backend):
    mask_model = backend.acquire("mask").model
    embed_loaded = backend.acquire("embed")
    assert embed_loaded.model is mask_model
    assert backend._view("embed", embed_loaded) is mask_model.base_model
    embedding = mask_model.base_model.embeddings.word_embeddings.weight
    assert backend._view("embed", embed_loaded).embeddings.word_embeddings.weight.data_ptr() == embedding.data_ptr()
    rows = {row["task"]: row for row in backend.describe()}
    assert rows["embed"]["shared_with"] == ["mask"]


@pytest.mark.parametrize("spelling", ["[MASK]", "<mask>", "[mask]"])
def test_mask_spellings_and_top_k(backend, spelling):
    (result,) = run(backend, "mask", [MaskRequest(f"Paris is the {spelling} of {spelling}.", top_k=3)])
    assert len(result.candidates) == 2
    for candidates in result.candidates:
        assert len(candidates) == 3
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert result.mask_token not in result.filled
    assert result.filled.startswith("Paris is the ")


def test_mask_candidates_drop_the_wordpiece_mark(backend):
    tokenizer, _ = backend.tokenizer("mask")
    piece = next(t for t in tokenizer.get_vocab() if t.startswith("##") and len(t) > 2)
    assert _token_text(tokenizer, tokenizer.convert_tokens_to_ids(piece)) == piece[2:]


def test_mask_input_errors(backend):
    with pytest.raises(InputError, match=r"\[MASK\]"):
        backend.prepare("mask", MaskRequest("no mask here"))
    with pytest.raises(InputError, match="at most"):
        backend.prepare("mask", MaskRequest(" ".join(["[MASK]"] * 20)))
    with pytest.raises(InputError, match="top_k"):
        backend.prepare("mask", MaskRequest("a [MASK]", top_k=1000))


def test_ask_offsets_index_the_context(backend):
    results = run(backend, "ask", [AskRequest("Where does Anna live?", "Anna lives in Vienna."), AskRequest("Who?", LONG_CONTEXT)])
    for result in results:
        assert result.context[result.start : result.end] == result.answer
        assert 0 <= result.score <= 1
        assert result.confident == (result.score >= 0.1)


def test_ask_long_context_uses_overlapping_windows(backend):
    prepared = backend.prepare("ask", AskRequest("Where does Anna live?", LONG_CONTEXT))
    _, info = backend.tokenizer("ask")
    assert len(prepared.rows) > 1
    assert all(len(row["input_ids"]) <= info.max_length for row in prepared.rows)
    # Every character of the context is covered by some window (nothing silently cut).
    covered = set()
    for offsets, in_context in zip(prepared.extra["offsets"], prepared.extra["in_context"]):
        for (start, end), inside in zip(offsets, in_context):
            if inside:
                covered.update(range(start, end))
    words = {i for i, ch in enumerate(LONG_CONTEXT) if not ch.isspace()}
    assert words <= covered


def test_ask_question_too_long(backend):
    with pytest.raises(InputTooLong):
        backend.prepare("ask", AskRequest("why " * 400, "short context"))


def test_ner_spans_index_the_text(backend):
    texts = ["My name is Wolfgang and I live in Berlin.", "Angela Merkel visited Siemens in Munich."]
    for text, result in zip(texts, run(backend, "ner", [NerRequest(t) for t in texts])):
        for entity in result.entities:
            assert text[entity.start : entity.end] == entity.word
            assert entity.label in {"PER", "ORG", "LOC", "MISC"}
            assert 0 <= entity.score <= 1


def test_ner_grouping_is_simple_aggregation():
    text = "Angela Merkel met Bob in New York"
    tags = [
        ("B-PER", 0.9, 0, 6), ("I-PER", 0.7, 7, 13), ("O", 0.99, 14, 17), ("B-PER", 0.8, 18, 21),
        ("O", 0.9, 22, 24), ("B-LOC", 0.6, 25, 28), ("I-LOC", 0.8, 29, 33),
    ]
    entities = group_entities(text, tags)
    assert [(e.word, e.label) for e in entities] == [("Angela Merkel", "PER"), ("Bob", "PER"), ("New York", "LOC")]
    assert entities[0].score == pytest.approx(0.8)
    # A B- tag right after an entity of the same type starts a new one; a type change does too.
    split = group_entities("A B C", [("B-PER", 1.0, 0, 1), ("B-PER", 1.0, 2, 3), ("I-ORG", 1.0, 4, 5)])
    assert [(e.word, e.label) for e in split] == [("A", "PER"), ("B", "PER"), ("C", "ORG")]


def test_ner_too_long_is_a_clear_error(backend):
    with pytest.raises(InputTooLong, match="tokens"):
        backend.prepare("ner", NerRequest("word " * 1000))


def test_translate_splits_long_text_into_chunks(backend):
    prepared = backend.prepare("translate", TranslateRequest(LONG_CONTEXT))
    _, info = backend.tokenizer("translate")
    assert len(prepared.rows) > 1
    assert all(len(row["input_ids"]) <= info.max_length for row in prepared.rows)
    short, long = run(backend, "translate", [TranslateRequest("Hello, my dog is cute."), TranslateRequest(LONG_CONTEXT)])
    assert short.chunks == 1 and long.chunks == len(prepared.rows)
    assert isinstance(long.translation, str)


def test_pack_chunks_keeps_every_word():
    text = "One two three. Four five six seven! " + "x " * 30
    chunks = pack_chunks(text, lambda piece: len(piece.split()), limit=5)
    assert all(len(c.split()) <= 5 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_generate_seed_reproduces_whatever_the_batch(backend):
    request = GenerateRequest("The weather today", max_new_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    (alone,) = run(backend, "generate", [request])
    (again,) = run(backend, "generate", [request])
    batched = run(
        backend,
        "generate",
        [GenerateRequest("A much longer prompt that pads the others on the left side", 20, seed=7), request],
    )
    assert alone.text == again.text == batched[1].text
    assert alone.seed == 1234 and 0 < alone.tokens <= 12
    other = run(backend, "generate", [GenerateRequest("The weather today", 12, temperature=1.0, top_p=0.9, seed=99)])[0]
    assert other.seed == 99


def test_generation_counts_its_new_tokens_in_the_batch_cost(backend):
    prepared = backend.prepare("generate", GenerateRequest("Hello there", 40, seed=1))
    prompt = len(prepared.rows[0]["input_ids"])
    assert prepared.cost == prepared.longest == prompt + 40


def test_generate_respects_each_rows_budget(backend):
    results = run(backend, "generate", [GenerateRequest("Hi", 3, seed=1), GenerateRequest("Hello there", 9, seed=2)])
    assert results[0].tokens <= 3 and results[1].tokens <= 9
    assert {r.finish_reason for r in results} <= {"length", "eos"}
    greedy = [run(backend, "generate", [GenerateRequest("Hi", 5, do_sample=False)])[0].text for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_generate_input_errors(backend, tiny_settings):
    with pytest.raises(InputError, match="max_new_tokens"):
        backend.prepare("generate", GenerateRequest("Hi", tiny_settings.max_new_tokens + 1))
    with pytest.raises(InputError, match="temperature"):
        backend.prepare("generate", GenerateRequest("Hi", 5, temperature=float("nan")))
    with pytest.raises(InputTooLong):
        backend.prepare("generate", GenerateRequest("word " * 300, 50))


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01", "\u200b"])
def test_empty_text_is_an_input_error(backend, text):
    for task, request in [("sentiment", SentimentRequest(text)), ("ner", NerRequest(text)), ("embed", EmbedRequest(text))]:
        with pytest.raises(InputError, match="empty"):
            backend.prepare(task, request)


def test_over_long_text_is_refused_before_tokenizing(backend, tiny_settings):
    with pytest.raises(InputTooLong, match="characters"):
        backend.prepare("sentiment", SentimentRequest("a" * (tiny_settings.max_input_chars + 1)))
