"""The offline random-weight checkpoints load through the normal Auto-class path and run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from bot.synthetic import MARKER, TASKS, build_checkpoints

AUTO_CLASSES = {
    "generate": AutoModelForCausalLM,
    "mask": AutoModelForMaskedLM,
    "translate": AutoModelForSeq2SeqLM,
    "ask": AutoModelForQuestionAnswering,
    "ner": AutoModelForTokenClassification,
    "sentiment": AutoModelForSequenceClassification,
    "embed": AutoModel,
}
# Tokenizer limits of the tiny set: BERT-likes and Marian are short so windowing is reachable.
MAX_LENGTH = {"generate": 256, "translate": 128} | dict.fromkeys(
    ("mask", "ask", "ner", "sentiment", "embed"), 128
)
CONLL03 = {
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
UNICODE = "Emoji 🤗🎉, accents Zürich & São Paulo, CJK 東京, math ∑≠∞, zero-width \u200b."


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_checkpoints(tmp_path_factory.mktemp("synthetic"), "tiny")


def load(checkpoints: dict[str, Path], task: str):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[task])
    model, info = AUTO_CLASSES[task].from_pretrained(checkpoints[task], output_loading_info=True)
    # Nothing re-randomised at load time: every weight the Auto class needs is in the file.
    assert not info["missing_keys"], info["missing_keys"]
    return tokenizer, model.eval()


def test_every_task_gets_a_complete_directory(checkpoints: dict[str, Path]) -> None:
    assert tuple(checkpoints) == TASKS
    for path in checkpoints.values():
        assert (path / "config.json").is_file()
        assert (path / "model.safetensors").is_file()
        assert (path / MARKER).is_file()


def test_mask_and_embed_share_one_checkpoint(checkpoints: dict[str, Path]) -> None:
    assert checkpoints["mask"] == checkpoints["embed"]
    assert len(set(checkpoints.values())) == len(TASKS) - 1


@pytest.mark.parametrize("task", TASKS)
def test_tokenizer_limits_and_vocab_fit_the_model(checkpoints: dict[str, Path], task: str) -> None:
    tokenizer, model = load(checkpoints, task)
    assert tokenizer.model_max_length == MAX_LENGTH[task]
    assert len(tokenizer) <= model.config.vocab_size
    # Arbitrary text encodes (unknown characters may become UNK) and every id is in range.
    ids = tokenizer(UNICODE)["input_ids"]
    assert ids and max(ids) < model.config.vocab_size
    assert isinstance(tokenizer.decode(ids, skip_special_tokens=True), str)


def test_generate_is_gpt2_like(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "generate")
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config.n_positions == 256
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.pad_token is None
    assert tokenizer.eos_token_id == model.config.eos_token_id == len(tokenizer) - 1
    inputs = tokenizer("Alice visited Paris 🤗", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(
            **inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    assert logits.shape == (1, inputs.input_ids.shape[1], model.config.vocab_size)
    assert out.shape == (1, inputs.input_ids.shape[1] + 5)
    assert tokenizer.decode(out[0]).startswith("Alice visited Paris 🤗")


def test_mask_fills_the_mask_position(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "mask")
    assert type(model).__name__ == "BertForMaskedLM"
    inputs = tokenizer(f"Paris is the {tokenizer.mask_token} of France.", return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(inputs.input_ids[0].tolist())[1] == "paris"  # uncased
    assert (inputs.input_ids == tokenizer.mask_token_id).sum() == 1
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], model.config.vocab_size)
    assert model.config.max_position_embeddings == 128


def test_embed_runs_the_shared_encoder(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "embed")
    assert type(model).__name__ == "BertModel"
    inputs = tokenizer(["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (2, inputs.input_ids.shape[1], model.config.hidden_size)


def test_translate_beam_search_decodes(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "translate")
    assert type(tokenizer).__name__ == "MarianTokenizer"
    assert type(model).__name__ == "MarianMTModel"
    config = model.config
    assert config.decoder_start_token_id == config.pad_token_id == tokenizer.pad_token_id
    assert config.eos_token_id == tokenizer.eos_token_id == 0
    assert config.max_position_embeddings == 128
    inputs = tokenizer(["Hello world.", "Alice met Bob in Zürich 🤗"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, num_beams=4, max_new_tokens=8)
    assert out.shape[0] == 2 and out.shape[1] <= 9
    assert (out[:, 0] == config.decoder_start_token_id).all()
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(text, str) for text in texts)


def test_ask_answers_over_windows_of_a_long_context(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "ask")
    assert type(model).__name__ == "DistilBertForQuestionAnswering"
    question = "Where did Alice go?"
    context = " ".join(["Alice Johnson visited the museum in Paris on Monday."] * 40)
    inputs = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=128,
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
        return_tensors="pt",
    )
    assert inputs.input_ids.shape[0] > 1 and inputs.input_ids.shape[1] == 128
    assert "token_type_ids" not in inputs  # DistilBERT's forward does not take them
    with torch.no_grad():
        out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    assert out.start_logits.shape == out.end_logits.shape == inputs.input_ids.shape


def test_ner_is_cased_with_conll03_labels(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "ner")
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == CONLL03
    assert model.config.label2id == {label: i for i, label in CONLL03.items()}
    inputs = tokenizer("Alice Johnson works for Google in Zürich.", return_tensors="pt")
    assert "Alice" in tokenizer.convert_ids_to_tokens(inputs.input_ids[0].tolist())
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], 9)


def test_sentiment_has_two_labels(checkpoints: dict[str, Path]) -> None:
    tokenizer, model = load(checkpoints, "sentiment")
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    inputs = tokenizer(["What a wonderful concert!", "Boring."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 2)


def test_complete_checkpoints_are_reused_and_incomplete_ones_rebuilt(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    root = next(iter(checkpoints.values())).parent
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    markers = {path.name: (copy / path.name / MARKER).stat().st_mtime_ns for path in checkpoints.values()}
    broken = checkpoints["sentiment"].name
    (copy / broken / MARKER).unlink()  # as if a build had died before finishing
    (copy / broken / "model.safetensors").unlink()

    again = build_checkpoints(copy, "tiny")

    assert {task: path.name for task, path in again.items()} == {
        task: path.name for task, path in checkpoints.items()
    }
    for name, mtime in markers.items():
        if name != broken:
            assert (copy / name / MARKER).stat().st_mtime_ns == mtime, f"{name} was rebuilt"
    assert (copy / broken / MARKER).is_file()
    assert (copy / broken / "model.safetensors").is_file()
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]  # no scratch dirs left


def test_builds_are_deterministic(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Same weights *and* same token ids on every build, so results compare across runs."""
    again = build_checkpoints(tmp_path, "tiny")
    for task, first in checkpoints.items():
        files = sorted(path.name for path in first.iterdir())
        assert files == sorted(path.name for path in again[task].iterdir())
        for name in files:
            assert (first / name).read_bytes() == (again[task] / name).read_bytes(), f"{task}: {name}"
