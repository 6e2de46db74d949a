"""Half-precision matrix products whose rows do not depend on the rows beside them.

The bot's promise in bf16 (attention.py) rests on one measured fact: a Linear layer computes each
row (token) on its own, with the same bits whatever else is in the call. That held on the
AVX512-BF16 CPU it was measured on, except for one row alone (two copies, attention.py). It does
not hold on every CPU: on a Xeon with AMX (torch 2.13, oneDNN 3.12 `brg_matmul:avx10_1_512_amx`)
a bf16 product's blocking depends on the call's row count, so from 512 inputs on some rows' outputs
move in the last bit once a call has more than 32 rows, and move again at a few hundred and near
700 rows. A packed encoder puts a whole batch's tokens in one call, so 38 of 68 real-size
distilbert answers differed from the text alone (scores by up to 0.004).

So a model in half precision on CPU is probed once at load, on its own layers' shapes: does a row's
product change with the rows around it? Where it does, every Linear (and GPT-2's Conv1D) computes
on pieces of exactly PIECE_ROWS rows, the last one padded with zeros: one call shape, so one
blocking, and a row's bits depend on that row only (checked at every position of a piece, by the
same probe). Where even pieces vary, the model's requests run one at a time (the executor's
"alone" rule). Float32 is not touched: its promise is the same answer, not the same bits.

Pieces cost little in a batch and something alone: at 128 rows a 30-token text computes 128 rows
(real-size distilbert alone 15 → 23 ms), while a batch of 32 texts (1,170 tokens) runs as fast as
in one call, because oneDNN runs a 768-wide product of 700–1,500 rows on one of the two cores
(BENCHMARKS.md "bf16 products that change with the call's rows").
"""

from __future__ import annotations

import logging
import threading
import types
from typing import Any

import torch

log = logging.getLogger(__name__)

PIECE_ROWS = 128  # measured: 64 slows a full batch by a quarter, 256 doubles a short text's time alone
STEADY, IN_PIECES, VARYING = "steady", f"in pieces of {PIECE_ROWS} rows", "varying"
_PROBE_ROWS = 64
_PROBE_CALLS = (33, 64, 100, 200, 700, 1300)  # row counts where AMX's blocking was seen to change
_probed: dict[tuple[int, int, bool, torch.dtype, bool], bool] = {}  # (in, out, Linear, dtype, pieces)  # a property of this machine, kept per process
_probe_lock = threading.Lock()


def product(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows [n, in] @ weight_t [in, out] + bias, in one call."""
    return torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)


def in_pieces(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None,
              piece: int | None = None) -> torch.Tensor:
    """The same product, computed on calls of exactly `piece` rows each (PIECE_ROWS unless given;
    the last padded with zeros)."""
    piece = piece or PIECE_ROWS
    count = rows.shape[0]
    out = rows.new_empty(count, weight_t.shape[1])
    whole = count - count % piece
    for start in range(0, whole, piece):
        _product_into(rows[start:start + piece], weight_t, bias, out[start:start + piece])
    if whole < count:
        padded = rows.new_zeros(piece, rows.shape[1])
        padded[: count - whole] = rows[whole:]
        out[whole:] = product(padded, weight_t, bias)[: count - whole]
    return out


def _product_into(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    if bias is None:
        torch.mm(rows, weight_t, out=out)
    else:
        torch.addmm(bias, rows, weight_t, out=out)


def rows_move(compute, in_features: int, out_features: int, dtype: torch.dtype, linear: bool = True) -> bool:
    """Whether `compute(rows, weight_t, bias)` gives some row other bits in a call of more rows
    than in a call of two: 64 rows, at the start and at the end of calls of _PROBE_CALLS rows.
    `linear`: the weight laid out as Linear keeps it ([out, in], transposed); else as Conv1D's."""
    seeded = torch.Generator().manual_seed(0)  # its own: callers' random state is left alone
    shape = (out_features, in_features) if linear else (in_features, out_features)
    weight = torch.randn(*shape, generator=seeded).to(dtype)
    weight_t = weight.t() if linear else weight
    bias = torch.randn(out_features, generator=seeded).to(dtype)
    rows = torch.randn(_PROBE_ROWS, in_features, generator=seeded).to(dtype)
    with torch.inference_mode():
        alone = torch.cat([compute(rows[i:i + 2], weight_t, bias) for i in range(0, _PROBE_ROWS, 2)])
        for count in _PROBE_CALLS:
            seen = min(count, _PROBE_ROWS)
            filler = torch.randn(count, in_features, generator=seeded).to(dtype)
            for at in (slice(0, seen), slice(count - seen, count)):  # first and last in the call
                filler[at] = rows[:seen]
                if not torch.equal(compute(filler, weight_t, bias)[at], alone[:seen]):
                    return True
    return False


def _moves(shape: tuple[int, int, bool, torch.dtype], pieces: bool) -> bool:
    key = (*shape, pieces)
    with _probe_lock:
        if key not in _probed:
            in_features, out_features, linear, dtype = shape
            _probed[key] = rows_move(in_pieces if pieces else product, in_features, out_features, dtype, linear)
        return _probed[key]


def _layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, tuple[int, int, bool, torch.dtype]]]:
    """(layer, (inputs, outputs, is a Linear, dtype)) for each half-precision Linear and GPT-2
    Conv1D of the model (layers a class keeps in float32 are left as they are)."""
    from transformers.pytorch_utils import Conv1D

    found = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module.weight.dtype in (torch.bfloat16, torch.float16):
            linear = isinstance(module, torch.nn.Linear)
            sizes = (module.in_features, module.out_features) if linear else tuple(module.weight.shape)
            found.append((module, (*sizes, linear, module.weight.dtype)))
    return found


def make_steady(model: torch.nn.Module) -> str:
    """Probe a half-precision CPU model's layer shapes (each shape once per process) and make its
    products independent of the rows beside them where needed: STEADY (nothing to do), IN_PIECES
    (installed), or VARYING (its requests must run one at a time). Recorded on the model."""
    layers = _layers(model)
    shapes = sorted({shape for _, shape in layers})
    if not any(_moves(shape, pieces=False) for shape in shapes):
        found = STEADY
    elif any(_moves(shape, pieces=True) for shape in shapes):
        found = VARYING
    else:
        for module, _ in layers:
            _compute_in_pieces(module)
        found = IN_PIECES
    model._automodel_products = found
    return found


def verdict(model: Any) -> str:
    """make_steady's verdict for the model; STEADY for a model never probed (float32, a GPU)."""
    return getattr(model, "_automodel_products", STEADY)


def _compute_in_pieces(module: torch.nn.Module) -> None:
    """Replace the layer's forward with in_pieces on its own weight (Linear keeps [out, in], Conv1D
    [in, out]). Read through self at each call: a deep copy computes with its own weights."""
    linear = isinstance(module, torch.nn.Linear)

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight_t = self.weight.t() if linear else self.weight
        out = in_pieces(x.reshape(-1, x.shape[-1]), weight_t, self.bias)
        return out.view(*x.shape[:-1], out.shape[-1])

    module.forward = types.MethodType(forward, module)
