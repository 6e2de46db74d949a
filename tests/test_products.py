"""Half-precision products that do not depend on the rows beside them (bot/inference/products.py).

On some CPUs (a Xeon with AMX here) a bf16 product's bits for a row change with the call's row
count, so a packed batch of texts gave other answers than each text alone. The probe finds it at
load, and the layers then compute in pieces of fixed row counts (128, and 64 or 256 where a shape
gives those the same bits). The model-level tests run a BERT widened to bert-base's 3072-wide
feed-forward (the peaked model's 128 are too few to show it), and for the piece sizes one as wide
as bert-base, and go red where the CPU shows the effect and the fix is taken away.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from bot.inference import products
from bot.inference.local import LocalBackend
from bot.inference.tasks import TASKS, embed, sentiment
from tests.answers import run
from tests.test_invariance import MIXED_TEXTS, through_the_executor, widened_bf16_settings

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
    """In float32 pieces give the plain product's values, on a prepacked weight or with addmm, for
    a row count under a piece, over several, an exact multiple, and none."""
    if not prepacked:
        monkeypatch.setattr(products, "_prepacked", lambda weight, bias: None)
    rows, weight, bias = torch.randn(300, 48), torch.randn(20, 48), torch.randn(20)
    for sizes in ((128,), products.PIECE_SIZES):
        for count in (5, 256, 300, 0):
            got = products.in_pieces(weight, bias, sizes)(rows[:count])
            assert got.shape == (count, 20) and torch.allclose(got, rows[:count] @ weight.T + bias, atol=1e-4)
    assert torch.allclose(products.in_pieces(weight, None, (4,))(rows[:5]), rows[:5] @ weight.T, atol=1e-4)


@pytest.mark.parametrize("count", [1, 20, 64, 65, 100, 129, 300, 1170, 4100])
def test_a_plan_covers_the_rows_with_sizes_it_may_use_and_little_padding(count):
    """Every row in a piece, only sizes given, padding under the largest size, and never more calls
    than pieces of the largest size would need (plus one)."""
    for sizes in ((128,), (64, 128), products.PIECE_SIZES):
        planned = products.plan(count, sizes)
        assert set(planned) <= set(sizes) and 0 <= sum(planned) - count < max(sizes)
        assert sum(planned[:-1]) < count  # only the last piece is padded
        assert len(planned) <= -(-count // max(sizes)) + 1
    assert products.plan(0, products.PIECE_SIZES) == ()
    assert products.plan(20, products.PIECE_SIZES) == (64,) and sorted(products.plan(300, products.PIECE_SIZES)) == [64, 256]


def _row_count_fault(changed: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A stand-in for the prepacked piece product: the plain product, plus 0.01 where `changed(rows)`
    is true, but only in calls of other than PIECE_ROWS rows (as another blocking would)."""
    def prepacked(weight, bias):
        def piece_product(rows):
            out = products.plain(weight, bias)(rows)
            if rows.shape[0] == products.PIECE_ROWS:
                return out
            return out + changed(rows).to(out.dtype) * 1e-2
        return piece_product
    return prepacked


