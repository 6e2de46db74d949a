"""Where a checkpoint comes from, and why it cannot be loaded, in one line (#13).

A checkpoint is a local folder or a Hugging Face hub id. Before a hub id is loaded, one quick probe
(a TCP connect to the hub, remembered for a minute) tells whether the hub can be reached at all.
When it cannot, the load reads the cache only (`local_files_only`): an offline machine then fails
in milliseconds instead of about 50 s of retries per file, and `explain` says what to do: the
variable, what is wrong, and the remedy.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROBE_TIMEOUT = 2.0  # seconds for the TCP connect to the hub
PROBE_MEMORY = 60.0  # seconds a probe's answer is reused
# The head each task needs, by the end of the class names in a checkpoint's config.architectures.
# A checkpoint without one would get a random, untrained head: refused. /embed takes any model.
HEADS = {
    "generate": ("ForCausalLM", "LMHeadModel"),
    "mask": ("ForMaskedLM", "ForPreTraining"),
    "translate": ("ForConditionalGeneration", "MTModel"),
    "ask": ("ForQuestionAnswering",),
    "ner": ("ForTokenClassification",),
    "sentiment": ("ForSequenceClassification",),
}
KINDS = {
    "generate": "text generation (a causal language model)",
    "mask": "fill-mask (a masked language model)",
    "translate": "translation (a sequence-to-sequence model)",
    "ask": "extractive question answering",
    "ner": "token classification (named entities)",
    "sentiment": "text classification",
}

_probe_lock = threading.Lock()
_probe: tuple[float, bool] = (-PROBE_MEMORY, True)


def looks_like_path(checkpoint: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a directory."""
    return checkpoint.startswith(("/", ".", "~")) or checkpoint.count("/") > 1 or "\\" in checkpoint


def is_local(checkpoint: str) -> bool:
    return looks_like_path(checkpoint) or Path(checkpoint).expanduser().is_dir()  # "models/sst2" may be a folder


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_host() -> str:
    from huggingface_hub import constants

    return urlsplit(constants.ENDPOINT).netloc


def hub_reachable() -> bool:
    """Can a TCP connection to the hub be opened? Assumed yes behind a proxy (the probe would not
    go through it). Remembered for PROBE_MEMORY seconds."""
    global _probe
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    with _probe_lock:
        at, reachable = _probe
        if time.monotonic() - at < PROBE_MEMORY:
            return reachable
        from huggingface_hub import constants

        url = urlsplit(constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT).close()
            reachable = True
        except OSError:
            reachable = False
        _probe = (time.monotonic(), reachable)
        return reachable


def forget_probe() -> None:
    global _probe
    with _probe_lock:
        _probe = (-PROBE_MEMORY, True)


def load_options(checkpoint: str) -> dict[str, Any]:
    """Extra from_pretrained options: the cache only when the hub cannot be reached."""
    if is_local(checkpoint) or offline() or hub_reachable():
        return {}
    return {"local_files_only": True}


def check_head(task: str, checkpoint: str, config: Any) -> str | None:
    """Why `checkpoint` is the wrong kind for `task` (None when it fits, or when it cannot tell)."""
    heads = HEADS.get(task)
    architectures = getattr(config, "architectures", None) or []
    if not heads or not architectures or any(a.endswith(heads) for a in architectures):
        return None
    return (
        f"{setting(task)}={checkpoint!r} is a {architectures[0]} checkpoint, which has no trained head for "
        f"{KINDS[task]}. Use a checkpoint fine-tuned for that (the default is in the README)."
    )


def download_text(checkpoint: str, done: int, total: int) -> str:
    """ "⏬ Downloading gpt2: 42 % of 548 MB" (for the reply, the log and `download`)."""
    if not total:
        return f"⏬ Downloading {checkpoint}…"
    size = f"{total / 1e9:.1f} GB" if total >= 1e9 else f"{max(1, round(total / 1e6))} MB"
    return f"⏬ Downloading {checkpoint}: {min(100, 100 * done // total)} % of {size}"


def setting(task: str) -> str:
    return f"MODEL_{task.upper()}"


def explain(task: str, checkpoint: str, err: BaseException) -> str:
    """One line: which variable, what is wrong, what to do."""
    name = setting(task)
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")[:300]
    if is_local(checkpoint):
        folder = Path(checkpoint).expanduser()
        if not folder.is_dir():
            where = f"{folder.resolve()}" + ("" if folder.is_absolute() else f"; a relative path starts from {Path.cwd()}")
            return f"{name}={checkpoint!r}: directory not found ({where}). Set it to a folder that holds a checkpoint."
        return f"{name}={checkpoint!r} could not be loaded from that folder: {reason}."
    if offline():
        return (
            f"{name}={checkpoint!r} is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it. "
            f"Run `automodel-bot download` where the hub is reachable (same HF_HOME), or set {name} to a local folder."
        )
    if not hub_reachable():
        return (
            f"{name}={checkpoint!r} is not in the Hugging Face cache, and {hub_host()} cannot be reached. "
            f"Run `automodel-bot download` where it can be, set {name} to a local folder, "
            "or set HF_HUB_OFFLINE=1 if this machine is offline on purpose."
        )
    if type(err).__name__ in ("RepositoryNotFoundError", "GatedRepoError") or "not a valid model identifier" in reason:
        return (
            f"{name}={checkpoint!r}: no such model on the Hugging Face hub. Check the spelling (org/name); "
            "a private or gated model also needs HF_TOKEN."
        )
    return f"{name}={checkpoint!r} could not be loaded: {reason}."
