"""Random-weight checkpoints for the seven tasks, built fully offline.

Tests and benchmarks must not depend on the Hugging Face hub, yet they should exercise the real
loading path (`AutoTokenizer.from_pretrained(dir)` + `AutoModelForX.from_pretrained(dir)`). So this
module trains small tokenizers on an in-code corpus, builds each architecture from its config with
random weights, and saves both with `save_pretrained`.

Three sizes:

- "tiny": a few-second build of very small models (hidden 64, 2 layers); BERT-likes and Marian keep
  only 128 positions so tests can reach the long-context windowing with short inputs.
- "peaked": the tiny shapes with weights drawn 15× wider (std 0.3). Attention is then sharp and
  every output moves with its context: a model whose answer would change if padding leaked into
  it, for the batch-invariance tests (with std 0.02 logits move by ~1e-4 and hide such bugs).
- "real": the architectures of the default checkpoints (bert-base, distilbert, bert-large, gpt2,
  opus-mt-en-de) with their vocabulary and position limits, so benchmarks measure realistic
  compute. Their tokenizers are trained on the same small corpus and then padded with unreachable
  filler tokens up to the model's vocabulary, so that every id the model can emit decodes.

mask and embed share one directory, as the product shares weights between tasks naming the same
checkpoint.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import random
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sentencepiece
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForPreTraining,
    BertForTokenClassification,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("generate", "mask", "translate", "ask", "ner", "sentiment", "embed")
SIZES: tuple[str, ...] = ("tiny", "peaked", "real")

# Written last into a checkpoint directory; its presence (with matching content) means "complete".
# Bump BUILDER_VERSION whenever what gets built changes, so stale caches are rebuilt (a new
# transformers version also triggers a rebuild, as its save format may change).
MARKER = "synthetic.json"
BUILDER_VERSION = 3

# Labels of dbmdz/bert-large-cased-finetuned-conll03-english, in its order.
NER_LABELS: dict[int, str] = {
    0: "O",
    1: "B-MISC",
    2: "I-MISC",
    3: "B-PER",
    4: "I-PER",
    5: "B-ORG",
    6: "I-ORG",
    7: "B-LOC",
    8: "I-LOC",
}
SENTIMENT_LABELS: dict[int, str] = {0: "NEGATIVE", 1: "POSITIVE"}

# Shapes of the tiny models: small enough to build and run in milliseconds.
_TINY = {"hidden": 64, "layers": 2, "heads": 4, "ffn": 128}
# "peaked": tiny shapes with this init std instead of 0.02 (see _init).
PEAKED_INIT_STD = 0.3
# Target size of the trained tokenizer vocabularies (the corpus may yield fewer). WordPiece gets
# each subword twice (word start and "##" continuation), hence about 1800 entries.
_TOKENIZER_VOCAB = 1000
_WORDPIECE_SUBWORDS = 900
_WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_EOT = "<|endoftext|>"

# Vocabulary sizes of the real checkpoints (the models' embedding tables).
_REAL_VOCAB = {
    "bert-uncased": 30522,
    "bert-cased": 28996,
    "gpt2": 50257,
    "marian": 58101,
}


# --------------------------------------------------------------------------- corpus

# Word lists as "|"-separated strings: compact, and multi-word names stay whole.
_PEOPLE = (
    "Alice Johnson|Bob Smith|Carla Rossi|Hans Müller|José García|Zoë Martin|Mei Chen|"
    "Olusegun Obasanjo|Priya Patel|Sven Andersson|Fatima Al-Sayed|Lukas Novák|Chloé Dubois|"
    "Kenji Watanabe|Ana Souza|Noah Williams"
).split("|")
_PLACES = (
    "Paris|New York|Zürich|São Paulo|Tokyo|Berlin|Lagos|Mumbai|Toronto|Cape Town|Reykjavík|"
    "Buenos Aires|Seoul|Kraków|Sydney|the Alps"
).split("|")
_ORGS = (
    "the United Nations|Google|the Red Cross|Deutsche Bank|NASA|the BBC|Médecins Sans Frontières|"
    "Siemens|the World Health Organization|Microsoft|Toyota|the European Union|UNESCO|Airbus"
).split("|")
_NOUNS = (
    "report|bridge|garden|museum|festival|contract|train|river|library|concert|election|market|"
    "vaccine|satellite|recipe|novel|storm|school"
).split("|")
_VERBS = (
    "visited|announced|criticised|opened|praised|delayed|signed|described|photographed|cancelled|"
    "funded|explored"
).split("|")
_GOOD = "wonderful|delightful|brilliant|excellent|charming|superb|moving".split("|")
_BAD = "terrible|boring|awful|disappointing|dreadful|mediocre|painful".split("|")
_DAYS = "Monday|Tuesday|Friday|Sunday|March|July|December".split("|")
# Everyday words outside the templates, so ordinary text splits into subwords, not single letters.
_COMMON = (
    "the of and to in is that it was for on are as with his they at be this from have or by one had "
    "not but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time could "
    "no make than first been its who now people my made over did down only way find use may water "
    "long little very after words called just where most know get through back much before go good "
    "new write our used me man too any day same right look think also around another came come work "
    "three word must because does part even place well such here take why things help put years "
    "different away again off went old number great tell men say small every found still between "
    "name should home big give air line set own under read last never us left end along while might "
    "next sound below saw something thought both few those always looked show large often together "
    "asked house world going want school important until form food keep children feet land side "
    "without boy once animals life enough took sometimes four head above kind began almost live page "
    "got earth need far hand high year mother light parts country father let night following picture "
    "being study second eyes soon times story boys since white days ever paper hard near sentence "
    "better best across during today others sure means knew try told young miles sun ways thing "
    "whole hear example heard several change answer room sea against top turned learn point city "
    "play toward five using himself usually money seen car morning working lives says government"
).split()
_QUESTION_WORDS = "Who|What|Where|When|Why|How".split("|")

_EN_TEMPLATES = [
    "{p} {v} the {n} in {pl} on {day} {d}, {y}.",
    "{o} {v} a new {n} near {pl}; it cost ${price} million.",
    '"The {n} was {good}," said {p}, who works for {o}.',
    "I thought the {n} was {bad} - honestly, I don't recommend it!",
    "What a {good} {n}! I'd visit {pl} again tomorrow.",
    "{q} did {p} leave {o} in {y}?",
    "According to {o}, {pct}% of people in {pl} liked the {n}.",
    "The {n} (built in {y}) is {d} km from {pl}, isn't it?",
    "{p} and {p2} met at the {n} in {pl} at {h}:{m} pm.",
    "This movie is {bad}... the plot makes no sense and the acting is {bad}.",
    "Honestly? It's the most {good} {n} I've seen since {y}.",
    "{o}'s CEO, {p}, said revenue rose {pct}% to €{price} billion.",
    "Temperatures in {pl} reached {d}°C; the {n} was closed.",
    "Breaking: {o} {v} the {n} after {d} days of talks with {p}.",
    "My naïve guess: the café near the {n} in {pl} opens at {h} o'clock.",
    '{p} wrote a {good} review of the {n}, calling it "{bad} but fun".',
]
_DE_PEOPLE = "Anna|Jürgen|Lena|Maximilian|Sophie|Björn|Greta|Tobias".split("|")
_DE_PLACES = "Berlin|München|Zürich|Köln|Wien|Hamburg|Düsseldorf|Graz".split("|")
_DE_NOUNS = (
    "Bericht|Brücke|Garten|Museum|Vertrag|Zug|Fluss|Bibliothek|Konzert|Wahl|Markt|Straße|Geschäft|"
    "Schule|Roman|Sturm"
).split("|")
_DE_ADJ = "schön|langweilig|großartig|schrecklich|wunderbar|enttäuschend|müde".split("|")
_DE_TEMPLATES = [
    "{p} besuchte am {d}. Mai {y} den {n} in {pl}.",
    "Der {n} in {pl} ist {a}, sagte {p}.",
    "Ich finde den {n} wirklich {a}!",
    "Warum hat {p} den {n} im Jahr {y} verlassen?",
    "In {pl} gibt es {d} neue Geschäfte und eine große Straße.",
    "Laut {p} kostet der {n} {price} Millionen Euro.",
    "Um {h} Uhr öffnet das Café neben der Schule in {pl}.",
    "Das Wetter ist heute {a}; es regnet seit {d} Tagen.",
]


def _fill(rng: random.Random, template: str, words: dict[str, list[str]]) -> str:
    """Fill every {slot} of the template from its word list, plus random numbers."""
    values = {slot: rng.choice(choices) for slot, choices in words.items()}
    values.update(
        d=str(rng.randint(1, 30)),
        y=str(rng.randint(1890, 2030)),
        pct=str(rng.randint(1, 99)),
        price=f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        h=str(rng.randint(1, 12)),
        m=f"{rng.randint(0, 59):02d}",
    )
    return template.format(**values)


def english_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Varied English sentences: names, places, organisations, numbers, punctuation, accents;
    plus n/2 lines of random everyday words (for subword statistics, not for reading)."""
    rng = random.Random(seed)
    words = dict(p=_PEOPLE, p2=_PEOPLE, pl=_PLACES, o=_ORGS, n=_NOUNS, v=_VERBS)
    words.update(good=_GOOD, bad=_BAD, q=_QUESTION_WORDS, day=_DAYS)
    sentences = [_fill(rng, _EN_TEMPLATES[i % len(_EN_TEMPLATES)], words) for i in range(n)]
    for _ in range(n // 2):
        line = " ".join(rng.choices(_COMMON, k=rng.randint(6, 14)))
        sentences.append(line.capitalize() + rng.choice(".?!,;"))
    return sentences


def german_corpus(n: int = 400, seed: int = 1) -> list[str]:
    """German-like target side for the Marian tokenizer, so the two spm models differ."""
    rng = random.Random(seed)
    words = dict(p=_DE_PEOPLE, pl=_DE_PLACES, n=_DE_NOUNS, a=_DE_ADJ)
    return [_fill(rng, _DE_TEMPLATES[i % len(_DE_TEMPLATES)], words) for i in range(n)]


# --------------------------------------------------------------------------- tokenizers


def _pad_vocab(tokens: list[str], size: int | None, filler: str) -> list[str]:
    """Extend with never-produced filler tokens up to `size`, so every model id decodes.

    The real models have tens of thousands of logits while the trained vocabularies have about a
    thousand entries; without fillers, a sampled id would have no token (or crash sentencepiece).
    """
    if size is None:
        return tokens
    if len(tokens) > size:
        raise ValueError(f"trained vocabulary ({len(tokens)}) exceeds the model's ({size})")
    return tokens + [filler.format(i) for i in range(size - len(tokens))]


def _wordpiece_vocab(corpus: Iterable[str], lowercase: bool, size: int | None) -> dict[str, int]:
    """A BERT-style WordPiece vocabulary: specials first ([PAD]=0), then subwords, each both as a
    word start and as a "##" continuation, so words split into realistic pieces ("work ##ing").

    The subwords come from tokenizers' plain BPE trainer, which is deterministic. Its
    WordPieceTrainer (like BPE with a "##" prefix) is not: ties are broken in hash order, so each
    build would give the seeded weights different tokens.
    """
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=_WORDPIECE_SUBWORDS, show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    pieces = [piece for piece, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1])]
    tokens = [*_WORDPIECE_SPECIALS, *pieces, *(f"##{piece}" for piece in pieces)]
    # "[unusedN]" like real BERT vocabularies: BertPreTokenizer splits on brackets, so never matched.
    tokens = _pad_vocab(tokens, size, "[unused{}]")
    return {token: i for i, token in enumerate(tokens)}


