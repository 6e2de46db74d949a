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


# Tasks DTYPE=auto runs in bf16 on a CPU with native bf16 (measured on trained checkpoints:
# BENCHMARKS.md, "Precision"): sentence-level answers, a pooled label or vector, agreed with fp32
# (80/80 labels, cosine ≥ 0.9999) and stayed the same whatever the batch. Token-level answers did
# not often enough: entity sets changed in 2–3 % of texts, QA spans in up to 2 %, top-5 tokens'
# order at 35 % of positions; and bf16 changed 12 of 30 greedy generations.
CPU_BF16_TASKS = ("sentiment", "embed")
# CPU features with bf16 dot products in hardware; without them torch emulates bf16, slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX-512, Arm (cpuinfo "Features")


def native_bf16(cpuinfo: str | None = None) -> str | None:
    """The CPU feature that makes bf16 fast here ("avx512_bf16", …), or None. Reads /proc/cpuinfo
    (Linux); other systems report None, so they keep fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_dtypes(
    setting: str, device: torch.device, tasks: tuple[str, ...], cpu_bf16: str | None = None, quantized: bool = False
) -> tuple[dict[str, torch.dtype], str]:
    """The dtype of each task's model, and one line saying what was chosen and why (start-up log,
    /models). `cpu_bf16`: native_bf16()'s answer for this machine; `quantized`: QUANTIZE=int8 applies."""
    if setting != "auto":
        return dict.fromkeys(tasks, getattr(torch, setting)), f"DTYPE={setting}: {setting} for every task, as set"
    if quantized:  # int8 Linear layers take float32 around them
        return dict.fromkeys(tasks, torch.float32), "DTYPE=auto with QUANTIZE=int8: float32 around the int8 Linear layers"
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dict.fromkeys(tasks, dtype), f"DTYPE=auto: {dtype_name(dtype)} on this GPU"
    if device.type == "mps":
        return dict.fromkeys(tasks, torch.float16), "DTYPE=auto: float16 on Apple MPS"
    if cpu_bf16 is None:
        return dict.fromkeys(tasks, torch.float32), (
            "DTYPE=auto: float32, this CPU has no native bf16 (bf16 would be emulated, slower than float32)"
        )
    dtypes = {task: torch.bfloat16 if task in CPU_BF16_TASKS else torch.float32 for task in tasks}
    fast = " ".join(f"/{t}" for t in tasks if dtypes[t] == torch.bfloat16)
    exact = " ".join(f"/{t}" for t in tasks if dtypes[t] == torch.float32)
    reason = f"DTYPE=auto: bfloat16 for {fast} (this CPU has {cpu_bf16}, about twice float32's speed)"
    if exact:
        reason += f"; float32 for {exact} (bf16 changed their answers too often)"
    return dtypes, reason


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16, as settings and /models spell it."""
    return str(dtype).removeprefix("torch.")


def device_memory(device: torch.device) -> dict[str, int] | None:
    """Bytes allocated and total on a GPU; None on CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device),
            "free": free, "total": total}
