"""Where models run: the device and dtype, chosen once from settings (cuda → mps → cpu for auto)."""

from __future__ import annotations

import torch

from bot.inference.errors import ModelUnavailable


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"DEVICE={setting} but no CUDA GPU is visible. Set DEVICE=auto or cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ModelUnavailable(f"DEVICE={setting} but only {torch.cuda.device_count()} GPU(s) are visible.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailable(f"DEVICE={setting} but MPS is not available. Set DEVICE=auto or cpu.")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32  # half precision on CPU is slower, not faster


def device_memory(device: torch.device) -> dict[str, int] | None:
    """Bytes allocated and total on a GPU; None on CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device),
            "free": free, "total": total}
