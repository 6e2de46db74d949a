"""`automodel-bot download`: fetch every configured checkpoint into the Hugging Face cache (HF_HOME),
so a deployment can warm its volume before going live.

One line per distinct checkpoint: ready (with its path), a local directory (skipped), or why it
failed; then a summary line if anything failed, and exit code 3. Never a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bot.settings import Settings

EXIT_FAILED = 3  # the same code as a checkpoint that cannot be loaded (bot.cli.EXIT_UNAVAILABLE)

# Weights for other frameworks: large, and never read by this bot.
OTHER_FRAMEWORKS = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "*.tflite",
    "*.mlmodel",
    "onnx/*",
    "coreml/*",
    "openvino/*",
]


def looks_like_path(checkpoint: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, deeper) is a directory."""
    return checkpoint.startswith(("/", ".", "~")) or checkpoint.count("/") > 1 or "\\" in checkpoint


def shown_checkpoint(checkpoint: str, full: bool) -> str:
    """A checkpoint as a user may see it: a local checkpoint's full path only when `full` (owners);
    others see its folder name (the layout of the host's disk is nobody else's business)."""
    local = looks_like_path(checkpoint) or Path(checkpoint).is_dir()  # "models/sst2" may be a folder too
    if full or not local:
        return checkpoint
    return re.split(r"[/\\]", checkpoint.rstrip("/\\"))[-1] or "(a local folder)"


def ignore_patterns(files: list[str]) -> list[str]:
    """What not to fetch: other frameworks' weights, and PyTorch .bin weights when the repo also has
    safetensors (transformers loads those; many older repos carry both, doubling the download)."""
    patterns = list(OTHER_FRAMEWORKS)
    if any(name.endswith(".safetensors") for name in files):
        patterns.append("*.bin")
    return patterns


def download_all(settings: Settings) -> int:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    failures = 0
    for checkpoint in dict.fromkeys(settings.checkpoints.values()):  # each distinct checkpoint once
        if Path(checkpoint).expanduser().is_dir():
            print(f"{checkpoint}: local directory, nothing to download", flush=True)
            continue
        if looks_like_path(checkpoint):
            failures += 1
            _report(checkpoint, "looks like a local path, but there is no such directory")
            continue
        if not offline:
            print(f"{checkpoint}: downloading…", flush=True)
        try:
            path = _fetch(checkpoint, offline)
        except Exception as err:  # one line per checkpoint, whatever went wrong
            failures += 1
            if offline and isinstance(err, LocalEntryNotFoundError):
                reason = (
                    f"not in the cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading"
                )
            else:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            _report(checkpoint, reason)
            continue
        print(f"{checkpoint}: ready in {path}" + (" (cached; offline)" if offline else ""), flush=True)
    if failures:
        hint = (
            "unset HF_HUB_OFFLINE where the hub is reachable" if offline else "check the network and the ids"
        )
        print(
            f"automodel-bot: {failures} checkpoint(s) not downloaded; {hint}, or point MODEL_<TASK> at a "
            "local directory.",
            file=sys.stderr,
        )
    return EXIT_FAILED if failures else 0


def _fetch(checkpoint: str, offline: bool) -> str:
    from huggingface_hub import HfApi, snapshot_download

    if offline:  # what is cached already, or LocalEntryNotFoundError
        return snapshot_download(checkpoint, ignore_patterns=OTHER_FRAMEWORKS)
    files = HfApi().list_repo_files(checkpoint)
    return snapshot_download(checkpoint, ignore_patterns=ignore_patterns(files))


def _report(checkpoint: str, reason: str) -> None:
    print(f"automodel-bot: {checkpoint}: {reason}", file=sys.stderr, flush=True)