def _bert_tokenizer(
    cls: type[BertTokenizer], corpus: list[str], *, lowercase: bool, size: int | None, max_length: int
) -> BertTokenizer:
    """A fast BERT/DistilBERT tokenizer (v5: BertTokenizer *is* the tokenizers-backed class)."""
    vocab = _wordpiece_vocab(corpus, lowercase, size)
    return cls(vocab=vocab, do_lower_case=lowercase, model_max_length=max_length)


def _gpt2_tokenizer(corpus: list[str], *, size: int | None, max_length: int) -> GPT2Tokenizer:
    """Byte-level BPE like GPT-2: any text encodes, <|endoftext|> is the last id, no pad token."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        special_tokens=[_EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    trained = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]) if t != _EOT]
    # Merges name tokens, not ids, so the ids can be laid out like gpt2's: EOT at vocab_size - 1.
    tokens = _pad_vocab(trained, None if size is None else size - 1, "<unused{}>") + [_EOT]
    vocab = {token: i for i, token in enumerate(tokens)}
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _train_spm(corpus: list[str], path: Path) -> list[str]:
    """Train a unigram sentencepiece model like opus-mt's; return its ordinary pieces."""
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        vocab_size=_TOKENIZER_VOCAB,
        hard_vocab_limit=False,  # a small corpus cannot always fill the requested size
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,  # deterministic, and the corpus takes milliseconds anyway
        minloglevel=2,
    )
    path.write_bytes(buffer.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return [
        processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i))
    ]


