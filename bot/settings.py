"""Every setting of the bot, in one typed object read from the environment (and `.env`).

Names are a contract with users and the rest of the code: see `.env.example` and the README's
configuration table. An invalid value raises SettingsError naming the variable, the value and what
is allowed, so start-up can stop with one clear line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The seven tasks, in the order of the README's table, with their default checkpoints.
DEFAULT_CHECKPOINTS: dict[str, str] = {
    "generate": "gpt2",
    "mask": "bert-base-uncased",
    "translate": "Helsinki-NLP/opus-mt-en-de",
    "ask": "distilbert-base-uncased-distilled-squad",
    "ner": "dbmdz/bert-large-cased-finetuned-conll03-english",
    "sentiment": "distilbert-base-uncased-finetuned-sst-2-english",
    "embed": "bert-base-uncased",
}

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZE_MODES = ("none", "int8")
LOG_FORMATS = ("text", "json")
INFERENCE_MODES = ("local", "ray")


class SettingsError(ValueError):
    """A configuration value is invalid; the message is one line meant for the operator."""


@dataclass(frozen=True)
class Settings:
    discord_token: str | None = field(default=None, repr=False)  # never in a repr, hence never in a log
    discord_guild_id: int | None = None
    checkpoints: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CHECKPOINTS))
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    torch_threads: int | None = None  # None: torch's default (one per core)
    # Limits on what one request may ask for.
    max_new_tokens: int = 200
    max_input_chars: int = 6000
    max_masks: int = 5
    max_top_k: int = 10
    # Batching; None means "pick the CPU or GPU default once the device is known".
    max_batch_size: int | None = None
    batch_token_budget: int | None = None
    # Backpressure and fairness.
    queue_size_per_model: int = 64
    queue_size_total: int = 256
    max_queued_per_user: int = 4
    request_timeout: float = 120.0
    preload: bool = False
    memory_budget_mb: float | None = None
    # Discord side (#5) and operations (#6).
    user_cooldown: float = 2.0
    owner_ids: tuple[int, ...] = ()
    admin_checkpoints: tuple[str, ...] = ()
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_user_salt: str = field(default="", repr=False)  # empty: a random salt per start
    shutdown_grace: float = 10.0
    shards: int | str | None = None  # None: one gateway connection; "auto": Discord's count; N: N shards
    # Where models run (#11): "local" (this process) or "ray" (Ray Serve replicas).
    # Several bot processes (#11): this one runs shards shard_ids of shard_count (None: all).
    shard_ids: tuple[int, ...] | None = None
    stream_interval: float = 0.5  # seconds between streamed partial /generate texts
    code_keep_days: float = 7.0  # how long a reply's Code button keeps working (#14); 0 turns it off
    inference: str = "local"
    ray_address: str | None = None  # None: start a local Ray (a one-machine try-out)
    ray_replicas: dict[str, tuple[int, int]] = field(default_factory=dict)  # task → (min, max); absent: (1, 1)
    ray_cpus: dict[str, float] = field(default_factory=dict)  # task → CPUs per replica; absent: 1
    ray_gpus: dict[str, float] = field(default_factory=dict)  # task → GPUs per replica (fractional); absent: 0

    def batch_limits(self, on_gpu: bool) -> tuple[int, int]:
        """(max batch size, padded-token budget) for the device, settings winning over defaults.

        CPU: a few thousand padded tokens already saturate the cores, and bigger batches only add
        latency. GPU: far larger batches are needed to fill the device.
        """
        size = self.max_batch_size or (64 if on_gpu else 32)
        budget = self.batch_token_budget or (65536 if on_gpu else 4096)
        return size, budget


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "automodel-bot"


def _int(env: Mapping[str, str], name: str, default: int | None, low: int = 0, high: int | None = None):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    allowed = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: expected {allowed}") from None
    if value < low or (high is not None and value > high):
        raise SettingsError(f"{name}={raw!r} is invalid: expected {allowed}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: expected a number >= {low}") from None
    if not value >= low or value == float("inf"):
        raise SettingsError(f"{name}={raw!r} is invalid: expected a number >= {low}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is invalid: expected one of {' | '.join(allowed)}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is invalid: expected true or false")


def _id_list(env: Mapping[str, str], name: str) -> tuple[int, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        return tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: expected comma-separated Discord ids") from None


def _shards(env: Mapping[str, str], name: str = "SHARDS") -> int | str | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw == "auto":
        return "auto"
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name}={raw!r} is invalid: expected empty (one connection), auto or an integer >= 1")
    return int(raw)


def _shard_count(env: Mapping[str, str]) -> int | str | None:
    """SHARD_COUNT (or its older name SHARDS): the total number of shards, or "auto"."""
    if env.get("SHARD_COUNT", "").strip() and env.get("SHARDS", "").strip():
        raise SettingsError("SHARDS and SHARD_COUNT are both set: keep SHARD_COUNT (SHARDS is its older name)")
    name = "SHARD_COUNT" if env.get("SHARD_COUNT", "").strip() else "SHARDS"
    count = _shards(env, name)
    if count is not None and name == "SHARD_COUNT" and count == "auto" and env.get("SHARD_IDS", "").strip():
        raise SettingsError("SHARD_IDS needs a number in SHARD_COUNT (every process must agree on it), not auto")
    return count


def _shard_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
    """SHARD_IDS: the shards this process runs, "0,1" or "0-3", each below SHARD_COUNT."""
    raw = env.get("SHARD_IDS", "").replace(" ", "")
    if not raw:
        return None
    count = _shard_count(env)
    if not isinstance(count, int):
        raise SettingsError(f"SHARD_IDS={raw!r} needs SHARD_COUNT, the total number of shards of all processes")
    try:
        ids: list[int] = []
        for part in filter(None, raw.split(",")):
            low, _, high = part.partition("-")
            ids.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SettingsError(f"SHARD_IDS={raw!r} is invalid: expected ids like 0,1 or a range like 0-3") from None
    if not ids or min(ids) < 0 or max(ids) >= count or len(set(ids)) != len(ids):
        raise SettingsError(f"SHARD_IDS={raw!r} is invalid: expected distinct ids from 0 to {count - 1} (SHARD_COUNT={count})")
    return tuple(sorted(ids))


def _per_task(env: Mapping[str, str], name: str, parse) -> dict:
    """"V" for every task, or "task=V,task=V" (tasks not named keep the default)."""
    raw = env.get(name, "").replace(" ", "")
    if not raw:
        return {}
    try:
        if "=" not in raw:
            return dict.fromkeys(DEFAULT_CHECKPOINTS, parse(raw))
        out = {}
        for part in filter(None, raw.split(",")):
            task, _, value = part.partition("=")
            if task not in DEFAULT_CHECKPOINTS:
                raise ValueError(f"unknown task {task!r}")
            out[task] = parse(value)
        return out
    except ValueError as err:
        raise SettingsError(
            f"{name}={raw!r} is invalid ({err}): expected a value for every task, or task=value pairs, "
            f"e.g. sentiment=2,ner=1"
        ) from None


def _replica_range(value: str) -> tuple[int, int]:
    """"2": two replicas; "1-4": autoscaling between one and four."""
    low, _, high = value.partition("-")
    low_n, high_n = int(low), int(high or low)
    if not 1 <= low_n <= high_n:
        raise ValueError("replicas must be N or MIN-MAX with 1 <= MIN <= MAX")
    return low_n, high_n


def _resource(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError("a resource must be a number >= 0")
    return number


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if any(c.isspace() for c in value):
        raise SettingsError(f"{name}={value!r} is invalid: expected an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ, which the entry point fills from `.env`)."""
    env = os.environ if env is None else env
    device = env.get("DEVICE", "").strip().lower() or "auto"
    if not DEVICE_PATTERN.match(device):
        raise SettingsError(f"DEVICE={device!r} is invalid: expected one of auto | cpu | cuda | cuda:N | mps")
    checkpoints = {
        task: env.get(f"MODEL_{task.upper()}", "").strip() or default
        for task, default in DEFAULT_CHECKPOINTS.items()
    }
    log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"LOG_LEVEL={log_level!r} is invalid: expected DEBUG | INFO | WARNING | ERROR")
    state_dir = env.get("STATE_DIR", "").strip()
    return Settings(
        discord_token=env.get("DISCORD_TOKEN", "").strip() or None,
        discord_guild_id=_int(env, "DISCORD_GUILD_ID", None, low=1),
        checkpoints=checkpoints,
        device=device,
        dtype=_choice(env, "DTYPE", "auto", DTYPES),
        quantize=_choice(env, "QUANTIZE", "none", QUANTIZE_MODES),
        torch_threads=_int(env, "TORCH_THREADS", None, low=1, high=1024),
        max_new_tokens=_int(env, "MAX_NEW_TOKENS", 200, low=1, high=2048),
        max_input_chars=_int(env, "MAX_INPUT_CHARS", 6000, low=1, high=100_000),
        max_masks=_int(env, "MAX_MASKS", 5, low=1, high=50),
        max_top_k=_int(env, "MAX_TOP_K", 10, low=1, high=100),
        max_batch_size=_int(env, "MAX_BATCH_SIZE", None, low=1, high=4096),
        batch_token_budget=_int(env, "BATCH_TOKEN_BUDGET", None, low=8),
        queue_size_per_model=_int(env, "QUEUE_SIZE_PER_MODEL", 64, low=1),
        queue_size_total=_int(env, "QUEUE_SIZE_TOTAL", 256, low=1),
        max_queued_per_user=_int(env, "MAX_QUEUED_PER_USER", 4, low=1),
        request_timeout=_float(env, "REQUEST_TIMEOUT", 120.0, low=1.0),
        preload=_bool(env, "PRELOAD", False),
        memory_budget_mb=_float(env, "MEMORY_BUDGET_MB", 0.0) or None,
        user_cooldown=_float(env, "USER_COOLDOWN", 2.0),
        owner_ids=_id_list(env, "OWNER_IDS"),
        admin_checkpoints=tuple(p.strip() for p in env.get("ADMIN_CHECKPOINTS", "").split(",") if p.strip()),
        state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(),
        log_level=log_level,
        log_format=_choice(env, "LOG_FORMAT", "text", LOG_FORMATS),
        metrics_port=_int(env, "METRICS_PORT", None, low=1, high=65535),
        metrics_host=_host(env, "METRICS_HOST", "127.0.0.1"),
        log_user_salt=env.get("LOG_USER_SALT", "").strip(),
        shutdown_grace=_float(env, "SHUTDOWN_GRACE", 10.0),
        shards=_shard_count(env),
        shard_ids=_shard_ids(env),
        stream_interval=_float(env, "STREAM_INTERVAL", 0.5),
        code_keep_days=_float(env, "CODE_KEEP_DAYS", 7.0),
        inference=_choice(env, "INFERENCE", "local", INFERENCE_MODES),
        ray_address=env.get("RAY_ADDRESS", "").strip() or None,
        ray_replicas=_per_task(env, "RAY_REPLICAS", _replica_range),
        ray_cpus=_per_task(env, "RAY_CPUS_PER_REPLICA", _resource),
        ray_gpus=_per_task(env, "RAY_GPUS_PER_REPLICA", _resource),
    )
