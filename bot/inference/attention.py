"""Attention computed row by row, each row at its own length: in half precision this makes a row's
answer independent of how wide its batch is padded, so rows of any lengths can share a batch.

Why: in bf16, padding a row wider moved its scores (up to 0.0005 on real-size distilbert), because
SDPA's kernels split the keys into blocks by length and round differently. The linear layers,
layer norms and everything else in an encoder compute each token on its own and were measured
bit-identical at any batch size and width. So running only the attention per row, on the row's
real tokens and without a mask, gives every row exactly what the same model gives that text alone
and unpadded: bit for bit, measured on the five real-size encoders of the bench at widths up to 256
and in mixed batches (BENCHMARKS.md "Half precision without the same-width rule"; on CPU, a GPU is
not measured). Without this, half precision lanes may only batch rows of one padded width (the
executor's same-width rule).

Only for the encoder families measured (MEASURED: BERT and DistilBERT, the defaults' families) on
CPU; other models keep SDPA and the same-width rule. (A sliding-window encoder such as ModernBERT
would break it: its mask is not a padding mask.)
"""

from __future__ import annotations

from typing import Any

import torch

ROWWISE = "automodel_rowwise_sdpa"
MEASURED = frozenset({"bert", "distilbert"})  # model_type: plain right-padding masks, full attention


def rowwise_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA on each row's real keys alone (the padding mask says how many: padding is
    on the right), the padded positions left at zero (nothing reads them)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs["is_causal"] = False  # encoders; without a mask SDPA would take the module's word for it
    if attention_mask is None:  # no padding in this batch
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    visible = attention_mask[:, 0, 0, :]  # [batch, 1, query, key]: True (or 0.0 when additive) = attend
    lengths = (visible if visible.dtype == torch.bool else visible == 0).sum(-1).tolist()
    batch, heads, width, _ = query.shape
    out = query.new_zeros(batch, width, heads, value.shape[-1])
    for row, length in enumerate(lengths):
        rows = slice(row, row + 1)
        out[row, :length] = sdpa_attention_forward(module, query[rows, :, :length], key[rows, :, :length],
                                                   value[rows, :, :length], None, **kwargs)[0][0]
    return out, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ROWWISE in AttentionInterface._global_mapping:  # once per process
        return
    AttentionInterface.register(ROWWISE, rowwise_sdpa)
    AttentionMaskInterface.register(ROWWISE, sdpa_mask)  # the boolean padding mask SDPA gets


def use_rowwise(model: Any) -> bool:
    """Switch an encoder of a MEASURED family to row-by-row attention; True when it now runs it.
    Decoders (causal masks, caches), other families and classes that do not take a registered
    attention function keep theirs."""
    config = model.config
    generates = getattr(model, "can_generate", lambda: False)()  # GPT-2 is not marked is_decoder
    if generates or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False) \
            or getattr(config, "model_type", None) not in MEASURED \
            or not getattr(model, "_supports_attention_backend", False) \
            or getattr(config, "_attn_implementation", None) != "sdpa":
        return rowwise(model)
    _register()
    try:
        model.set_attn_implementation(ROWWISE)
    except (ValueError, TypeError, AttributeError):
        return False
    return rowwise(model)


def rowwise(model: Any) -> bool:
    """Whether the model runs row-by-row attention (use_rowwise)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ROWWISE
