"""Why is dynamic int8 bad on the sentence encoders? Compare quantization schemes / skipped layers.
Usage: HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/bf16/site:/tmp/bf16 /work/main/.venv/bin/python /tmp/bf16/int8_diag.py
"""
import copy, json, warnings
warnings.filterwarnings("ignore")
import torch, torch.nn as nn
from torch.ao.quantization import quantize_dynamic, per_channel_dynamic_qconfig, default_dynamic_qconfig
from transformers import AutoModel, AutoTokenizer
from agree import embed, cos_rows, MINILM, MPNET, SENTENCES

torch.set_num_threads(2)
res = {}
for name, path in [("minilm", MINILM), ("mpnet", MPNET)]:
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    ref = embed(base, tok, SENTENCES)
    linear_names = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
    schemes = {
        "per_tensor_all_linear": {nn.Linear: default_dynamic_qconfig},
        "per_channel_all_linear": {nn.Linear: per_channel_dynamic_qconfig},
        "per_tensor_skip_ffn_output": {n: default_dynamic_qconfig for n in linear_names
                                       if not (n.endswith("output.dense") and "attention" not in n)},
        "per_tensor_only_attention": {n: default_dynamic_qconfig for n in linear_names if "attention" in n or "attn" in n},
        "per_tensor_only_ffn_output": {n: default_dynamic_qconfig for n in linear_names
                                       if n.endswith("output.dense") and "attention" not in n},
    }
    r = {"engine": torch.backends.quantized.engine}
    for s, spec in schemes.items():
        q = quantize_dynamic(copy.deepcopy(base), spec, dtype=torch.qint8)
        c = cos_rows(ref, embed(q, tok, SENTENCES))
        r[s] = {"cos_min": round(float(c.min()), 4), "cos_mean": round(float(c.mean()), 4)}
    res[name] = r
    print(name, json.dumps(r, indent=1), flush=True)
json.dump(res, open("/tmp/bf16/out/int8_diag.json", "w"), indent=1)
