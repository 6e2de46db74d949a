"""`automodel-bot`: run the bot, try one request, list models, download checkpoints, benchmark.

Every expected failure ends in one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.inference.errors import BotError, ModelUnavailable
from bot.settings import DEFAULT_CHECKPOINTS, Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

EXIT_USAGE = 2  # bad configuration or input
EXIT_UNAVAILABLE = 3  # a model could not be loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automodel-bot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the Discord bot (same as `python -m bot`)")

    models = sub.add_parser("models", help="task → Auto class → checkpoint → device → dtype → parameters → loaded")
    models.add_argument("--load", action="store_true", help="load every model first (shows parameters)")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("download", help="fetch every configured checkpoint into the Hugging Face cache")

    attempt = sub.add_parser("try", help="run one request and print the result",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    attempt.add_argument("task", choices=list(DEFAULT_CHECKPOINTS), help="the command to run, as in Discord")
    attempt.add_argument("text", help="the text (for ask: the question)")
    attempt.add_argument("second", nargs="?", help="ask: the context; embed: a second text to compare")
    attempt.add_argument("--max-new-tokens", type=int, default=50,
                         help="generate: tokens to add (at most the MAX_NEW_TOKENS setting)")
    attempt.add_argument("--temperature", type=float, default=0.8,
                         help="generate: randomness, 0 (always the likeliest token) to 2")
    attempt.add_argument("--top-p", type=float, default=0.95,
                         help="generate: sample only from the likeliest tokens covering this probability (0.01 to 1)")
    attempt.add_argument("--seed", type=int, help="generate: the same seed and options give the same text (default: random)")
    attempt.add_argument("--greedy", action="store_true", help="generate: no sampling (the same as --temperature 0)")
    attempt.add_argument("--top-k", type=int, default=5, help="mask: candidates per mask (at most the MAX_TOP_K setting)")
    attempt.add_argument("--json", action="store_true", help="print the result as JSON")
    attempt.add_argument("--code", action="store_true",
                         help="print the Python script that reproduces the result (what the Code button sends)")

    serve = sub.add_parser("serve", help="deploy or update the models on the Ray cluster at RAY_ADDRESS (INFERENCE=ray)")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every replica to run")

    bench = sub.add_parser("bench", help="benchmark the executor against naive one-at-a-time inference")
    bench_arguments(bench)
    return parser


def _formats(value: str) -> str:
    unknown = [f for f in (part.strip() for part in value.split(",")) if f and f not in ("fp32", "bf16", "int8")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown)}: choose from fp32, bf16, int8")
    return value


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    """`bench`'s options, here so that building the parser imports no torch (a fast --help)."""
    parser.add_argument("--tasks", default="sentiment,embed,ner,generate", help="comma-separated tasks")
    parser.add_argument("--concurrency", default="1,8,32", help="closed-loop client counts")
    parser.add_argument("--requests", type=int, default=64, help="requests per run (each side runs twice: A B B A)")
    parser.add_argument("--rate", type=float, default=0.0, help="also run open-loop Poisson arrivals at this rate (req/s)")
    parser.add_argument("--size", choices=("real", "tiny"), default="real", help="model sizes (real = bert-base etc.)")
    parser.add_argument("--models-dir", type=Path, default=Path.home() / ".cache" / "automodel-bot" / "bench-models")
    parser.add_argument("--formats", default="fp32", type=_formats,
                        help="executor formats to measure against naive fp32, in one run: fp32, bf16, int8")
    parser.add_argument("--quantize", action="store_true", help="also measure QUANTIZE=int8 (same as adding int8 to --formats)")
    parser.add_argument("--generate-streams", default="1,8,16", help="concurrent /generate streams to compare")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per /generate request")
    parser.add_argument("--continuous", action="store_true",
                        help="also compare transformers' continuous batching with batched generate()")
    parser.add_argument("--inference", choices=("local", "ray"), default="local",
                        help="ray: the local executor against the same model on one Ray Serve replica (a local Ray "
                             "on the same cores), per encoder task: throughput and per-request overhead")
    parser.add_argument("--peers", action="store_true",
                        help="also time transformers' own pipeline on the same requests (batch_size 1, 8, 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the markdown report here")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = _run_command(args)
    if code == EXIT_USAGE and args.command == "run" and os.environ.get("ON_CONFIG_ERROR", "").strip() == "wait":
        # In a container with `restart: unless-stopped`, exiting would only start the same mistake
        # again, forever (the Docker image sets ON_CONFIG_ERROR=wait).
        print("automodel-bot: stopped for good: restarting cannot fix a configuration error. Fix .env, then "
              "recreate the container (docker compose up -d). Waiting for `docker stop` meanwhile.",
              file=sys.stderr, flush=True)
        wait_for_stop()
    return code


