"""Every `from_pretrained` of the bot, one at a time, never with remote code.

transformers 5.x's `from_pretrained` is not thread-safe (huggingface/transformers#41782): while it
loads a model it swaps two process-wide globals, `PreTrainedModel.tie_weights` (for a no-op) and
torch's default dtype (for the model's dtype). Two loads that overlap leave tied weights (GPT-2's
`lm_head`, BERT's masked-LM decoder, Marian's) on the meta device, and can restore the no-op as the
"original", which breaks every later load in the process. So all loads — tokenizers and configs
too — go through `load_pretrained` here: one process-wide lock, the globals checked and put back
around each load (a load that failed, or one made elsewhere without the lock, cannot poison the
next), and a model with anything left on the meta device refused instead of served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_TIE_WEIGHTS = PreTrainedModel.tie_weights  # the real one, captured before any load


class NotMaterialized(RuntimeError):
    """A loaded model still has tensors on the meta device (no data): it cannot run."""


def load_pretrained(loader: Callable[..., Any], checkpoint: str, **options: Any) -> Any:
    """`loader(checkpoint, trust_remote_code=False, **options)` while no other load runs.

    trust_remote_code is passed explicitly: a checkpoint id must never run code it ships, and
    transformers 5.x asks on stdin when the argument is missing.
    """
    with _LOCK:
        default_dtype = torch.get_default_dtype()
        _restore_tie_weights()
        try:
            loaded = loader(checkpoint, trust_remote_code=False, **options)
        finally:
            _restore_tie_weights()
            torch.set_default_dtype(default_dtype)
    if isinstance(loaded, torch.nn.Module):
        check_materialized(loaded, checkpoint)
    return loaded


def check_materialized(model: torch.nn.Module, checkpoint: str) -> None:
    on_meta = meta_tensors(model)
    if on_meta:
        raise NotMaterialized(
            f"{checkpoint}: {len(on_meta)} tensors were left without data on the meta device ({', '.join(on_meta[:3])})"
        )


def meta_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers that have no data (tied or shared ones under each name)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in named if tensor.device.type == "meta"]


def _restore_tie_weights() -> None:
    if PreTrainedModel.tie_weights is not _TIE_WEIGHTS:
        log.warning("PreTrainedModel.tie_weights was left patched by a load outside bot.inference.loading; restoring it")
        PreTrainedModel.tie_weights = _TIE_WEIGHTS