def _marian_tokenizer(out: Path, *, size: int | None, max_length: int) -> MarianTokenizer:
    """source.spm + target.spm + a joint vocab.json laid out like opus-mt's.

    Marian maps pieces to ids through vocab.json, not through the spm ids: "</s>" is 0, "<unk>" 1,
    the pieces of both languages follow, and "<pad>" is the last id (58100 in opus-mt-en-de), which
    is also the decoder start token.
    """
    pieces = _train_spm(english_corpus(), out / "source.spm")
    pieces += _train_spm(german_corpus(), out / "target.spm")
    tokens = list(dict.fromkeys(["</s>", "<unk>", *pieces]))
    tokens = _pad_vocab(tokens, None if size is None else size - 1, "<unused{}>") + ["<pad>"]
    vocab_file = out / "vocab.json"
    vocab_file.write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    return MarianTokenizer(
        source_spm=str(out / "source.spm"),
        target_spm=str(out / "target.spm"),
        vocab=str(vocab_file),
        source_lang="en",
        target_lang="de",
        model_max_length=max_length,
    )


# --------------------------------------------------------------------------- models


def _bert_config(size: str, vocab_size: int, *, large: bool = False, **extra) -> BertConfig:
    if _small(size):
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=_TINY["hidden"],
            num_hidden_layers=_TINY["layers"],
            num_attention_heads=_TINY["heads"],
            intermediate_size=_TINY["ffn"],
            max_position_embeddings=128,
            initializer_range=_init(size) or 0.02,
            **extra,
        )
    if large:
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            **extra,
        )
    return BertConfig(vocab_size=vocab_size, **extra)


