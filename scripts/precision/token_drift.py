"""Per-token drift of last_hidden_state (fp32 vs bf16 / int8): the quantity token-level heads (NER, QA,
fill-mask) would consume. Not a substitute for measuring those heads."""
import copy, json, warnings; warnings.filterwarnings("ignore")
import torch, torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer
from agree import int8, MINILM, MPNET, OUT
from inputs import SENTENCES
torch.set_num_threads(2)
res = {}
for name, path in [("minilm", MINILM), ("mpnet", MPNET)]:
    tok = AutoTokenizer.from_pretrained(path); m = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    vs = {"bf16": copy.deepcopy(m).to(torch.bfloat16), "int8": int8(m)}
    cs = {k: [] for k in vs}
    with torch.inference_mode():
        for s in SENTENCES:
            enc = tok(s, return_tensors="pt"); ref = m(**enc).last_hidden_state[0].double()
            for k, v in vs.items():
                cs[k].append(F.cosine_similarity(ref, v(**enc).last_hidden_state[0].double(), dim=-1))
    res[name] = {k: {"token_cos_min": float(torch.cat(c).min()), "token_cos_mean": float(torch.cat(c).mean()),
                     "n_tokens": int(torch.cat(c).numel())} for k, c in cs.items()}
    print(name, res[name], flush=True)
json.dump(res, open(f"{OUT}/token_drift.json", "w"), indent=1)
