import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
from pathlib import Path
import dataclasses, math
from bot.settings import load_settings
from bot.synthetic import build_checkpoints
from bot.inference.local import LocalBackend
from tests.answers import CASES, task_of, run, difference
import tests.answers as answers
size = sys.argv[1]; dtype = sys.argv[2]
cps = build_checkpoints(Path(".test-models") if size != "real" else Path.home() / ".cache/automodel-bot/bench-models", size)
settings = load_settings({f"MODEL_{t.upper()}": str(p) for t, p in cps.items()} | {"DEVICE": "cpu", "DTYPE": dtype})
backend = LocalBackend(settings)
for tol in (1e-4, 1e-2):
    answers.SCORE_TOLERANCE = tol
    for case, (request, companions) in CASES.items():
        task = task_of(case)
        [alone] = run(backend, task, [request])
        worst = None
        for pos in range(len(companions) + 1):
            batch = companions[:pos] + [request] + companions[pos:]
            got = run(backend, task, batch)[pos]
            d = difference(alone, got)
            if d: worst = d; break
        print(f"{dtype} tol={tol:g} {case:18s} {'SAME' if worst is None else 'DIFF: ' + worst[:150]}")