def _distilbert_config(size: str, vocab_size: int, **extra) -> DistilBertConfig:
    if _small(size):
        return DistilBertConfig(
            vocab_size=vocab_size,
            dim=_TINY["hidden"],
            n_layers=_TINY["layers"],
            n_heads=_TINY["heads"],
            hidden_dim=_TINY["ffn"],
            max_position_embeddings=128,
            initializer_range=_init(size) or 0.02,
            **extra,
        )
    return DistilBertConfig(vocab_size=vocab_size, **extra)


def _small(size: str) -> bool:
    return size in ("tiny", "peaked")


def _init(size: str) -> float | None:
    """Weight init std: "peaked" models get a large one so attention is sharp and every output
    depends on context (and on padding, if a mask were missing); None keeps the config default."""
    return PEAKED_INIT_STD if size == "peaked" else None


def _positions(size: str, real: int, tiny: int = 128) -> int:
    return tiny if _small(size) else real


def _real_vocab(size: str, key: str) -> int | None:
    """The model vocabulary to pad tokenizers to: None for tiny (the trained size is used)."""
    return None if _small(size) else _REAL_VOCAB[key]


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar: we log one line per checkpoint instead."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    with _no_progress_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_bert_uncased(out: Path, size: str) -> None:
    """bert-base-uncased: MLM head for mask, bare encoder for embed, in one weight file.

    Saved from BertForPreTraining, like the real checkpoint, so the file also holds the pooler:
    AutoModel (embed) then loads with nothing missing instead of a pooler re-randomised on every
    load; BertForMaskedLM just ignores the extra keys.
    """
    tokenizer = _bert_tokenizer(
        BertTokenizer,
        english_corpus(),
        lowercase=True,
        size=_real_vocab(size, "bert-uncased"),
        max_length=_positions(size, 512),
    )
    config = _bert_config(size, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    _save(out, BertForPreTraining(config), tokenizer)
    # save_pretrained records the saving class; name the MLM head as bert-base-uncased does.
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(out)


def _build_bert_cased_ner(out: Path, size: str) -> None:
    """dbmdz/bert-large-cased-finetuned-conll03-english shape and labels."""
    tokenizer = _bert_tokenizer(
        BertTokenizer,
        english_corpus(),
        lowercase=False,
        size=_real_vocab(size, "bert-cased"),
        max_length=_positions(size, 512),
    )
    config = _bert_config(
        size,
        len(tokenizer),
        large=True,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(NER_LABELS),
        label2id={label: i for i, label in NER_LABELS.items()},
    )
    _save(out, BertForTokenClassification(config), tokenizer)


def _distilbert_builder(
    head: type[PreTrainedModel], labels: dict[int, str] | None = None
) -> Callable[[Path, str], None]:
    """Builder for a distilbert-base-uncased model with the given head (QA or classification).

    DistilBertTokenizer (not BertTokenizer) because it does not emit token_type_ids, which
    DistilBERT's forward does not accept.
    """

    def build(out: Path, size: str) -> None:
        tokenizer = _bert_tokenizer(
            DistilBertTokenizer,
            english_corpus(),
            lowercase=True,
            size=_real_vocab(size, "bert-uncased"),
            max_length=_positions(size, 512),
        )
        extra = {}
        if labels is not None:
            extra = {"id2label": dict(labels), "label2id": {label: i for i, label in labels.items()}}
        config = _distilbert_config(size, len(tokenizer), pad_token_id=tokenizer.pad_token_id, **extra)
        _save(out, head(config), tokenizer)

    return build


def _build_gpt2(out: Path, size: str) -> None:
    max_positions = 256 if _small(size) else 1024
    tokenizer = _gpt2_tokenizer(english_corpus(), size=_real_vocab(size, "gpt2"), max_length=max_positions)
    eot = tokenizer.eos_token_id
    if _small(size):
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max_positions,
            n_embd=_TINY["hidden"],
            n_layer=_TINY["layers"],
            n_head=_TINY["heads"],
            n_inner=_TINY["ffn"],
            initializer_range=_init(size) or 0.02,
            bos_token_id=eot,
            eos_token_id=eot,
        )
    else:
        config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=eot, eos_token_id=eot)
    _save(out, GPT2LMHeadModel(config), tokenizer)


