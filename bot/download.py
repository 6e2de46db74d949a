"""`automodel-bot download`: fetch every configured checkpoint into the Hugging Face cache (HF_HOME),
so a deployment can warm its volume before going live.

One line per distinct checkpoint: ready (with its path), a local directory (skipped), or why it
failed; then a summary line if anything failed, and exit code 3. Never a traceback.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bot.inference import fetch, hub
from bot.inference.fetch import OTHER_FRAMEWORKS
from bot.inference.hub import is_local
from bot.settings import Settings

EXIT_FAILED = 3  # the same code as a checkpoint that cannot be loaded (bot.cli.EXIT_UNAVAILABLE)


def shown_checkpoint(checkpoint: str, full: bool) -> str:
    """A checkpoint as a user may see it: a local checkpoint's full path only when `full` (owners);
    others see its folder name (the layout of the host's disk is nobody else's business)."""
    if full or not is_local(checkpoint):
        return checkpoint
    return re.split(r"[/\\]", checkpoint.rstrip("/\\"))[-1] or "(a local folder)"


def download_all(settings: Settings) -> int:
    # The hub unreachable (or HF_HUB_OFFLINE=1): report what the cache holds, at once, instead of
    # retrying every file for a minute.
    cache_only = hub.offline() or not hub.hub_reachable()
    task_of: dict[str, str] = {}
    for task, checkpoint in settings.checkpoints.items():
        task_of.setdefault(checkpoint, task)  # each distinct checkpoint once
    failures = 0
    for checkpoint, task in task_of.items():
        if Path(checkpoint).expanduser().is_dir():
            print(f"{checkpoint}: local directory, nothing to download", flush=True)
            continue
        if not cache_only and not hub.looks_like_path(checkpoint):
            print(f"{checkpoint}: downloading…", flush=True)
        try:
            if hub.looks_like_path(checkpoint):
                raise FileNotFoundError(checkpoint)
            path = _fetch(checkpoint, cache_only)
        except Exception as err:  # one line per checkpoint, whatever went wrong
            failures += 1
            print(f"automodel-bot: {hub.explain(task, checkpoint, err)}", file=sys.stderr, flush=True)
            continue
        print(f"{checkpoint}: ready in {path}" + (" (from the cache)" if cache_only else ""), flush=True)
    if failures:
        print(f"automodel-bot: {failures} of {len(task_of)} checkpoint(s) not ready (see above).", file=sys.stderr)
    return EXIT_FAILED if failures else 0


def _fetch(checkpoint: str, cache_only: bool) -> str:
    from huggingface_hub import snapshot_download

    if cache_only:  # what is cached already, or LocalEntryNotFoundError
        return snapshot_download(checkpoint, ignore_patterns=OTHER_FRAMEWORKS, local_files_only=True)
    return fetch.fetch(
        checkpoint, fetch.each_tenth(lambda done, total: print(hub.download_text(checkpoint, done, total), flush=True))
    )
