"""Fault injection around the real backend: for what a test cannot cause otherwise (an OOM, a
stalled device). Everything else passes through to real tiny models."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from bot.inference.local import LocalBackend
from bot.inference.tasks.base import padded_width


class InjectingBackend:
    """Delegates to a real LocalBackend; `gate` holds batches until set, `fault` may raise instead."""

    def __init__(self, real: LocalBackend, fault: Callable[[str, list], BaseException | None] | None = None) -> None:
        self.real = real
        self.fault = fault
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[tuple[str, int]] = []  # (task, size) of every batch that reached run()
        self.widths: list[set[int]] = []  # the padded widths its rows would have alone, per batch
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def run(self, task: str, batch: list, ctx) -> list:
        self.gate.wait(timeout=30)
        with self._lock:
            self.batches.append((task, len(batch)))
            self.widths.append({padded_width(p.input_width) for p in batch})
        error = self.fault(task, batch) if self.fault else None
        if error is not None:
            raise error
        return self.real.run(task, batch, ctx)