def _build_marian(out: Path, size: str) -> None:
    """Helsinki-NLP/opus-mt-en-de shape: pad is the decoder start, eos 0, 4 beams by default."""
    max_positions = _positions(size, 512)
    tokenizer = _marian_tokenizer(out, size=_real_vocab(size, "marian"), max_length=max_positions)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if _small(size):
        width, layers, heads, ffn = _TINY["hidden"], _TINY["layers"], _TINY["heads"], _TINY["ffn"]
    else:
        width, layers, heads, ffn = 512, 6, 8, 2048
    config = MarianConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        d_model=width,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=pad,
        decoder_start_token_id=pad,
        eos_token_id=eos,
        bos_token_id=eos,
        forced_eos_token_id=eos,
        init_std=_init(size) or 0.02,
    )
    model = MarianMTModel(config)
    # A fresh GenerationConfig rather than edits to the derived one: that one is flagged
    # `_from_model_config`, which lets transformers treat it as disposable.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=eos,
        forced_eos_token_id=eos,
        bad_words_ids=[[pad]],  # as opus-mt: never emit <pad> as a token
        num_beams=4,
        max_length=max_positions,
    )
    _save(out, model, tokenizer)


# name -> (builder, tasks served). A builder writes a whole checkpoint (weights, configs,
# tokenizer files) into the directory it is given.
Builder = Callable[[Path, str], None]
_CHECKPOINTS: dict[str, tuple[Builder, tuple[str, ...]]] = {
    "gpt2": (_build_gpt2, ("generate",)),
    "bert-uncased": (_build_bert_uncased, ("mask", "embed")),
    "opus-mt-en-de": (_build_marian, ("translate",)),
    "distilbert-squad": (_distilbert_builder(DistilBertForQuestionAnswering), ("ask",)),
    "bert-cased-conll03": (_build_bert_cased_ner, ("ner",)),
    "distilbert-sst2": (
        _distilbert_builder(DistilBertForSequenceClassification, SENTIMENT_LABELS),
        ("sentiment",),
    ),
}


