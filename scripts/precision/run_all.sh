#!/bin/bash
# Exact commands that produced /tmp/bf16/out/*.json and the tables in RESULTS.md.
# Prereqs (done once): models fetched/extracted as described in RESULTS.md "Provenance";
#   /work/main/.venv/bin/pip install --no-deps --target /tmp/bf16/site "scikit-learn==1.5.2" scipy threadpoolctl gguf accelerate
set -e
cd /tmp/bf16
export HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/bf16/site:/tmp/bf16
PY=/work/main/.venv/bin/python
$PY agree.py intent        # embed-minilm.json + intent.json
$PY agree.py embed-mpnet   # embed-mpnet.json
$PY agree.py gen           # gen.json (+ gen_cache_*.pt)
$PY int8_diag.py           # int8_diag.json
$PY control.py             # control.json (fp32 sdpa vs eager noise floor)
$PY nn_margin.py           # nn_margin.json
$PY token_drift.py         # token_drift.json
$PY report.py > out/table.md
