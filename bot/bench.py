"""`automodel-bot bench` (filled in by the executor work, issue #3)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run_bench(args, settings) -> int:
    return 0