FAULTS = {
    # every output of every row: the plainest difference
    "everywhere": lambda rows: torch.ones(rows.shape[0], 1, dtype=torch.bool),
    # only the second half of a 256-row piece: a probe of one 128-row window would miss it
    "past 128 rows": lambda rows: (torch.arange(rows.shape[0]) >= 128)[:, None],
    # about a row in 740, on a 2-wide head (320 outputs per 64-row call): one call's rows would miss it
    "rare rows": lambda rows: (rows[:, :1] > 3.0),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_piece_size_is_kept_only_where_it_gives_the_128_row_pieces_bits(monkeypatch, fault):
    """The size probe can fail: a piece product that moves some outputs in calls of 64 or 256 rows
    keeps only 128, whether it moves every row, only rows past 128 in a piece, or rare rows of a
    2-wide head. The honest product of the same shape keeps 128 at least."""
    shape = (64, 2, True, True, torch.bfloat16)
    honest = products._kept_sizes(shape)
    assert products.PIECE_ROWS in honest and set(honest) <= set(products.PIECE_SIZES)
    monkeypatch.setattr(products, "_sizes_kept", {})
    monkeypatch.setattr(products, "_prepacked", _row_count_fault(FAULTS[fault]))
    kept = products._kept_sizes(shape)
    if fault == "past 128 rows":  # a 64-row piece never reaches row 128: only 256 must go
        assert 256 not in kept
    else:
        assert kept == (products.PIECE_ROWS,)


def _pieces_forced(monkeypatch) -> None:
    """As on a CPU whose products move in one call and hold in pieces (this one may not need them)."""
    monkeypatch.setattr(products, "_moves", lambda shape, pieces: not pieces)


@pytest.mark.parametrize("task", ["sentiment", "generate"])
def test_a_model_in_pieces_computes_what_it_did(tiny_checkpoints, monkeypatch, task):
    """The layers' forwards replaced (distilbert's Linear, GPT-2's Conv1D, on [batch, tokens, in]
    inputs): in float32 the same outputs as the model as loaded, and a prepacked copy counted."""
    import copy

    import transformers

    _pieces_forced(monkeypatch)
    auto = {"sentiment": transformers.AutoModelForSequenceClassification, "generate": transformers.AutoModelForCausalLM}
    model = auto[task].from_pretrained(tiny_checkpoints[task]).eval()
    pieced = copy.deepcopy(model)
    assert products.make_steady(pieced) == products.IN_PIECES and products.extra_bytes(pieced) > 0
    ids = torch.randint(5, 200, (4, 100))  # 400 rows a layer: three full pieces and a part
    with torch.inference_mode():  # hidden states too: the tiny heads' logits are too small to show 0.1 %
        got, want = (m(input_ids=ids, output_hidden_states=True) for m in (pieced, model))
        assert torch.allclose(got.logits, want.logits, atol=1e-4)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got.hidden_states, want.hidden_states))


def test_a_layer_the_pieces_cannot_reach_makes_the_model_run_requests_alone(monkeypatch):
    class OwnLinear(torch.nn.Linear):  # a forward of its own, which pieces would replace
        def forward(self, x):
            return super().forward(x) * 2

    _pieces_forced(monkeypatch)
    assert products.make_steady(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))) == products.IN_PIECES
    assert products.make_steady(torch.nn.Sequential(torch.nn.Linear(8, 8), OwnLinear(8, 8))) == products.VARYING


@pytest.fixture(scope="module")
def wide_encoder_settings(peaked_settings, peaked_checkpoints, tmp_path_factory):
    """bf16 settings with /embed on the peaked BERT at 128 wide with bert-base's 3072-wide
    feed-forward: its 3072→128 product changes with the call's rows on AMX from 64 rows on. /embed's
    mean-pooled vector shows a last-bit change that a saturated label score would hide."""
    from transformers import BertModel

    return widened_bf16_settings(peaked_settings, peaked_checkpoints, tmp_path_factory, "embed", BertModel,
                                 hidden_size=128, intermediate_size=3072)


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


@pytest.fixture(scope="module")
def base_wide_settings(peaked_settings, peaked_checkpoints, tmp_path_factory):
    """bf16 /embed on one layer as wide as bert-base (768, feed-forward 3072): on AMX its 3072→768
    product gives 256-row pieces other bits than 128-row ones (the 128-wide model's shapes hold at
    every size), so only there a wrongly kept size shows."""
    from transformers import BertModel

    return widened_bf16_settings(peaked_settings, peaked_checkpoints, tmp_path_factory, "embed", BertModel,
                                 hidden_size=768, intermediate_size=3072, num_hidden_layers=1)