# --------------------------------------------------------------------------- cache


def _marker_content(name: str, size: str) -> dict:
    return {
        "builder_version": BUILDER_VERSION,
        "transformers": transformers.__version__,
        "name": name,
        "size": size,
        "tasks": list(_CHECKPOINTS[name][1]),
    }


def _is_complete(path: Path, name: str, size: str) -> bool:
    try:
        return json.loads((path / MARKER).read_text()) == _marker_content(name, size)
    except (OSError, ValueError):
        return False


def _build_one(root: Path, name: str, size: str) -> Path:
    """Build checkpoint `name` into root/<size>-<name>/, unless a complete one is already there.

    Built in a scratch directory and renamed into place with the marker already written, so a
    crash never leaves a half checkpoint under the final name and concurrent builders (e.g. two
    test workers) do not trip over each other: the first rename wins, the other build is dropped.
    """
    final = root / f"{size}-{name}"
    if _is_complete(final, name, size):
        log.debug("reusing synthetic checkpoint %s", final)
        return final

    builder, tasks = _CHECKPOINTS[name]
    scratch = root / f".{final.name}.{uuid.uuid4().hex}.tmp"
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    try:
        # Seed per checkpoint, so its weights do not depend on which others were already cached.
        torch.manual_seed(zlib.crc32(f"{size}-{name}".encode()))
        builder(scratch, size)
        gc.collect()  # drop a large model before building the next one
        (scratch / MARKER).write_text(json.dumps(_marker_content(name, size), indent=2))

        if final.exists() and not _is_complete(final, name, size):
            log.warning("replacing incomplete or stale synthetic checkpoint %s", final)
            shutil.rmtree(final)
        try:
            os.rename(scratch, final)
        except OSError:
            if not _is_complete(final, name, size):
                raise
            log.debug("another process built %s first; using it", final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info(
        "built synthetic %s checkpoint %s (%s) in %.1fs",
        size,
        final,
        ", ".join(tasks),
        time.perf_counter() - started,
    )
    return final


def build_checkpoints(root: Path, size: str = "tiny") -> dict[str, Path]:
    """Return {task: checkpoint_dir} for tasks generate, mask, translate, ask, ner, sentiment, embed.

    Directories are root/<size>-<name>/ and are reused when already complete, so calling this again
    (or from another process) is cheap. mask and embed map to the same directory.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (_, tasks) in _CHECKPOINTS.items():
        path = _build_one(root, name, size)
        paths.update(dict.fromkeys(tasks, path))
    return {task: paths[task] for task in TASKS}
