"""Half-precision products that do not depend on the rows beside them (bot/inference/products.py).

On some CPUs (a Xeon with AMX here) a bf16 product's bits for a row change with the call's row
count, so a packed batch of texts gave other answers than each text alone. The probe finds it at
load, and the layers then compute in pieces of a fixed row count. The model-level tests run a
BERT widened to bert-base's 3072-wide feed-forward (the peaked model's 128 are too few to show
it) and go red where the CPU shows the effect and the fix is taken away.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bot.inference import products
from bot.inference.local import LocalBackend
from bot.inference.tasks import embed, sentiment
from tests.answers import run
from tests.test_invariance import MIXED_TEXTS, through_the_executor

REAL_SHAPES = [(768, 3072, True), (3072, 768, True), (768, 768, True), (768, 2304, False), (3072, 768, False)]


@pytest.mark.parametrize("in_features,out_features,linear", REAL_SHAPES)
def test_a_row_gets_the_same_products_in_pieces_wherever_it_sits(in_features, out_features, linear):
    """bert-base's and gpt2's layer shapes in bf16: computed in pieces, 64 rows come out with the
    same bits at the start and at the end of calls of 33 to 1,300 rows as in calls of two."""
    assert not products.rows_move(products.in_pieces, in_features, out_features, torch.bfloat16, linear)


def test_the_probe_sees_a_product_that_depends_on_the_rows_beside_it():
    """The probe can fail: a product that adds a trace of the call's row count is caught; float32
    rows computed one by one are not. (A real CPU shows it or not; this fault shows everywhere.)"""
    def counted(weight, bias):
        return lambda rows: products.plain(weight, bias)(rows) + rows.shape[0] * 1e-2

    def row_by_row(weight, bias):
        return lambda rows: torch.cat([products.plain(weight, bias)(row[None]) for row in rows])

    assert products.rows_move(counted, 64, 32, torch.bfloat16)
    assert not products.rows_move(row_by_row, 64, 32, torch.float32)


@pytest.mark.parametrize("prepacked", [True, False])
def test_pieces_compute_the_same_product(prepacked, monkeypatch):
    """In float32 pieces give the plain product's values, on a prepacked weight or with addmm."""
    if not prepacked:
        monkeypatch.setattr(products, "_prepacked", lambda weight, bias, piece: None)
    rows, weight, bias = torch.randn(300, 48), torch.randn(20, 48), torch.randn(20)
    assert torch.allclose(products.in_pieces(weight, bias)(rows), rows @ weight.T + bias, atol=1e-4)
    assert torch.allclose(products.in_pieces(weight, None, piece=4)(rows[:5]), rows[:5] @ weight.T, atol=1e-4)


@pytest.fixture(scope="module")
def wide_encoder_settings(peaked_settings, peaked_checkpoints, tmp_path_factory):
    """bf16 settings with /embed on the peaked BERT at 128 wide with bert-base's 3072-wide
    feed-forward: its 3072→128 product changes with the call's rows on AMX from 64 rows on. /embed's
    mean-pooled vector shows a last-bit change that a saturated label score would hide."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = peaked_checkpoints["embed"]
    config = BertConfig.from_pretrained(source)
    config.hidden_size, config.intermediate_size = 128, 3072
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("wide-bert")
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return dataclasses.replace(peaked_settings, dtype="bfloat16", max_queued_per_user=100,
                               checkpoints={**peaked_settings.checkpoints, "embed": str(out)})


async def _wide_through_the_executor(settings) -> tuple[list, list, list[int]]:
    return await through_the_executor(settings, [embed.EmbedRequest(t) for t in MIXED_TEXTS * 2], task="embed")


async def test_wide_bf16_encoder_batches_bit_identical_to_alone(wide_encoder_settings):
    alone, batched, sizes = await _wide_through_the_executor(wide_encoder_settings)
    assert max(sizes) > 8  # a packed call of far more than 64 rows
    assert batched == alone  # exactly


async def test_without_pieces_the_wide_encoder_moves_where_this_cpu_shows_it(wide_encoder_settings, monkeypatch):
    """The comparison above can fail: with the probe's verdict ignored, a CPU whose products change with
    the call's rows gives batched answers other than alone."""
    backend = LocalBackend(wide_encoder_settings)
    run(backend, "embed", [embed.EmbedRequest(MIXED_TEXTS[0])])
    if backend.products("embed") == products.STEADY:
        pytest.skip("this CPU's bf16 products do not change with the rows beside them: nothing to fix here")
    monkeypatch.setattr(products, "make_steady", lambda model: products.STEADY)
    alone, batched, _ = await _wide_through_the_executor(wide_encoder_settings)
    assert batched != alone


async def test_products_that_vary_even_in_pieces_run_requests_one_at_a_time(wide_encoder_settings, monkeypatch):
    """A CPU where even pieces vary (a fault no machine here has, so the probe's answer is forced):
    the model's requests run alone, and their answers are the same as alone."""
    monkeypatch.setattr(products, "_moves", lambda shape, pieces: True)
    alone, batched, sizes = await _wide_through_the_executor(wide_encoder_settings)
    assert set(sizes) == {1} and batched == alone


def test_float32_models_are_not_probed(peaked_settings):
    backend = LocalBackend(dataclasses.replace(peaked_settings, dtype="float32"))
    run(backend, "sentiment", [sentiment.SentimentRequest(MIXED_TEXTS[0])])
    assert not hasattr(backend._models[backend._key("sentiment")].model, "_automodel_products")
    assert backend.products("sentiment") == products.STEADY
