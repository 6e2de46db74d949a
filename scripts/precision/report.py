"""Build /tmp/bf16/RESULTS.md tables from /tmp/bf16/out/*.json (run after agree.py / int8_diag.py)."""
import json, os
O = "/tmp/bf16/out"
L = lambda n: json.load(open(f"{O}/{n}.json")) if os.path.exists(f"{O}/{n}.json") else None
rows = []
for n, label in [("embed-minilm", "embeddings: all-MiniLM-L6-v2 (BertModel, 6L/384)"),
                 ("embed-mpnet", "embeddings: all-mpnet-base-v2 (MPNetModel, 12L/768)")]:
    r = L(n)
    if not r:
        continue
    for k in ["bf16", "bf16_pool_bf16", "int8"]:
        x = r[k]
        rows.append(f"| {label} | {k} | cos(fp32,v) min {x['cos_min']:.5f} / mean {x['cos_mean']:.5f}; "
                    f"nearest-neighbour top-1 agree {x['nn_top1_agree']:.3f}; max |Δ pairwise sim| {x['max_abs_dsim']:.4f} |")
r = L("intent")
if r:
    for k in ["bf16", "bf16_pool_bf16", "int8"]:
        x = r[k]
        rows.append(f"| classification (157-intent LogisticRegression on MiniLM embeddings) | {k} | top-1 agree "
                    f"{x['top1_agree']:.4f} ({x['n_flips']} flips/80); max |Δprob| {x['max_abs_dprob']:.4f}; "
                    f"mean |Δp(top1)| {x['mean_abs_dprob_top1']:.4f} |")
r = L("gen")
if r:
    for k in ["bf16", "int8"]:
        x = r[k]
        rows.append(f"| generation: gemma-3-270m (Q4_K_M GGUF dequantized to fp32), greedy 20 tok | {k} | "
                    f"identical {x['identical_20tok']}/{x['of']}; mean agreeing prefix {x['mean_agreeing_prefix']:.1f}/20; "
                    f"first-divergence positions {sorted(x['first_divergence_positions'])}; next-token top-1 agree "
                    f"{x['next_token_top1_agree']:.3f}, top-5 overlap {x['next_token_top5_overlap_mean']:.3f}, "
                    f"max |Δprob| {x['next_token_max_abs_dprob']:.4f} |")
print("| task / checkpoint | variant | agreement with fp32 |\n|---|---|---|")
print("\n".join(rows))
d = L("int8_diag")
if d:
    print("\nint8 diagnostics (cos(fp32, int8) min / mean over the 80 inputs):\n")
    print("| model | scheme | cos min | cos mean |\n|---|---|---|---|")
    for m, r in d.items():
        for s, x in r.items():
            if isinstance(x, dict):
                print(f"| {m} | {s} | {x['cos_min']} | {x['cos_mean']} |")
