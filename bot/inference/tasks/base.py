"""What every task shares: the Task interface, input cleaning, and batch padding.

A task turns one request into `Prepared` rows of token ids (on a worker thread, once), and a batch
of Prepared requests into exactly one result per request. It never imports Discord.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from bot.inference.attention import half_precision, rows_alone
from bot.inference.errors import InputError, InputTooLong

if TYPE_CHECKING:
    from bot.settings import Settings

# Control characters (NUL included) can't be shown and confuse tokenizers; newlines and tabs stay.
# Lone surrogates (JSON can carry "\ud800") are not text at all: tokenizers and UTF-8 refuse them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


@dataclass
class Prepared:
    """One request, tokenized: `rows` are the sequences the model will see (windows, chunks, pairs)."""

    request: Any
    rows: list[dict[str, list[int]]]
    extra: dict[str, Any] = field(default_factory=dict)
    sort_key: int = 0
    generated: int = 0  # tokens each row will also produce (generation): they cost like input tokens

    @property
    def cost(self) -> int:
        """Tokens this request adds to a batch, used for the padded-token budget."""
        return sum(len(row["input_ids"]) + self.generated for row in self.rows)

    @property
    def longest(self) -> int:
        return self.input_width + self.generated

    @property
    def input_width(self) -> int:
        """Tokens of the longest row as the model reads it in (what pad_rows pads)."""
        return max(len(row["input_ids"]) for row in self.rows)


@dataclass
class ModelInfo:
    """What a task needs to know about its checkpoint before the weights are loaded."""

    max_length: int  # longest sequence the model accepts, in tokens


class BatchContext:
    """Lets a long-running batch (generation) report progress and notice cancellation per request."""

    def __init__(
        self,
        size: int,
        is_cancelled: Callable[[int], bool] | None = None,
        report: Callable[[int, Any], None] | None = None,
        report_interval: float = 0.5,
    ) -> None:
        self.size = size
        self.report_interval = report_interval  # seconds between partial-output reports (STREAM_INTERVAL)
        self._is_cancelled = is_cancelled or (lambda i: False)
        self._report = report or (lambda i, partial: None)

    def cancelled(self, index: int) -> bool:
        return self._is_cancelled(index)

    def report(self, index: int, partial: Any) -> None:
        self._report(index, partial)


class Task:
    """Base of the seven tasks. Subclasses set the class attributes and implement prepare/predict."""

    name: ClassVar[str]
    auto_class_name: ClassVar[str]  # e.g. "AutoModelForSequenceClassification"
    summary: ClassVar[str]  # one line for /help and `automodel-bot models`
    sample: ClassVar[Any]  # a request used for warm-up and examples
    # Padding a batch may carry, as a fraction of its real tokens: padded positions are computed
    # like real ones, so more padding buys a bigger batch at the price of wasted work.
    max_padding: ClassVar[float] = 0.2
    padding_side: ClassVar[str] = "right"  # where pad_rows pads this task's batches

    @property
    def auto_class(self) -> type:
        import transformers

        return getattr(transformers, self.auto_class_name)

    def prepare(self, request: Any, tokenizer: Any, info: ModelInfo, settings: Settings) -> Prepared:
        raise NotImplementedError

    def predict(self, model: Any, tokenizer: Any, batch: Sequence[Prepared], ctx: BatchContext) -> list[Any]:
        raise NotImplementedError


def normalize_text(text: str) -> str:
    """The text as a model reads it: control characters and surrounding space dropped, NFC."""
    return unicodedata.normalize("NFC", _CONTROL.sub("", text)).strip()


def clean_text(text: Any, settings: Settings, what: str = "text") -> str:
    """Normalize user text; empty or over-long input is an InputError with what to change."""
    if not isinstance(text, str):
        raise InputError(f"The {what} must be text.")
    text = normalize_text(text)
    if not text or not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise InputError(f"The {what} is empty: type something for the model to read.")
    if len(text) > settings.max_input_chars:
        raise InputTooLong(
            f"The {what} is {len(text):,} characters; the limit is {settings.max_input_chars:,}. Shorten it."
        )
    return text


def check_fits(length: int, info: ModelInfo, what: str = "text") -> None:
    if length > info.max_length:
        raise InputTooLong(
            f"The {what} is {length:,} tokens; this model reads at most {info.max_length:,}. Shorten it."
        )


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"`{name}` must be a number.")
    if not (low <= value <= high):  # also rejects NaN
        raise InputError(f"`{name}` must be between {_number(low)} and {_number(high)} (got {_shown(value)}).")


def _number(value: float) -> str:
    """1, 200, 2147483647, 0.01: bounds as people write them (no exponent for whole numbers)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value: float) -> str:
    """An out-of-range value echoed back, kept short (Discord's ints reach 2**53; anyone can send more)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"a number of {len(str(value)) if value.bit_length() < 10_000 else 'thousands of'} digits"
    return repr(value)[:40]


def encoding_row(encoding: Any, index: int | None = None) -> dict[str, list[int]]:
    """The model inputs of one encoded sequence (fast tokenizers' BatchEncoding)."""
    keys = ("input_ids", "token_type_ids")
    if index is None:
        return {k: list(encoding[k]) for k in keys if k in encoding}
    return {k: list(encoding[k][index]) for k in keys if k in encoding}


PAD_MULTIPLE = 8  # half-precision rows are padded to a multiple of this, alone or batched


def padded_width(tokens: int, multiple: int = PAD_MULTIPLE) -> int:
    """The width a row of `tokens` is padded to, by default as a half-precision row is: rows of one
    such width give the same answer in any batch (the executor's same-width rule), and GPU kernels
    prefer multiples of 8."""
    return -(-tokens // multiple) * multiple


def pad_multiple(model: Any, side: str = "right") -> int:
    """PAD_MULTIPLE in half precision, unless the model computes rows padded on `side` as alone
    (attention.py: padding then changes nothing); 1 in fp32, where rounding the width up is only extra work (6-13 %
    on a short text alone, BENCHMARKS.md "One client, paired") and answers do not depend on the
    padding (to well within the invariance tests' tolerance)."""
    return PAD_MULTIPLE if half_precision(model) and not rows_alone(model, side) else 1


def pad_rows(
    rows: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device | str, side: str = "right",
    multiple: int = PAD_MULTIPLE,
) -> dict[str, torch.Tensor]:
    """Pad rows to a common length: the longest, rounded up to `multiple` (pad_multiple(model))."""
    width = padded_width(max(len(r["input_ids"]) for r in rows), multiple)
    out: dict[str, torch.Tensor] = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([_pad(r[key], width, fill, side) for r in rows], dtype=torch.long)
    out["attention_mask"] = torch.tensor(
        [_pad([1] * len(r["input_ids"]), width, 0, side) for r in rows], dtype=torch.long
    )
    return {k: v.to(device) for k, v in out.items()}


def _pad(values: list[int], width: int, fill: int, side: str) -> list[int]:
    padding = [fill] * (width - len(values))
    return padding + values if side == "left" else values + padding


def flatten_rows(batch: Sequence[Prepared]) -> tuple[list[dict[str, list[int]]], list[int]]:
    """All rows of a batch in one list, and for each request how many rows it owns."""
    rows = [row for prepared in batch for row in prepared.rows]
    return rows, [len(prepared.rows) for prepared in batch]


def split_counts(items: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    """Undo flatten_rows: give each request back its own slice of per-row outputs."""
    out, start = [], 0
    for count in counts:
        out.append(list(items[start : start + count]))
        start += count
    return out


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device
