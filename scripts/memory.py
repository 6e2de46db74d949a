"""Resident memory with all seven models loaded (README "What you need"). Uses the real-size random-
weight checkpoints `automodel-bot bench` builds in ~/.cache/automodel-bot/bench-models (run a bench
once first). Run: .venv/bin/python scripts/memory.py"""

import os, resource
os.environ["HF_HUB_OFFLINE"] = "1"
from pathlib import Path
from bot.settings import load_settings
from bot.inference.local import LocalBackend
from bot.inference.tasks import TASKS, BatchContext
root = Path.home() / ".cache/automodel-bot/bench-models"
names = {"generate": "real-gpt2", "mask": "real-bert-uncased", "embed": "real-bert-uncased", "translate": "real-opus-mt-en-de",
         "ask": "real-distilbert-squad", "ner": "real-bert-cased-conll03", "sentiment": "real-distilbert-sst2"}
settings = load_settings({f"MODEL_{t.upper()}": str(root / n) for t, n in names.items()} | {"DEVICE": "cpu"})
def rss(): return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
base = rss()
backend = LocalBackend(settings)
for task, t in TASKS.items():
    prepared = backend.prepare(task, t.sample)
    backend.run(task, [prepared], BatchContext(1))
    print(f"{task:10s} after: {rss():7.0f} MiB")
print(f"start {base:.0f} MiB, all seven loaded and run once: {rss():.0f} MiB, peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")
