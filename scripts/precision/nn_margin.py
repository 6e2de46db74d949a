"""Which nearest-neighbour flipped under bf16, and how close was it to a tie in fp32?"""
import copy, json, warnings; warnings.filterwarnings("ignore")
import torch
from transformers import AutoModel, AutoTokenizer
from agree import embed, MINILM, MPNET, OUT
from inputs import SENTENCES
torch.set_num_threads(2)
res = {}
for name, path in [("minilm", MINILM), ("mpnet", MPNET)]:
    tok = AutoTokenizer.from_pretrained(path); m = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    A = embed(m, tok, SENTENCES).double(); B = embed(copy.deepcopy(m).to(torch.bfloat16), tok, SENTENCES).double()
    SA, SB = A @ A.T, B @ B.T; SA.fill_diagonal_(-9); SB.fill_diagonal_(-9)
    out = []
    for i in torch.where(SA.argmax(1) != SB.argmax(1))[0].tolist():
        t2 = SA[i].topk(2)
        out.append({"query": SENTENCES[i], "fp32_nn": SENTENCES[SA[i].argmax()], "bf16_nn": SENTENCES[SB[i].argmax()],
                    "fp32_sim_gap_1st_2nd": float(t2.values[0] - t2.values[1])})
    res[name] = out; print(name, json.dumps(out, indent=1))
json.dump(res, open(f"{OUT}/nn_margin.json", "w"), indent=1)