def _run_command(args: argparse.Namespace) -> int:
    try:
        from dotenv import find_dotenv, load_dotenv

        # The .env of the working directory (or a parent); variables already in the environment win.
        load_dotenv(find_dotenv(usecwd=True), override=False)
        settings = load_settings()
    except SettingsError as err:
        return _fail(str(err), EXIT_USAGE)
    from bot.logs import configure_logging

    configure_logging(settings)
    try:
        return COMMANDS[args.command](args, settings)
    except ModelUnavailable as err:
        return _fail(err.detail, EXIT_UNAVAILABLE)
    except BotError as err:
        return _fail(cli_words(str(err)), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the CLI promises one line, never a traceback (that goes to DEBUG)
        log.debug("Unexpected error in `%s`", args.command, exc_info=True)
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        return _fail(f"unexpected {type(err).__name__}: {reason} (LOG_LEVEL=DEBUG logs the traceback)", 1)


def wait_for_stop() -> None:
    """Block until SIGTERM or SIGINT. The handler only flips a flag: a threading.Event set from a
    handler deadlocked now and then, the handler waiting for the lock its own thread held in wait()."""
    import signal
    import time

    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(number))
    while not stopped:
        time.sleep(0.2)


# The tasks' messages name Discord's options; here they are flags, and some limits are settings.
CLI_NAMES = {
    "max_new_tokens": ("--max-new-tokens", "MAX_NEW_TOKENS"),
    "top_k": ("--top-k", "MAX_TOP_K"),
    "top_p": ("--top-p", None),
    "temperature": ("--temperature", None),
    "seed": ("--seed", None),
}


def cli_words(message: str) -> str:
    for option, (flag, setting) in CLI_NAMES.items():
        if f"`{option}`" in message or f"plus {option}" in message:
            message = message.replace(f"`{option}`", f"`{flag}`").replace(f"plus {option}", f"plus {flag}")
            if setting:
                message += f" ({setting} sets the upper limit.)"
    return message


def as_json(result: Any) -> str:
    """The result as indented JSON, with lists of numbers (embeddings) on one line each."""
    text = json.dumps(dataclasses.asdict(result), ensure_ascii=False, indent=2)
    numbers = re.compile(r"\[\s+(-?[\d.eE+-]+(?:,\s+-?[\d.eE+-]+)*)\s+\]")
    return numbers.sub(lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text)


def _fail(message: str, code: int) -> int:
    print(f"automodel-bot: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.discord_token and interactive():
        from dotenv import find_dotenv

        token = ask_for_token(Path(find_dotenv(usecwd=True) or ".env"))
        settings = dataclasses.replace(settings, discord_token=token) if token else settings
    if not settings.discord_token:
        return _fail(
            "DISCORD_TOKEN is not set. Copy .env.example to .env and set DISCORD_TOKEN=<your bot token> "
            "(Discord Developer Portal → your application → Bot → Reset Token).",
            EXIT_USAGE,
        )
    import aiohttp
    import discord

    from bot.client import create_bot

    bot = create_bot(settings)
    try:
        asyncio.run(run_until_signal(bot, settings.discord_token))
    except discord.LoginFailure:
        return _fail("Discord rejected DISCORD_TOKEN. Copy the token again from the Developer Portal.", EXIT_USAGE)
    except discord.PrivilegedIntentsRequired:
        return _fail("Discord refused a privileged intent; enable it in the Developer Portal.", EXIT_USAGE)
    except (discord.HTTPException, aiohttp.ClientError) as err:  # at login, before anything ran
        return _fail(f"Could not reach Discord: {err}. Check the network, then start again.", 1)
    except OSError as err:  # e.g. STATE_DIR or HF_HOME not writable (a bind mount owned by root)
        return _fail(str(err), 1)
    log.info("Stopped")
    return 0


def interactive() -> bool:
    """A person at a terminal (not CI, not a container's log)."""
    return sys.stdin.isatty() and not os.environ.get("CI")


def ask_for_token(env_file: Path) -> str | None:
    """Ask for the bot token at the terminal and save it to `env_file` (readable by its owner only)."""
    import getpass

    from dotenv import set_key

    print("DISCORD_TOKEN is not set. Paste your bot token (Developer Portal → your application → Bot → "
          "Reset Token); it is saved to .env for the next start.", file=sys.stderr)
    try:
        token = getpass.getpass("Bot token (not shown): ").strip()
    except (EOFError, KeyboardInterrupt):
        return None
    if not token or any(c.isspace() for c in token):
        return None
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)  # a token lets anyone act as the bot
    set_key(str(env_file), "DISCORD_TOKEN", token)
    print(f"Saved to {env_file.resolve()} (mode 600).", file=sys.stderr)
    return token


