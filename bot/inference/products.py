"""Half-precision matrix products whose rows do not depend on the rows beside them.

The bot's promise in bf16 (attention.py) rests on one measured fact: a Linear layer computes each
row (token) on its own, with the same bits whatever else is in the call. That held on the
AVX512-BF16 CPU it was measured on, except for one row alone (two copies, attention.py). It does not
hold on every CPU: on a Xeon with AMX (torch 2.13, oneDNN 3.12 `brg_matmul:avx10_1_512_amx`) a bf16
product's blocking depends on the call's row count, so from 512 inputs on some rows' outputs move in
the last bit once a call has more than 32 rows, and move again at a few hundred and near 700 rows. A
packed encoder puts a whole batch's tokens in one call, so of a batch of 32 texts 16 (distilbert),
28 (bert-base) and 32 (bert-large) answers differed from the text alone.

So a model in half precision on CPU is probed once at load, on its own layers' shapes: does a row's
product change with the rows around it? Where it does, every Linear (and GPT-2's Conv1D) computes on
pieces of fixed row counts, the last one padded with zeros: each piece size one blocking, and a row's
bits depend on that row only (checked at every position of a piece, by the same probe). PIECE_ROWS
(128) is the size that must hold; a second probe tries PIECE_SIZES' others (64 and 256) per shape and
keeps those that give every row the bits a 128-row piece gives (on this Xeon 256 held for the 768- and
1,024-input shapes, 64 for all but bert-large's 4,096-input one, none below 64), so a large batch
computes mostly in 256-row pieces (about 20 % faster a row than 128) and a short text or a decoding
step in one of 64. Where even pieces vary, or the model holds matrices the pieces cannot reach (a Linear
subclass with a forward of its own, experts kept as bare tensors), the model's requests run one at a
time (the executor's "alone" rule). Float32 models are not touched: their promise is the same
answer, not the same bits.

Each piece runs on the layer's weight prepacked for oneDNN once (torch's `mkldnn._linear_pointwise`,
what torch.compile's CPU backend uses; plain `addmm` where a build lacks it; one packing serves every
piece size, measured the same bits and speed as one per size): that makes a 128-row piece about 1.4×
faster than `addmm`'s, at the price of a second copy of each layer's weight (counted in the model's
memory). BENCHMARKS.md "bf16 products that change with the rows beside them" and "Pieces of several
sizes".
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch

PIECE_ROWS = 128  # the piece every shape in pieces must hold at; the packing's row hint
# Piece sizes tried per shape, each kept where it gives a 128-row piece's bits. Not 32 or fewer (another
# kernel: other bits on AMX), not 512 (oneDNN ran 768-output products of 512–1,024 rows at half speed)
PIECE_SIZES = (64, 128, 256)
CALL_ROWS = 64  # a call's fixed cost, counted in rows computed (plan weighs fewer calls against less padding)
STEADY, IN_PIECES, VARYING = "steady", "pieces", "varying"  # make_steady's verdicts
_PROBE_ROWS = 64
_PROBE_OUTPUTS = 2**16  # outputs a size's probe compares at least
# Row counts probed: AMX's blocking was seen to change above 32, at a few hundred and near 700; up
# to past the CPU's batch token budget (4,096)
_PROBE_CALLS = (3, 17, 33, 64, 100, 200, 700, 1300, 2100, 4100)

Compute = Callable[[torch.Tensor], torch.Tensor]  # rows [n, in] → [n, out]
_probed: dict[tuple, bool] = {}  # (in, out, Linear, bias, dtype, pieces) → whether rows move
_sizes_kept: dict[tuple, tuple[int, ...]] = {}  # (in, out, Linear, bias, dtype) → PIECE_SIZES that give PIECE_ROWS' bits
_probe_lock = threading.Lock()
# layer → (its weight and bias and their versions, its compute, bytes of prepacked weight): beside
# the layer, not on it, because a prepacked weight is an opaque tensor that deepcopy and .to() refuse
_computes: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Compute, int]] = weakref.WeakKeyDictionary()


def shown(found: str) -> str:
    """How /models words a verdict: '' when steady."""
    return {IN_PIECES: "products in fixed-size pieces", VARYING: "one request at a time"}.get(found, "")


def plain(weight: torch.Tensor, bias: torch.Tensor | None) -> Compute:
    """rows @ weight.T + bias in one call (weight [out, in], as Linear keeps it)."""
    weight_t = weight.t()
    if bias is None:
        return lambda rows: torch.mm(rows, weight_t)
    return lambda rows: torch.addmm(bias, rows, weight_t)


def in_pieces(weight: torch.Tensor, bias: torch.Tensor | None, sizes: tuple[int, ...] = (PIECE_ROWS,)) -> Compute:
    """The same product on calls of exactly one of `sizes` rows each (plan() picks them; the last
    padded with zeros), on the weight prepacked for oneDNN where torch has it."""
    piece_product = _prepacked(weight, bias) or plain(weight, bias)

    def compute(rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        if count == 0:  # as a plain product: no rows in, none out
            return piece_product(rows.new_zeros(sizes[0], rows.shape[1]))[:0]
        outs, start = [], 0
        for size in plan(count, sizes):
            if start + size <= count:
                outs.append(piece_product(rows[start:start + size]))
            else:
                padded = rows.new_zeros(size, rows.shape[1])
                padded[: count - start] = rows[start:]
                outs.append(piece_product(padded)[: count - start])
            start += size
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    compute.packed_bytes = getattr(piece_product, "packed_bytes", 0)  # a second copy of the weight (extra_bytes)
    return compute


def plan(count: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Piece sizes for `count` rows, fewest rows computed plus CALL_ROWS per call (a short call is
    slower per row): 20 rows → (64,), 100 → (128,), 300 → (64, 256) where all of PIECE_SIZES hold.
    Past four of the largest, whole largest pieces first (the cheapest per row), the rest planned.
    Only the last piece runs past `count` (the caller pads it)."""
    largest = max(sizes)
    bulk = max(0, count // largest - 4)
    return (largest,) * bulk + _plan_rest(count - bulk * largest, sizes)


@functools.lru_cache(maxsize=4096)
def _plan_rest(count: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    best: list[tuple[int, tuple[int, ...]]] = [(0, ())]  # best[n]: (cost, sizes) for n rows
    for left in range(1, count + 1):
        best.append(min((best[max(0, left - size)][0] + size + CALL_ROWS, best[max(0, left - size)][1] + (size,))
                        for size in sizes))
    return best[count][1]


def _prepacked(weight: torch.Tensor, bias: torch.Tensor | None) -> Compute | None:
    """One piece through oneDNN's linear on the weight reordered for PIECE_ROWS rows, or None where
    this torch build or dtype has no such op (the caller then uses plain addmm)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PIECE_ROWS)

        def one(rows: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")

        one(weight.new_zeros(PIECE_ROWS, weight.shape[1]))  # fails here, not in a request, if it cannot run
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    one.packed_bytes = weight.numel() * weight.element_size()
    return one


def _probe_matrices(seeded: torch.Generator, in_features: int, out_features: int, dtype: torch.dtype,
                    linear: bool, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A random weight [out, in] (for Conv1D's layout a transposed view of [in, out], as the layer
    hands it over) and bias, as a layer of this shape would give them to a product."""
    shape = (out_features, in_features) if linear else (in_features, out_features)
    weight = torch.randn(*shape, generator=seeded).to(dtype)
    offset = torch.randn(out_features, generator=seeded).to(dtype) if bias else None
    return (weight if linear else weight.t()), offset


def rows_move(make: Callable[[torch.Tensor, torch.Tensor | None], Compute], in_features: int, out_features: int,
              dtype: torch.dtype, linear: bool = True, bias: bool = True) -> bool:
    """Whether the product `make(weight, bias)` computes gives some row other bits in a call of more
    rows than in a call of two: 64 rows, at the start and at the end of calls of _PROBE_CALLS rows,
    and in the largest call also at every offset of a piece. `linear`: the weight laid out as Linear
    keeps it ([out, in]); else as Conv1D's ([in, out])."""
    seeded = torch.Generator().manual_seed(0)  # its own: callers' random state is left alone
    weight, offset = _probe_matrices(seeded, in_features, out_features, dtype, linear, bias)
    rows = torch.randn(_PROBE_ROWS, in_features, generator=seeded).to(dtype)
    with torch.inference_mode():
        compute = make(weight, offset)
        alone = torch.cat([compute(rows[i:i + 2]) for i in range(0, _PROBE_ROWS, 2)])
        for count in _PROBE_CALLS:
            seen = min(count, _PROBE_ROWS)
            starts = {0, count - seen}
            if count == _PROBE_CALLS[-1]:  # every position in a piece of PIECE_ROWS
                starts |= set(range(0, PIECE_ROWS, seen))
            filler = torch.randn(count, in_features, generator=seeded).to(dtype)
            for start in sorted(starts):
                at = slice(start, start + seen)
                placed = filler.clone()
                placed[at] = rows[:seen]
                if not torch.equal(compute(placed)[at], alone[:seen]):
                    return True
    return False


def gives_piece_bits(size: int, in_features: int, out_features: int, dtype: torch.dtype,
                     linear: bool = True, bias: bool = True) -> bool:
    """Whether pieces of `size` rows give every row the bits pieces of PIECE_ROWS give it: calls of
    three pieces' worth of rows less a half, so every position of a piece and a padded last piece
    are seen, repeated on fresh rows until 2^16 outputs were compared (a 2-wide head's outputs are
    few, and another order of additions moves only some of them)."""
    seeded = torch.Generator().manual_seed(1)
    weight, offset = _probe_matrices(seeded, in_features, out_features, dtype, linear, bias)
    count = 3 * size - size // 2
    with torch.inference_mode():
        in_size, in_base = in_pieces(weight, offset, (size,)), in_pieces(weight, offset)
        for _ in range(-(-_PROBE_OUTPUTS // (count * out_features))):
            rows = torch.randn(count, in_features, generator=seeded).to(dtype)
            if not torch.equal(in_size(rows), in_base(rows)):
                return False
    return True


def _moves(shape: tuple[int, int, bool, bool, torch.dtype], pieces: bool) -> bool:
    in_features, out_features, linear, bias, dtype = shape
    return _once(_probed, (*shape, pieces), lambda: rows_move(
        in_pieces if pieces else plain, in_features, out_features, dtype, linear, bias))


def _kept_sizes(shape: tuple[int, int, bool, bool, torch.dtype]) -> tuple[int, ...]:
    """The piece sizes a shape computes in: PIECE_ROWS and those of PIECE_SIZES that give its bits."""
    in_features, out_features, linear, bias, dtype = shape
    return _once(_sizes_kept, shape, lambda: tuple(
        size for size in PIECE_SIZES
        if size == PIECE_ROWS or gives_piece_bits(size, in_features, out_features, dtype, linear, bias)))


def _once(cache: dict, key: tuple, probe: Callable[[], Any]) -> Any:
    """cache[key], probed the first time; one probe at a time, so two loads never probe a shape twice."""
    with _probe_lock:
        if key not in cache:
            cache[key] = probe()
        return cache[key]


def _layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, tuple[int, int, bool, bool, torch.dtype]]]:
    """(layer, (inputs, outputs, is a Linear, has a bias, dtype)) for each Linear and GPT-2 Conv1D of
    the model, those a class keeps in float32 too (their last bits feed the half-precision layers)."""
    from transformers.pytorch_utils import Conv1D

    found = []
    for module in model.modules():
        if type(module) in (torch.nn.Linear, Conv1D):
            linear = type(module) is torch.nn.Linear
            sizes = (module.in_features, module.out_features) if linear else tuple(module.weight.shape)
            found.append((module, (*sizes, linear, module.bias is not None, module.weight.dtype)))
    return found


def _all_products_covered(model: torch.nn.Module) -> bool:
    """Whether every matrix the model holds is a Linear's or Conv1D's (which pieces cover) or an
    embedding table's (looked up, not multiplied). Anything else (a Linear subclass with a forward
    of its own, experts kept as bare tensors) may multiply in ways the pieces do not reach."""
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        matrices = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
        if matrices and type(module) not in (torch.nn.Linear, Conv1D) and not isinstance(module, torch.nn.Embedding):
            return False
    return True


def make_steady(model: torch.nn.Module) -> str:
    """Probe a half-precision CPU model's layer shapes (each shape once per process) and make its
    products independent of the rows beside them where needed: STEADY (nothing to do), IN_PIECES
    (installed), or VARYING (its requests must run one at a time: even pieces move, or the model
    multiplies matrices the pieces do not cover). Recorded on the model."""
    layers = _layers(model)
    shapes = sorted({shape for _, shape in layers}, key=str)
    if not any(_moves(shape, pieces=False) for shape in shapes):
        found = STEADY
    elif not _all_products_covered(model) or any(_moves(shape, pieces=True) for shape in shapes):
        found = VARYING
    else:
        for module, shape in layers:
            _compute_in_pieces(module, _kept_sizes(shape))
        found = IN_PIECES
    model._automodel_products = found
    return found


def verdict(model: Any) -> str:
    """make_steady's verdict for the model; STEADY for a model never probed (float32, a GPU)."""
    return getattr(model, "_automodel_products", STEADY)


def extra_bytes(model: torch.nn.Module) -> int:
    """Bytes of the prepacked weight copies the model's layers compute with (0 when none)."""
    return sum(_computes[m][2] for m in model.modules() if m in _computes)


def _compute_in_pieces(module: torch.nn.Module, sizes: tuple[int, ...]) -> None:
    """Replace the layer's forward with in_pieces of `sizes` on its own weight, prepacked now (the
    load's thread) rather than in the first request. A copy of the layer (other weight tensors)
    builds its own."""
    _compute_of(module, sizes)

    def forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = _compute_of(self, sizes)(x.reshape(-1, x.shape[-1]))
        return out.view(*x.shape[:-1], out.shape[-1])

    module.forward = types.MethodType(forward, module)


def _compute_of(module: torch.nn.Module, sizes: tuple[int, ...]) -> Compute:
    """The layer's pieces, built again when its weight or bias is another tensor or was changed (or
    other sizes are asked for)."""
    weight, bias = module.weight, module.bias
    known = _computes.get(module)
    if known is None or known[0][2] != sizes or not all(held is now and version == _version(now)
                                                        for (held, version), now in zip(known[0], (weight, bias))):
        identity = ((weight, _version(weight)), (bias, _version(bias)), sizes)
        matrix = weight if isinstance(module, torch.nn.Linear) else weight.t()  # Conv1D keeps [in, out]
        compute = in_pieces(matrix.detach(), None if bias is None else bias.detach(), sizes)
        known = _computes[module] = (identity, compute, getattr(compute, "packed_bytes", 0))
    return known[1]


def _version(tensor: torch.Tensor | None) -> int:
    """How often the tensor was changed in place (0 for none, or an inference tensor, which cannot be)."""
    return 0 if tensor is None or tensor.is_inference() else tensor._version
