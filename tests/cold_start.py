"""Test-only: a fresh process with nothing loaded (PRELOAD off) receives the first request of all
seven tasks at the same moment, then asks each again alone. Prints one JSON line for
tests/test_loading.py: per task, the first outcome and how it differs from the answer alone; the
tensors left on the meta device; whether PreTrainedModel.tie_weights is still the real one.

    python tests/cold_start.py   # with MODEL_<TASK> pointing at checkpoints, HF_HUB_OFFLINE=1
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import PreTrainedModel  # noqa: E402

from bot.inference import loading  # noqa: E402
from bot.inference.executor import Executor  # noqa: E402
from bot.inference.local import LocalBackend  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.answers import difference, first_requests  # noqa: E402


async def main() -> dict:
    settings = load_settings()
    backend = LocalBackend(settings)
    executor = Executor(settings, backend)
    await executor.start()
    requests = first_requests()
    try:
        first = await asyncio.gather(
            *(executor.submit(task, request, user_id=i) for i, (task, request) in enumerate(requests.items())),
            return_exceptions=True,
        )
        report = {}
        for (task, request), outcome in zip(requests.items(), first):
            if isinstance(outcome, BaseException):
                report[task] = {"error": f"{type(outcome).__name__}: {getattr(outcome, 'detail', '') or outcome}"}
                continue
            alone = await executor.submit(task, request)
            report[task] = {"error": None, "difference": difference(alone, outcome)}
    finally:
        await executor.shutdown()
    on_meta = [f"{loaded.checkpoint}: {name}" for loaded in backend._models.values() for name in loading.meta_tensors(loaded.model)]
    return {
        "tasks": report,
        "loaded": len(backend._models),
        "on_meta": on_meta,
        "tie_weights_intact": PreTrainedModel.tie_weights is loading._TIE_WEIGHTS,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
