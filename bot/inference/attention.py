"""Encoders run packed, with attention computed row by row: the rows of a batch go through the
layers as one row of their real tokens, so no layer of the stack computes a padded token and rows
of any lengths share a batch at no extra cost; in half precision each row is also bit-identical
to alone.

Why it is exact: in an encoder only attention mixes tokens. The linear layers, layer norms and
everything else compute each token on its own and were measured bit-identical at any batch size and
width in bf16 (on an AVX512-BF16 CPU; where a CPU's products change with the call's rows,
products.py computes them in fixed pieces so that this holds again). So hooks around the encoder's
layer stack lay the rows' real tokens one after another in a single row, attention runs on each
row's tokens alone, and the output goes back into the padded batch for the model's head. In bf16
every row is then exactly what the same model gives that text alone and unpadded: bit for bit,
measured on the five real-size encoders of the bench at widths up to 256 and in mixed batches
(BENCHMARKS.md "Half precision without the same-width rule", "Packed encoders"). With plain SDPA
over a padded batch, padding a row wider moved its scores (up to 0.0005 on real-size distilbert:
SDPA's kernels split the keys into blocks by length), so half-precision lanes could only batch rows
of one padded width (the executor's same-width rule). In float32 a packed row differs from alone in
the last bits, as a padded one does, and packing is simply faster (1.13–1.36× at 8 and 32 clients).

Only for the encoder families measured (MEASURED: BERT and DistilBERT, the defaults' families) on
CPU; other encoders keep SDPA and padding. (A sliding-window encoder such as ModernBERT would break
it: its mask is not a padding mask.) A GPU is not measured: kernels picked by matrix size may round
differently there.

Decoders (DECODERS: GPT-2, /generate's family) in half precision run attention row by row too, not
packed: a batch padded on the left, each row's queries and keys its own real tokens (the prompt
causal, then one query per step on the row's part of the cache). Two more things made a row
depend on its batch in bf16, both fixed here: SDPA over the padded keys, and a matrix product of
a single row, which torch runs on another kernel (a matrix-vector product) that rounds differently
from two rows or more (GPT-2's MLP output, 3072 inputs: the last bit of some outputs). A single row
(a decoding step of one request, a one-token prompt) therefore runs its matrix products, the LM
head's too, on two copies of the row (3-4 % slower alone). Every row's tokens and scores are then
bit-identical to the model on that prompt alone and unpadded (run as two copies), and bf16 prompts
of any widths batch (BENCHMARKS.md "bf16 /generate"). In float32 decoders keep SDPA: their batches
already take any widths, and nothing would be faster.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
from typing import Any

import torch

ROWWISE = "automodel_rowwise_sdpa"  # encoders, packed
ROWWISE_CAUSAL = "automodel_rowwise_causal_sdpa"  # decoders, padded on the left
# model_type → the attribute of the base model holding its layer stack: plain right-padding masks, full
# attention (the families measured)
MEASURED = {"bert": "encoder", "distilbert": "transformer"}
PACKED = "automodel_packed"  # the keyword that carries a Packed from the encoder to its attention calls
DECODERS = frozenset({"gpt2"})  # causal LMs measured: left padding, plain causal masks, a cache per batch


def rowwise_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA on each row's tokens alone. Packed (the encoder's hooks below): the rows'
    tokens lie one after another in one row, `Packed.lengths` long each. Unpacked (a batch that did
    not pass the hooks): each padded row on its real keys, the padding mask says how many."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs["is_causal"] = False  # encoders; without a mask SDPA would take the module's word for it
    packed = kwargs.pop(PACKED, None)
    if packed is None and attention_mask is None:  # rows of one width, no padding
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    batch, heads, width, _ = query.shape
    out = query.new_zeros(batch, width, heads, value.shape[-1])  # padded positions stay zero: nothing reads them
    if packed is not None:
        for start, length in zip(itertools.accumulate(packed.lengths, initial=0), packed.lengths):
            tokens = slice(start, start + length)
            out[0, tokens] = _row_alone(module, query, key, value, 0, tokens, tokens, kwargs)
    else:
        for row, length in enumerate(_visible(attention_mask).sum(-1).tolist()):
            out[row, :length] = _row_alone(module, query, key, value, row, slice(length), slice(length), kwargs)
    return out, None


def rowwise_causal_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA on each row's tokens alone, for a decoder batch padded on the left: a row's
    real keys are the last `length` of the cache. Reading the prompt (as many queries as keys), its
    queries are its last `length` too, causal as alone; at a decoding step, its one query."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.setdefault("is_causal", getattr(module, "is_causal", True))  # kept only for a query of several tokens
    if attention_mask is None:  # rows of one width, no padding
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    batch, heads, width, _ = query.shape
    keys = key.shape[2]
    visible = _visible(attention_mask[:, :, -1:])  # what the last query sees: all of its row's real keys
    lengths = visible.sum(-1)
    left_padded = bool((visible.flip(-1).cumprod(-1).sum(-1) == lengths).all())
    if not left_padded or 1 < width < keys:  # not measured (a prompt read in pieces): the padded batch
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = query.new_zeros(batch, width, heads, value.shape[-1])  # padded positions stay zero: nothing reads them
    for row, length in enumerate(lengths.tolist()):
        if not length:  # a row of padding only: nothing of it is read
            continue
        queries = slice(width - min(width, length), None)
        out[row, queries] = _row_alone(module, query, key, value, row, queries, slice(keys - length, None), kwargs)
    return out, None


def _row_alone(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, row: int,
               queries: slice, keys: slice, kwargs: dict[str, Any]) -> torch.Tensor:
    """transformers' SDPA on one row's own queries and keys, unmasked, as that row alone would get
    it: [queries, heads, dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = slice(row, row + 1)
    return sdpa_attention_forward(module, query[rows, :, queries], key[rows, :, keys], value[rows, :, keys], None,
                                  **kwargs)[0][0]


def _two_rows_at_least(module: torch.nn.Module) -> None:
    """Run the module's matrix product on two copies of a single row, keeping one: in half precision
    a single row takes a matrix-vector kernel that rounds differently from two rows or more."""
    if getattr(module, "_automodel_two_rows", False):  # once
        return

    def forward(self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        own = type(self).forward  # through self: a deep copy of the module computes with its own weights
        if x.shape[:-1].numel() != 1:
            return own(self, x, *args, **kwargs)
        return own(self, torch.stack([x, x]), *args, **kwargs)[0]

    module.forward = types.MethodType(forward, module)
    module._automodel_two_rows = True


def _visible(mask: torch.Tensor) -> torch.Tensor:
    """[batch, key] True where the first query of a row sees a real token, from the 4-D mask
    attention gets ([batch, 1, query, key]: True, or 0.0 when additive, = attend). For an encoder,
    padded on the right, those are the row's real tokens; a decoder passes its last query's row."""
    visible = mask[:, 0, 0, :]
    return visible if visible.dtype == torch.bool else visible == 0


@dataclasses.dataclass(frozen=True)
class Packed:
    """How a padded batch was packed: where its real tokens were ([rows, width]), and how many per row."""

    visible: torch.Tensor
    lengths: tuple[int, ...]


def _pack(config: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """The encoder's input [rows, width, hidden] with its padding mask → [1, real tokens, hidden], so
    no layer of the stack computes a padded token; the lengths travel to rowwise_sdpa with the
    layers' kwargs. Only while the model runs rowwise_sdpa: any other attention would let the packed
    rows attend to each other."""
    names = ("hidden_states", "attention_mask")
    given = dict(zip(names, args)) | {k: kwargs[k] for k in names if k in kwargs}
    hidden, mask = given["hidden_states"], given.get("attention_mask")
    if mask is None or config._attn_implementation != ROWWISE:  # rows of one width, or not row by row
        return None
    kwargs = {k: v for k, v in kwargs.items() if k not in names}
    visible = _visible(mask)
    kwargs[PACKED] = Packed(visible, tuple(visible.sum(-1).tolist()))
    return (hidden[visible].unsqueeze(0), None, *args[2:]), kwargs


def _unpack(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    """The encoder's packed output back to [rows, width, hidden], padding at zero (nothing reads it)."""
    packed = kwargs.get(PACKED)
    if packed is None:
        return None
    hidden = output.last_hidden_state[0]
    rows = hidden.new_zeros(*packed.visible.shape, hidden.shape[-1])
    rows[packed.visible] = hidden
    output.last_hidden_state = rows
    return output


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ROWWISE_CAUSAL in AttentionInterface._global_mapping:  # once per process (registered last)
        return
    for name, function in ((ROWWISE, rowwise_sdpa), (ROWWISE_CAUSAL, rowwise_causal_sdpa)):
        AttentionMaskInterface.register(name, sdpa_mask)  # the boolean padding (and causal) mask SDPA gets
        AttentionInterface.register(name, function)


def use_rowwise(model: Any) -> bool:
    """Switch an encoder of a MEASURED family to packed row-by-row attention, or a decoder of DECODERS
    in half precision to row-by-row causal attention; True when it now runs either. Seq2seq models,
    other families and classes that do not take a registered attention function keep theirs."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or not getattr(model, "_supports_attention_backend", False) \
            or getattr(config, "_attn_implementation", None) != "sdpa":
        return rowwise(model)
    if getattr(model, "can_generate", lambda: False)() or getattr(config, "is_decoder", False):  # GPT-2 is not marked is_decoder
        return _use_causal(model)
    stack = getattr(model.base_model, MEASURED.get(getattr(config, "model_type", None), ""), None)
    if stack is None:  # a family or layout not measured
        return False
    if not _switch(model, ROWWISE):
        return False
    if not getattr(stack, "_automodel_packing", False):  # hooks once, even if switched back and forth
        stack.register_forward_pre_hook(lambda module, args, kwargs: _pack(config, args, kwargs), with_kwargs=True)
        stack.register_forward_hook(_unpack, with_kwargs=True)
        stack._automodel_packing = True
    return rowwise(model)


def _use_causal(model: Any) -> bool:
    if not half_precision(model) or getattr(model.config, "model_type", None) not in DECODERS \
            or getattr(model.config, "add_cross_attention", False) or not _switch(model, ROWWISE_CAUSAL):
        return False
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            _two_rows_at_least(module)
    return rowwise(model)


def _switch(model: Any, implementation: str) -> bool:
    _register()
    try:
        model.set_attn_implementation(implementation)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def half_precision(model: Any) -> bool:
    """Whether the model's weights are float16 or bfloat16, where padding and one-row products round differently."""
    return next(model.parameters()).dtype in (torch.float16, torch.bfloat16)


def rowwise(model: Any) -> bool:
    """Whether the model runs row-by-row attention (use_rowwise), packed or causal: each row computed as
    alone and unpadded."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in (ROWWISE, ROWWISE_CAUSAL)


def packs(model: Any) -> bool:
    """Whether the model runs packed (an encoder, use_rowwise): no layer of its stack computes padding."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ROWWISE


def rows_alone(model: Any, side: str) -> bool:
    """Whether rows padded on `side` come out as each row alone and unpadded: a packed encoder's, or a
    row-by-row decoder's padded on the left (on the right, its attention falls back to the padded batch)."""
    return packs(model) or (rowwise(model) and side == "left")
