"""`automodel-bot download`: fetch every configured checkpoint into the Hugging Face cache, so a
deployment can warm its volume before going live."""

from __future__ import annotations

import sys
from pathlib import Path

from bot.settings import Settings

# Weights for other frameworks: large, and never read by this bot.
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "onnx/*", "coreml/*", "*.mlmodel"]


def download_all(settings: Settings) -> int:
    from huggingface_hub import snapshot_download

    failures = 0
    for checkpoint in dict.fromkeys(settings.checkpoints.values()):  # each distinct checkpoint once
        if Path(checkpoint).expanduser().is_dir():
            print(f"{checkpoint}: local directory, nothing to download")
            continue
        print(f"{checkpoint}: downloading")
        try:
            path = snapshot_download(checkpoint, ignore_patterns=OTHER_FRAMEWORKS)
        except Exception as err:
            failures += 1
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"automodel-bot: could not download {checkpoint}: {reason[:300]}", file=sys.stderr)
            continue
        print(f"{checkpoint}: ready in {path}")
    if failures:
        print(f"automodel-bot: {failures} checkpoint(s) failed; check the network or HF_HUB_OFFLINE, "
              "or point MODEL_<TASK> at a local directory.", file=sys.stderr)
    return 3 if failures else 0
