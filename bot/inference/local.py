"""Where models run: the in-process backend that loads checkpoints and runs batches on one device.

The executor only calls `prepare`, `run` and `describe`; a backend for several GPUs or a remote
serving engine can replace this class without touching the executor or the cogs. Methods here are
blocking and are called from worker threads, never from the event loop.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bot.inference import attention, fetch, hub, loading, products
from bot.inference.device import device_memory, dtype_name, native_bf16, resolve_device, resolve_dtypes
from bot.inference.errors import ModelUnavailable
from bot.inference.tasks import TASKS, BatchContext, ModelInfo, Prepared
from bot.inference.tasks.base import padded_width
from bot.inference.torch_threads import in_own_thread
from bot.settings import Settings

log = logging.getLogger(__name__)

BASE_CLASS = "AutoModel"  # the headless view; shares weights with a head model of the same checkpoint


@dataclass
class LoadedModel:
    checkpoint: str
    class_name: str
    model: Any
    nbytes: int
    load_seconds: float
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0


class LocalBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        # Per task: DTYPE=auto on a CPU with native bf16 runs only some tasks in bf16 (bot.inference.device).
        self.dtypes, self._dtype_choice = resolve_dtypes(
            settings.dtype, self.device, tuple(TASKS), native_bf16() if self.device.type == "cpu" else None,
            quantized=self._quantized(),
        )
        self.checkpoints = dict(settings.checkpoints)  # task → checkpoint; /admin reload changes it
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)  # process-wide: set once, by the one backend
        self._tokenizers: dict[str, Any] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        self._fits: set[tuple[str, str]] = set()  # (task, checkpoint) whose head was checked
        self._downloads: dict[str, tuple[int, int]] = {}  # checkpoint → (bytes done, total) while it downloads

    @property
    def on_gpu(self) -> bool:
        return self.device.type != "cpu"

    # -- per request ---------------------------------------------------------------------------

    def prepare(self, task: str, request: Any) -> Prepared:
        """Validate and tokenize one request (raises InputError, InputTooLong, ModelUnavailable)."""
        tokenizer, info = self.tokenizer(task)
        return TASKS[task].prepare(request, tokenizer, info, self.settings)

    def run(self, task: str, batch: list[Prepared], ctx: BatchContext) -> list[Any]:
        """One forward (or generate) over a batch; one result per request, in order. On a thread of
        its own, which ends with it (see torch_threads)."""
        return in_own_thread(self._run, task, batch, ctx)

    def _run(self, task: str, batch: list[Prepared], ctx: BatchContext) -> list[Any]:
        tokenizer, _ = self.tokenizer(task)
        loaded = self.acquire(task)
        try:
            with torch.inference_mode():
                model = self._view(task, loaded)
                groups = _groups(batch, self.batch_rule(task))
                if len(groups) == 1:
                    return TASKS[task].predict(model, tokenizer, batch, ctx)
                # Cut for a model that /admin reload has replaced since with one that batches less
                # (packed → same width, or → alone): each group on its own, as its rule would have cut it.
                results: list[Any] = [None] * len(batch)
                for rows in groups:
                    part = BatchContext(len(rows), lambda i, rows=rows: ctx.cancelled(rows[i]),
                                        lambda i, partial, rows=rows: ctx.report(rows[i], partial), ctx.report_interval)
                    for row, result in zip(rows, TASKS[task].predict(model, tokenizer, [batch[r] for r in rows], part)):
                        results[row] = result
                return results
        finally:
            self.release(loaded)

    def warm_up(self, task: str) -> None:
        """Load a task's model and run its sample request once, so the first user doesn't pay for
        lazy initialisation (kernels, allocator, caches)."""
        prepared = self.prepare(task, TASKS[task].sample)
        self.run(task, [prepared], BatchContext(1))

    # -- tokenizers and models ----------------------------------------------------------------

    def tokenizer(self, task: str, checkpoint: str | None = None) -> tuple[Any, ModelInfo]:
        checkpoint = checkpoint or self.checkpoints[task]
        self._check_kind(task, checkpoint)
        with self._lock:
            if checkpoint in self._tokenizers:
                return self._tokenizers[checkpoint], self._infos[checkpoint]
        from transformers import AutoConfig, AutoTokenizer

        with self._lock:
            load_lock = self._load_locks.setdefault(("tokenizer", checkpoint), threading.Lock())
        with load_lock:  # concurrent first requests load it once
            with self._lock:
                if checkpoint in self._tokenizers:
                    return self._tokenizers[checkpoint], self._infos[checkpoint]
            self._download(task, checkpoint)  # all its files, with progress, before anything else loads
            tokenizer = _load(task, checkpoint, AutoTokenizer.from_pretrained)
            config = _load(task, checkpoint, AutoConfig.from_pretrained)
            info = ModelInfo(max_length=_max_length(tokenizer, config))
            with self._lock:
                self._tokenizers[checkpoint], self._infos[checkpoint] = tokenizer, info
        return tokenizer, info

    def _check_kind(self, task: str, checkpoint: str) -> None:
        """Refuse a checkpoint without the task's head (a GPT-2 as /sentiment would answer with a
        random head), once per task and checkpoint, before its tokenizer or weights load."""
        with self._lock:
            if (task, checkpoint) in self._fits:
                return
        from transformers import AutoConfig

        wrong_kind = hub.check_head(task, checkpoint, _load(task, checkpoint, AutoConfig.from_pretrained))
        if wrong_kind:
            raise ModelUnavailable(f"The /{task} model is unavailable right now.", detail=wrong_kind)
        with self._lock:
            self._fits.add((task, checkpoint))

    def _download(self, task: str, checkpoint: str) -> None:
        """Fetch a hub checkpoint that is not in the cache yet, recording its progress (for the
        reply of the request waiting on it) and logging every tenth of it. A first /ner fetches
        1.3 GB: without this the reply says "thinking…" for minutes."""
        if hub.is_local(checkpoint) or hub.offline() or not hub.hub_reachable() or fetch.is_cached(checkpoint):
            return
        log_tenth = fetch.each_tenth(lambda done, total: log.info("%s", hub.download_text(checkpoint, done, total)))

        def progress(done: int, total: int) -> None:
            with self._lock:
                self._downloads[checkpoint] = (done, total)
            log_tenth(done, total)

        progress(0, 0)
        try:
            fetch.fetch(checkpoint, progress)
        except Exception as err:
            raise ModelUnavailable(f"The /{task} model is unavailable right now.",
                                   detail=hub.explain(task, checkpoint, err)) from err
        finally:
            with self._lock:
                self._downloads.pop(checkpoint, None)

    def download_progress(self, task: str) -> tuple[str, int, int] | None:
        """(checkpoint, bytes done, bytes total) while the task's checkpoint downloads, else None."""
        checkpoint = self.checkpoints[task]
        with self._lock:
            state = self._downloads.get(checkpoint)
        return (checkpoint, *state) if state else None

    def acquire(self, task: str, checkpoint: str | None = None) -> LoadedModel:
        """The loaded model for a task (loading it on first use); pair with release()."""
        key = self._key(task, checkpoint)
        with self._lock:
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # two tasks sharing a checkpoint must not load it twice
            with self._lock:  # marked in use in the same step as found: unloading skips it from here on
                loaded = self._models.get(key)
                if loaded is not None:
                    loaded.in_use += 1
                    loaded.last_used = time.monotonic()
            if loaded is None:
                loaded = self._load_model(task, key)
                loaded.in_use = 1
                with self._lock:
                    self._models[key] = loaded
                self._enforce_budget(keep=key)
        return loaded

    def release(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.in_use -= 1

    def is_loaded(self, task: str) -> bool:
        with self._lock:
            return self._key(task) in self._models

    def set_checkpoint(self, task: str, checkpoint: str) -> None:
        """Point a task at another checkpoint. The new one is loaded first; requests keep using the
        old one until the switch, and a failure leaves the task as it was."""
        self.tokenizer(task, checkpoint)
        self.release(in_own_thread(self.acquire, task, checkpoint))  # loading runs torch ops: see torch_threads
        with self._lock:
            self.checkpoints[task] = checkpoint
        self._enforce_budget(keep=self._key(task))

    def unload(self, key: tuple[str, str]) -> None:
        with self._lock:
            loaded = self._models.pop(key, None)
        if loaded is not None:
            log.info("Unloaded %s (%s)", loaded.checkpoint, loaded.class_name)
            del loaded
            self.free_cache()

    def free_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> list[dict[str, Any]]:
        """Per task: Auto class, checkpoint, device, dtype, parameters, loaded (for /models, metrics)."""
        rows = []
        reason = self.dtype_reason  # the same line for every row
        for name, task in TASKS.items():
            key = self._key(name)
            with self._lock:
                loaded = self._models.get(key)
            dtype, quantize = self.precision(name)
            rows.append(
                {
                    "task": name,
                    "auto_class": task.auto_class_name,
                    "checkpoint": self.checkpoints[name],
                    "device": str(self.device),
                    "dtype": dtype,
                    "dtype_reason": reason,
                    "quantize": quantize,
                    "packed": self.packed(name),
                    "rows_alone": self.rows_alone(name),
                    "products": self.products(name),
                    "parameters": _count_parameters(self._view(name, loaded)) if loaded else None,
                    "memory_bytes": loaded.nbytes if loaded else None,
                    "loaded": loaded is not None,
                    "shared_with": [t for t in TASKS if t != name and self._key(t) == key],
                }
            )
        return rows

    def memory(self) -> dict[str, int] | None:
        return device_memory(self.device)

    # -- internals -----------------------------------------------------------------------------

    def _key(self, task: str, checkpoint: str | None = None) -> tuple[str, str]:
        """Load key (checkpoint, class). The AutoModel task rides on a head model of the same
        checkpoint when one is configured (bert-base-uncased serves /mask and /embed once)."""
        checkpoint = checkpoint or self.checkpoints[task]
        class_name = TASKS[task].auto_class_name
        if class_name == BASE_CLASS:
            for other, ckpt in self.checkpoints.items():
                if ckpt == checkpoint and TASKS[other].auto_class_name != BASE_CLASS:
                    return checkpoint, TASKS[other].auto_class_name
        return checkpoint, class_name

    def _view(self, task: str, loaded: LoadedModel) -> Any:
        if TASKS[task].auto_class_name == BASE_CLASS and loaded.class_name != BASE_CLASS:
            return loaded.model.base_model
        return loaded.model

    def precision(self, task: str) -> tuple[str, str]:
        """(dtype, quantize) the task's model runs in, as /models shows them."""
        return dtype_name(self._dtype_of(self._key(task))), self.settings.quantize if self._quantized() else "none"

    def packed(self, task: str) -> bool:
        """Whether the task's model runs packed: an encoder computing no padded token (attention.py)."""
        loaded = self._models.get(self._key(task))
        return bool(loaded and attention.packs(loaded.model))

    def rows_alone(self, task: str) -> bool:
        """Whether the task's model computes each row as alone and unpadded (attention.py): packed
        encoders, and decoders running attention row by row."""
        loaded = self._models.get(self._key(task))
        return bool(loaded and attention.rows_alone(loaded.model, TASKS[task].padding_side))

    @property
    def dtype_reason(self) -> str:
        """What DTYPE chose and why, and where a shared model overrides it (start-up log, /models)."""
        return self._dtype_choice + self._shared_note()

    def _shared_note(self) -> str:
        """'; /embed float32 too: it shares /mask's model' where sharing overrides a task's dtype."""
        notes = []
        for task, wanted in self.dtypes.items():
            key = self._key(task)
            if self._dtype_of(key) != wanted:
                owner = next(t for t in TASKS if self._key(t) == key and t != task)
                notes.append(f"; /{task} {dtype_name(self._dtype_of(key))} too: it shares /{owner}'s model")
        return "".join(notes)

    def _dtype_of(self, key: tuple[str, str], loading_for: str | None = None) -> torch.dtype:
        """The dtype a load key's model is loaded in: its tasks' dtype (with `loading_for`, the task
        a checkpoint is being loaded for before /admin reload points it there); float32 if tasks
        sharing it were given different ones (a /embed riding on /generate's checkpoint)."""
        wanted = {self.dtypes[task] for task in TASKS if self._key(task) == key}
        if loading_for is not None:
            wanted.add(self.dtypes[loading_for])
        return wanted.pop() if len(wanted) == 1 else torch.float32

    def batch_rule(self, task: str) -> str:
        """Which rows the executor may batch together so that answers stay the same as alone:
        "packed" for encoders running attention row by row on their rows packed without padding
        (bot/inference/attention.py: rows of any lengths; in half precision bit-identical to alone);
        "any" for other models in float32, and for decoders running attention row by row; "same
        width" for the others in half precision, where padding wider changes the answer
        (executor.cut_batch); "alone" with int8, whose activations are quantized with one scale per
        batch (companions moved scores by 0.5 % even at one width), for a half-precision model whose
        products vary with the rows beside them even in pieces (products.py), and for one on CPU
        not loaded yet (its products not probed)."""
        if self._quantized() or self.products(task) == products.VARYING:
            return "alone"
        if self.packed(task):  # before the load, the safe rule: the model decides (attention.py)
            return "packed"
        if self._dtype_of(self._key(task)) == torch.float32:
            return "any"
        if self.device.type == "cpu" and self._key(task) not in self._models:  # products not probed yet
            return "alone"
        return "any" if self.rows_alone(task) else "same width"

    def products(self, task: str) -> str:
        """How the task's model keeps each row's products independent of its companions (products.py):
        steady, in pieces, or varying (then its requests run alone)."""
        loaded = self._models.get(self._key(task))
        return products.verdict(loaded.model) if loaded else products.STEADY

    def _quantized(self) -> bool:
        return self.settings.quantize == "int8" and self.device.type == "cpu"

    def _load_model(self, task: str, key: tuple[str, str]) -> LoadedModel:
        import transformers

        checkpoint, class_name = key
        auto_class = getattr(transformers, class_name)
        self._download(task, checkpoint)  # `models --load` comes here first: show its progress too
        started = time.perf_counter()
        dtype = self._dtype_of(key, loading_for=task)
        log.info("Loading %s with %s on %s (%s)", checkpoint, class_name, self.device, dtype_name(dtype))
        # Loaded in float32, cast afterwards: from_pretrained(dtype=…) switches torch's process-wide
        # default dtype while it runs, and another task's model running meanwhile would create its
        # tensors in it (seen: /translate's beam search failing on bf16 biases during a bf16 load).
        try:
            model = _load(task, checkpoint, auto_class.from_pretrained, dtype=torch.float32, attn_implementation="sdpa")
        except ModelUnavailable as err:
            if "sdpa" not in str(err.detail).lower():
                raise
            model = _load(task, checkpoint, auto_class.from_pretrained, dtype=torch.float32)
        model = cast(model, self.device, dtype).eval()
        if self._quantized():
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.device.type == "cpu" and attention.use_rowwise(model):  # any lengths batch, as alone
            # (CPU only: on a GPU, kernels picked by matrix size may round differently; not measured)
            log.info("%s: %s, attention row by row (answers independent of padding)", checkpoint,
                     "packed" if attention.packs(model) else "padded on the left")
        if dtype != torch.float32 and self.device.type == "cpu" and not self._quantized():
            found = products.make_steady(model)  # bits independent of the rows beside them: products.py
            if found != products.STEADY:
                log.info("%s: this CPU's %s products change with the rows beside them: %s", checkpoint,
                         dtype_name(dtype), products.shown(found))
        nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        nbytes += products.extra_bytes(model)  # prepacked weights, where products run in pieces
        seconds = time.perf_counter() - started
        log.info("Loaded %s in %.1fs (%.0f MB)", checkpoint, seconds, nbytes / 2**20)
        return LoadedModel(checkpoint, class_name, model, nbytes, seconds)

    def _enforce_budget(self, keep: tuple[str, str]) -> None:
        """Unload least recently used idle models while over MEMORY_BUDGET_MB."""
        budget = self.settings.memory_budget_mb
        if not budget:
            return
        while True:
            with self._lock:
                total = sum(m.nbytes for m in self._models.values())
                idle = [(m.last_used, k) for k, m in self._models.items() if k != keep and m.in_use == 0]
            if total <= budget * 2**20 or not idle:
                return
            self.unload(min(idle)[1])


def _load(task: str, checkpoint: str, loader, **options):
    """A from_pretrained, serialized with every other load (bot.inference.loading), from the cache
    only when the hub cannot be reached; any failure becomes ModelUnavailable with a one-line remedy
    (bot.inference.hub)."""
    try:
        return loading.load_pretrained(loader, checkpoint, **hub.load_options(checkpoint), **options)
    except Exception as err:
        raise ModelUnavailable(
            f"The /{task} model is unavailable right now.",
            detail=hub.explain(task, checkpoint, err),
        ) from err


def cast(model, device: torch.device, dtype: torch.dtype):
    """The model on `device` in `dtype`, except the modules its class keeps in float32 in half
    precision (as from_pretrained(dtype=…) would leave them, e.g. T5's `wo`)."""
    model = model.to(device=device, dtype=dtype)
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or [])
    if keep and dtype != torch.float32:
        for name, module in model.named_modules():
            if keep & set(name.split(".")):
                module.float()
    return model


def _max_length(tokenizer, config) -> int:
    limits = [
        getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_sequence_length")
    ]
    limits.append(tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None)
    known = [int(v) for v in limits if isinstance(v, int) and v > 0]
    return min(known) if known else 512


def _groups(batch: list[Prepared], rule: str) -> list[list[int]]:
    """The batch's requests (indexes) in the groups `rule` lets run together (batch_rule)."""
    if rule == "alone":
        return [[index] for index in range(len(batch))]
    return _widths(batch) if rule == "same width" else [list(range(len(batch)))]


def _widths(batch: list[Prepared]) -> list[list[int]]:
    """The batch's requests grouped by the width they are padded to alone (indexes, in order)."""
    groups: dict[int, list[int]] = {}
    for index, prepared in enumerate(batch):
        groups.setdefault(padded_width(prepared.input_width), []).append(index)
    return list(groups.values())


def _count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
