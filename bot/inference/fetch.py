"""Download a hub checkpoint into the Hugging Face cache, reporting bytes as they arrive.

No Discord here: this runs on Ray replicas too. Errors from huggingface_hub propagate unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tqdm.std import tqdm

# Weights of other frameworks: never needed here, often as large as the PyTorch ones.
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


def ignore_patterns(files: list[str]) -> list[str]:
    """What not to fetch: other frameworks' weights, and PyTorch .bin weights when the repo also has
    safetensors (transformers loads those; many older repos carry both, doubling the download)."""
    patterns = list(OTHER_FRAMEWORKS)
    if any(name.endswith(".safetensors") for name in files):
        patterns.append("*.bin")
    return patterns


def each_tenth(report: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """An on_progress for fetch() that calls report(done, total) only when the download passes
    another tenth of its total: ten lines per checkpoint, readable in a log."""
    shown = -1

    def progress(done: int, total: int) -> None:
        nonlocal shown
        if total and 10 * done // total > shown:
            shown = 10 * done // total
            report(done, total)

    return progress


REPORT_EVERY = 0.5  # seconds between progress reports (a chat message edit per report is plenty)


class _Nowhere:
    """A file for tqdm that drops what it writes: progress goes to the callback, not the terminal."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _progress_class(on_progress: Callable[[int, int], None] | None):
    """A tqdm class for snapshot_download(tqdm_class=...), and a function giving the final (done, total).

    snapshot_download makes three bars of this class: files done, bytes received ("Downloading bytes")
    and bytes written ("Reconstructing..."); every file's download feeds the two byte bars. The bytes
    written bar has the real total (the sum of the file sizes, growing as each file starts; the other's
    is a guess with Xet), so it is the one reported."""
    lock = threading.Lock()  # bars are updated from huggingface_hub's worker threads
    state = {"bar": None, "last": 0.0}

    class Progress(tqdm):
        monitor_interval = 0  # no tqdm monitor thread

        def __init__(self, *args, **kwargs):
            kwargs.update(file=_Nowhere(), disable=False)  # disabled tqdm bars do not count
            super().__init__(*args, **kwargs)
            if self.unit == "B" and not str(self.desc).startswith("Downloading bytes") and state["bar"] is None:
                state["bar"] = self

        def update(self, n=1):
            with lock:
                super().update(n)
                now = time.monotonic()
                if self is state["bar"] and on_progress and now - state["last"] >= REPORT_EVERY:
                    state["last"] = now
                    on_progress(int(self.n), int(self.total or 0))

    Progress.set_lock(threading.RLock())  # tqdm's default lock is a multiprocessing one

    def final() -> tuple[int, int]:
        bar = state["bar"]
        done = 0 if bar is None else int(max(bar.n, bar.total or 0))
        return done, done  # snapshot_download returned: every byte is there

    return Progress, final


def fetch(checkpoint: str, on_progress: Callable[[int, int], None] | None = None) -> str:
    """Download `checkpoint` (a hub repo id) into the cache and return its snapshot folder.

    on_progress(bytes_done, bytes_total) is called at most every REPORT_EVERY seconds while bytes
    arrive (bytes_total grows as files start), and once at the end with done == total. It runs on a
    download thread, holding up the others: keep it quick (e.g. hand the numbers to an event loop).
    huggingface_hub counts bytes every 10 MiB of a file (its read chunk) and at each file's end.
    Files already in the cache are neither downloaded again nor counted."""
    from huggingface_hub import HfApi, snapshot_download

    files = HfApi().list_repo_files(checkpoint)
    progress, final = _progress_class(on_progress)
    path = snapshot_download(checkpoint, ignore_patterns=ignore_patterns(files), tqdm_class=progress)
    if on_progress:
        on_progress(*final())
    return path


def is_cached(checkpoint: str) -> bool:
    """Whether the default revision's snapshot is all in the cache, decided without the network.

    True only after a complete fetch(): snapshot_download stores the repo's file listing, against
    which the cached files are checked. A snapshot that transformers filled file by file has no
    listing, so it cannot be known complete: False (fetch() then downloads only what is missing)."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, HFValidationError, LocalEntryNotFoundError

    try:
        files = [f.path for f in get_cached_repo_tree(checkpoint)]
        # local_files_only: no network; IncompleteSnapshotError (a LocalEntryNotFoundError) if a file is missing
        snapshot_download(checkpoint, ignore_patterns=ignore_patterns(files), local_files_only=True)
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, HFValidationError):
        return False
    return True