async def run_until_signal(bot: Any, token: str) -> None:
    """bot.run() without its gap: discord.py handles neither SIGTERM (what `docker stop` sends) nor,
    cleanly, SIGINT. Either one closes the bot (close() drains the executor first) and returns."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if stop.is_set():
            log.info("%s again: already shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C still raises KeyboardInterrupt
            pass
    async with bot:
        running = asyncio.create_task(bot.start(token), name="discord-bot")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            log.info("Received %s: shutting down", received[0])
            await bot.close()
            await asyncio.wait({running}, timeout=5)
            running.cancel()  # still logging in or loading models (PRELOAD): stop there
        stopping.cancel()
        try:
            await running  # the bot's own error (LoginFailure, ...) if it ended by itself
        except asyncio.CancelledError:
            pass


def build_request(args: argparse.Namespace) -> Any:
    from bot.inference.tasks import ask, embed, generate, mask, ner, sentiment, translate

    needs_second = {"ask": "CONTEXT"}
    if args.task in needs_second and args.second is None:
        raise BotError(f"`try {args.task}` needs two arguments: QUESTION {needs_second[args.task]}")
    if args.second is not None and args.task not in ("ask", "embed"):
        raise BotError(f"`try {args.task}` takes one text argument.")
    return {
        "generate": lambda: generate.GenerateRequest(
            args.text, args.max_new_tokens, args.temperature, args.top_p, args.seed, not args.greedy
        ),
        "mask": lambda: mask.MaskRequest(args.text, args.top_k),
        "translate": lambda: translate.TranslateRequest(args.text),
        "ask": lambda: ask.AskRequest(args.text, args.second),
        "ner": lambda: ner.NerRequest(args.text),
        "sentiment": lambda: sentiment.SentimentRequest(args.text),
        "embed": lambda: embed.EmbedRequest(args.text, args.second),
    }[args.task]()


def cmd_try(args: argparse.Namespace, settings: Settings) -> int:
    from bot.inference.executor import Executor
    from bot.render import as_text
    from bot.reproduce import backend_spec, script

    request = build_request(args)

    async def once() -> tuple[Any, str]:
        executor = Executor.from_settings(settings)
        await executor.start()
        try:
            result = await executor.submit(args.task, request)
            return result, script(backend_spec(executor.backend, args.task, request, result))
        finally:
            await executor.shutdown()

    result, code = asyncio.run(once())
    if args.code:
        print(code, end="")
    else:
        print(as_json(result) if args.json else as_text(result))
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from bot.inference.local import LocalBackend
    from bot.inference.tasks import TASKS

    backend = LocalBackend(settings)
    if args.load:
        for task in TASKS:
            backend.release(backend.acquire(task))
    rows = backend.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("task", "auto_class", "checkpoint", "device", "dtype", "parameters", "loaded")
    table = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(backend.dtype_reason)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value / 1e6:.1f}M"
    return str(value)


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from bot.download import download_all

    return download_all(settings)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from bot.bench import run_bench

    return run_bench(args, settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Deploy (or update: Serve replaces replicas gradually) every model group on the cluster and
    print where each replica landed. The cluster outlives this command; bots connect to it."""
    if not settings.ray_address:
        return _fail(
            "RAY_ADDRESS is empty: `serve` deploys onto a running Ray cluster. Start one (`ray start --head`) and "
            "set RAY_ADDRESS=auto (on that machine) or to its address. For a one-machine try-out, "
            "`automodel-bot run` with INFERENCE=ray and RAY_ADDRESS empty starts a local Ray itself.",
            EXIT_USAGE,
        )
    try:
        from bot.inference import ray_serve
    except ImportError:
        return _fail('Ray Serve is not installed: pip install "automodel-bot[ray]" (or "ray[serve]").', EXIT_USAGE)
    placement = ray_serve.deploy(settings, timeout=args.timeout)
    print(f"{'deployment':<12} {'replica':<10} {'node':<13} {'device':<8} loaded")
    for replica in placement:
        models = replica["models"]
        print(f"{replica['deployment']:<12} {replica['replica']:<10} {replica['node']:<13} "
              f"{(models[0]['device'] if models else '?'):<8} {'yes' if all(m['loaded'] for m in models) else 'no'}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "try": cmd_try,
    "models": cmd_models,
    "download": cmd_download,
    "bench": cmd_bench,
    "serve": cmd_serve,
}


if __name__ == "__main__":
    raise SystemExit(main())
