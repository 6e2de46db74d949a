"""Torch work runs on threads that end with it.

torch's CPU ops run in OpenMP parallel regions, and libgomp gives every thread that starts one a
pool of its own, kept until that thread ends. Once the pools hold more threads than the machine
has CPUs, libgomp stops spinning between regions, and every op pays a sleep and a wake-up: about
70 µs here, against 3-10 µs for a small op (a layer norm, a one-query attention). A model's
forward is hundreds of small ops, so a lane thread, a warm-up thread and a loading thread each
keeping a pool made /generate in bf16 a third slower (BENCHMARKS.md "Torch work on more than one
thread"). A thread per batch costs well under a millisecond; its pool goes with it, and only
batches that really run at the same time pay for sharing the cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_own_thread(work: Callable[..., T], *args: Any) -> T:
    """Run work(*args) on a new thread, wait for it, and return its result or raise its error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work(*args)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name=f"torch-{threading.current_thread().name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