async def test_pieces_of_several_sizes_keep_batches_bit_identical_to_alone(base_wide_settings, monkeypatch):
    """A batch's packed call of hundreds of rows computes in the largest pieces each shape holds at,
    a text alone in one small piece: the same bits. And the comparison can fail: with every size
    kept whatever the probe saw, a CPU where a size gives other bits gives other answers."""
    backend = LocalBackend(base_wide_settings)
    run(backend, "embed", [embed.EmbedRequest(MIXED_TEXTS[0])])
    model = backend._models[backend._key("embed")].model
    kept = {products._kept_sizes(shape) for _, shape in products._layers(model)}
    plans: list[tuple[int, ...]] = []
    planned = products.plan
    monkeypatch.setattr(products, "plan", lambda count, sizes: plans.append(planned(count, sizes)) or plans[-1])
    alone, batched, batch_sizes = await _wide_through_the_executor(base_wide_settings)
    assert max(batch_sizes) > 8 and batched == alone
    if backend.products("embed") != products.IN_PIECES:
        pytest.skip("this CPU's products do not change with the rows beside them: nothing more to show")
    used, kept_any = {size for sizes in plans for size in sizes}, set().union(*kept)
    assert kept_any - {products.PIECE_ROWS} <= used <= kept_any  # alone in 64-row pieces, batched in 256-row ones
    if kept == {products.PIECE_SIZES}:
        pytest.skip("this CPU gives every piece size the same bits: nothing more to show")
    monkeypatch.setattr(products, "_kept_sizes", lambda shape: products.PIECE_SIZES)
    alone, batched, _ = await _wide_through_the_executor(base_wide_settings)
    assert batched != alone


async def test_products_that_vary_even_in_pieces_run_requests_one_at_a_time(wide_encoder_settings, monkeypatch):
    """A CPU where even pieces vary (a fault no machine here has, so the probe's answer is forced):
    the model's requests run alone, and their answers are the same as alone."""
    monkeypatch.setattr(products, "_moves", lambda shape, pieces: True)
    alone, batched, sizes = await _wide_through_the_executor(wide_encoder_settings)
    assert set(sizes) == {1} and batched == alone


async def test_a_batch_cut_before_its_model_turned_varying_runs_request_by_request(wide_encoder_settings, monkeypatch):
    """/admin reload can swap the model between the executor's cut and the run: the backend then
    runs each request of the batch on its own, as the "alone" rule would have cut it."""
    backend = LocalBackend(wide_encoder_settings)
    requests = [embed.EmbedRequest(t) for t in MIXED_TEXTS[:6]]
    alone = [run(backend, "embed", [request])[0] for request in requests]
    model = backend._models[backend._key("embed")].model
    monkeypatch.setattr(model, "_automodel_products", products.VARYING)
    sizes: list[int] = []
    predict = TASKS["embed"].predict

    def counted(model, tokenizer, batch, ctx):
        sizes.append(len(batch))
        return predict(model, tokenizer, batch, ctx)

    monkeypatch.setattr(TASKS["embed"], "predict", counted)
    assert backend.batch_rule("embed") == "alone"
    assert run(backend, "embed", requests) == alone and sizes == [1] * 6


def test_float32_models_are_not_probed(peaked_settings):
    backend = LocalBackend(dataclasses.replace(peaked_settings, dtype="float32"))
    run(backend, "sentiment", [sentiment.SentimentRequest(MIXED_TEXTS[0])])
    assert not hasattr(backend._models[backend._key("sentiment")].model, "_automodel_products")
    assert backend.products("sentiment") == products.STEADY


def test_each_shape_is_probed_once_per_process(monkeypatch):
    """Probing takes seconds at load (gpt2: 4 s): a second model, or a reload, with the same layer
    shapes asks the cache, not the CPU."""
    probes: list[tuple] = []
    rows_move, gives_piece_bits = products.rows_move, products.gives_piece_bits
    monkeypatch.setattr(products, "_probed", {})
    monkeypatch.setattr(products, "_sizes_kept", {})
    monkeypatch.setattr(products, "rows_move", lambda *args, **kw: probes.append(args) or rows_move(*args, **kw))
    monkeypatch.setattr(products, "gives_piece_bits", lambda *args, **kw: probes.append(args) or gives_piece_bits(*args, **kw))
    counts = []
    for _ in range(2):
        products.make_steady(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 16)).to(torch.bfloat16))
        counts.append(len(probes))
    assert counts[0] > 0 and counts[1] == counts[0]
