"""A reply → the short Python script that reproduces it (the Code button, `try --code`). No Discord.

The script follows the tutorial's shape: AutoTokenizer and the Auto class on the same checkpoint,
the user's exact input, a forward pass or `generate`, then the same post-processing the task does
(mean pooling over real tokens, the answer-span rule, sentence splitting, the seeded sampler), and
it prints the result as `automodel-bot try` does. Keep each template in step with its task module:
tests/test_reproduce.py runs every script and compares its output with the task's.

User text only ever enters a script through `literal()`: a Python string literal that no input can
break out of, and that cannot close the Discord code block it is shown in.
"""

from __future__ import annotations

import dataclasses
from string import Template
from typing import Any

from bot.inference.products import IN_PIECES
from bot.inference.tasks import TASKS
from bot.inference.tasks.base import PAD_MULTIPLE, normalize_text
from bot.inference.tasks.mask import normalize_masks
from bot.inference.tasks.translate import NUM_BEAMS

# Why each Auto class fits its command: the first line of every script.
WHY = {
    "generate": "AutoModelForCausalLM: a language model predicts the next token again and again to continue your prompt.",
    "mask": "AutoModelForMaskedLM: the model scores every word of its vocabulary for each [MASK] position.",
    "translate": "AutoModelForSeq2SeqLM: an encoder reads the text, a decoder writes the translation token by token.",
    "ask": "AutoModelForQuestionAnswering: the model scores where the answer starts and ends in the context.",
    "ner": "AutoModelForTokenClassification: one label per token (B-/I- PER, ORG, LOC, MISC), grouped into names.",
    "sentiment": "AutoModelForSequenceClassification: one score per label for the whole text.",
    "embed": "AutoModel: the bare model's last hidden states, mean-pooled into one vector per text.",
}
# Tasks whose default models the bot runs packed on CPU (attention.py): each row's answer is the
# model's on that text alone and unpadded, so scripts run each text alone too. For a spec stored
# before specs said it themselves (ScriptSpec.packed), and on Ray until a replica reports. Not
# /generate: row by row only in half precision, so its script then says the bot pads.
ROW_BY_ROW = frozenset({"sentiment", "embed", "mask", "ner", "ask"})
WRAP = 72  # longer texts become one literal per line, joined by Python's implicit concatenation


@dataclasses.dataclass
class ScriptSpec:
    """Everything a script needs, as plain data (JSON in the Code button's store)."""

    task: str
    request: dict[str, Any]  # the request's fields as the user sent them
    checkpoint: str
    dtype: str = "float32"
    quantize: str = "none"
    seed: int | None = None  # /generate: the seed used (drawn when none was given)
    mask_token: str | None = None  # /mask: the model's mask token
    chunks: int = 1  # /translate: pieces the text was translated in
    local_path_hidden: bool = False  # the checkpoint is a local folder shown by name only
    # The bot computed each row as alone and unpadded (attention.py: packed encoders, and decoders
    # row by row in half precision); None: by task. Named for the encoders, the first it covered.
    packed: bool | None = None
    # The bot computed the model's products in pieces of fixed row counts (products.py): on its
    # CPU its half-precision products change with a call's rows, so a plain run's last digits can differ.
    pieces: bool = False


def spec_for(task: str, request: Any, result: Any, checkpoint: str, dtype: str = "float32", quantize: str = "none",
             packed: bool | None = None, pieces: bool = False) -> ScriptSpec:
    """The spec of one finished request: its request, plus what only the result knows."""
    return ScriptSpec(
        task,
        dataclasses.asdict(request),
        checkpoint,
        dtype,
        quantize,
        seed=getattr(result, "seed", None),
        mask_token=getattr(result, "mask_token", None),
        chunks=getattr(result, "chunks", 1),
        packed=packed,
        pieces=pieces,
    )


def backend_spec(backend: Any, task: str, request: Any, result: Any) -> ScriptSpec:
    """The spec of a request `backend` (local or Ray) ran: with its checkpoint, precision and whether
    rows ran as alone (None when the backend cannot tell yet: a Ray replica that has not reported its
    loaded model)."""
    return spec_for(task, request, result, backend.checkpoints[task], *backend.precision(task),
                    backend.rows_alone(task), backend.products(task) == IN_PIECES)


def literal(text: str) -> str:
    """`text` as a Python string literal: repr escapes quotes, backslashes, newlines and every
    non-printable character; a backtick becomes \\x60 so no input can close a ``` fence."""
    return repr(text).replace("`", "\\x60")


def wrapped(text: str, indent: str = "    ") -> str:
    """A literal for `text`; long text as one literal per line inside parentheses, cut after spaces."""
    if len(text) <= WRAP:
        return literal(text)
    pieces, start = [], 0
    while start < len(text):
        end = start + WRAP
        if end < len(text):
            space = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = space + 1 if space > start else end
        pieces.append(text[start:end])
        start = end
    return "(\n" + "".join(f"{indent}{literal(p)}\n" for p in pieces) + ")"


def script(spec: ScriptSpec) -> str:
    """The runnable script for `spec`."""
    build = _BODIES[spec.task]
    inputs, body = build(spec)
    # In half precision, padding changes the last digits: pad as the bot pads (bot.inference.tasks.base),
    # except where the bot computed each row as alone and unpadded (attention.py).
    half = _half(spec)
    pads_like_the_bot = "__PAD__" in body or "__MULTIPLE__" in body
    pad = half and not _rows_alone(spec)
    multiple = f", pad_to_multiple_of={PAD_MULTIPLE}" if pad else ""
    body = body.replace("__PAD__", ", padding=True" + multiple if pad else "").replace("__MULTIPLE__", multiple)
    auto = TASKS[spec.task].auto_class_name
    dtype = f", dtype=torch.{spec.dtype}" if spec.dtype != "float32" else ""
    quantize = (
        "# The bot quantizes Linear layers to int8 (QUANTIZE=int8).\n"
        "model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)\n"
        if spec.quantize == "int8" else ""
    )
    if half and spec.pieces:
        quantize += ("# The bot computed this model's matrix products in pieces of fixed row counts: on its CPU,\n"
                     f"# {spec.dtype} products change with a call's row count, so the last digits here can differ.\n")
    if pad and not pads_like_the_bot:
        quantize += (f"# The bot pads this input to a multiple of {PAD_MULTIPLE} tokens; in {spec.dtype} that changes\n"
                     "# the last digits, so a long text can come out differently here.\n")
    where = (
        "# A folder on the bot's own disk, shown by name only: ask the bot's owner for it.\n"
        if spec.local_path_hidden else ""
    )
    extra_imports = _EXTRA_IMPORTS.get(spec.task, "")
    names = ", ".join(["AutoTokenizer", auto] + (["LogitsProcessor", "LogitsProcessorList"] if _sampled(spec) else []))
    return _HEAD.substitute(
        why=WHY[spec.task], task=spec.task, extra_imports=extra_imports, auto=auto, names=names, where=where,
        checkpoint=literal(spec.checkpoint), inputs=inputs, dtype=dtype, quantize=quantize,
    ) + body


_HEAD = Template("""\
# $why
# Reproduces an automodel-bot /$task reply. Needs: pip install torch transformers
${extra_imports}import torch
from transformers import $names

${where}checkpoint = $checkpoint
$inputs
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
model = $auto.from_pretrained(checkpoint$dtype)
$quantize""")

_EXTRA_IMPORTS = {"translate": "import re\n"}

_BAR = 'def bar(p, width=20):\n    return "█" * round(p * width) + "░" * (width - round(p * width))\n'


def _text_input(spec: ScriptSpec, name: str = "text", key: str = "text") -> str:
    typed = spec.request[key]
    read = normalize_text(typed)
    note = (
        f"# Your {name} as the model read it: control characters and surrounding spaces removed.\n"
        if read != typed else ""
    )
    return f"{note}{name} = {wrapped(read)}\n"


def _sentiment(spec: ScriptSpec) -> tuple[str, str]:
    return _text_input(spec), _BAR + """
inputs = tokenizer(text, return_tensors="pt"__PAD__)
with torch.no_grad():
    logits = model(**inputs).logits
probs = torch.softmax(logits.float(), dim=-1)[0].tolist()
labels = [model.config.id2label[i] for i in range(len(probs))]
best = max(range(len(probs)), key=probs.__getitem__)

print(f"{labels[best]} ({probs[best] * 100:.1f}%)")
width = max(len(label) for label in labels)
for label, p in zip(labels, probs):
    print(f"{label:<{width}}  {bar(p)} {p * 100:5.1f}%")
"""


def _embed(spec: ScriptSpec) -> tuple[str, str]:
    pair = spec.request.get("other") is not None
    inputs = _text_input(spec) + (_text_input(spec, "other", "other") if pair else "")
    body = f"""
pooled = []
for one in {"[text, other]" if pair else "[text]"}:  # each text alone, as the bot answers it
    inputs = tokenizer(one, return_tensors="pt"__PAD__)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state.float()
    # Mean over the text's real tokens: padding must not count.
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    pooled.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))[0])
vectors = [torch.nn.functional.normalize(p, dim=-1) for p in pooled]

print(f"dimension {{vectors[0].shape[0]}}, norm before normalizing {{pooled[0].norm().item():.4f}}")
print("[" + ", ".join(f"{{v:+.4f}}" for v in vectors[0][:8].tolist()) + ", …]")
"""
    if pair:
        body += 'print(f"cosine similarity {(vectors[0] @ vectors[1]).item():+.4f}")\n'
    return inputs, body


def _mask(spec: ScriptSpec) -> tuple[str, str]:
    typed = normalize_text(spec.request["text"])
    text = normalize_masks(typed, spec.mask_token or "[MASK]")
    note = f"# [mask] and <mask> written as this model's mask token, {spec.mask_token}.\n" if text != typed else ""
    inputs = f"{note}text = {wrapped(text)}\ntop_k = {int(spec.request['top_k'])}\n"
    return inputs, _BAR + """
inputs = tokenizer(text, return_tensors="pt"__PAD__)
with torch.no_grad():
    logits = model(**inputs).logits[0]
candidates = []  # per mask: (word, probability), best first
for position in (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist():
    probs, ids = torch.softmax(logits[position].float(), dim=-1).topk(top_k)
    words = [tokenizer.decode([i]).strip() for i in ids.tolist()]
    # WordPiece marks the rest of a word with "##": show the word as a reader writes it.
    words = [w[2:] if w.startswith("##") and len(w) > 2 else w for w in words]
    candidates.append(list(zip(words, probs.tolist())))

pieces = text.split(tokenizer.mask_token)
print(pieces[0] + "".join(options[0][0] + piece for options, piece in zip(candidates, pieces[1:])))
print()
for n, options in enumerate(candidates, 1):
    print(f"mask {n}:")
    width = max(len(word) for word, _ in options)
    for word, p in options:
        print(f"  {word:<{width}}  {bar(p)} {p * 100:5.1f}%")
"""


def _ner(spec: ScriptSpec) -> tuple[str, str]:
    return _text_input(spec), """
encoding = tokenizer(text, return_offsets_mapping=True, return_tensors="pt"__PAD__)
offsets = encoding.pop("offset_mapping")[0].tolist()
special = tokenizer.get_special_tokens_mask(encoding["input_ids"][0].tolist(), already_has_special_tokens=True)
with torch.no_grad():
    scores, label_ids = torch.softmax(model(**encoding).logits[0].float(), dim=-1).max(dim=-1)

# Group tokens into entities: a B- tag or a change of type starts a new one ("simple" aggregation).
entities, current = [], None  # [type, token scores, start, end]
for (start, end), is_special, score, label_id in zip(offsets, special, scores.tolist(), label_ids.tolist()):
    if is_special or end <= start:
        continue
    tag = model.config.id2label[label_id]
    prefix, kind = tag.split("-", 1) if "-" in tag else ("", tag)
    kind = "" if tag == "O" else kind
    if current and kind == current[0] and prefix != "B":
        current[1].append(score)
        current[3] = end
        continue
    current = [kind, [score], start, end] if kind else None
    if current:
        entities.append(current)

if not entities:
    print(f"{text}\\n\\nNo entities found.")
else:
    marked, cursor = "", 0
    for kind, _, start, end in entities:
        marked += f"{text[cursor:start]}[{text[start:end]}]({kind})"
        cursor = end
    print(marked + text[cursor:])
    print()
    width = max(end - start for _, _, start, end in entities)
    for kind, kind_scores, start, end in entities:
        print(f"  {kind:<5} {text[start:end]:<{width}}  {sum(kind_scores) / len(kind_scores) * 100:5.1f}%")
"""


def _ask(spec: ScriptSpec) -> tuple[str, str]:
    inputs = _text_input(spec, "question", "question") + _text_input(spec, "context", "context")
    return inputs, """
max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
question_tokens = len(tokenizer(question, add_special_tokens=False)["input_ids"])
# A context longer than the model reads at once goes in overlapping windows; the best span wins.
encoding = tokenizer(
    question, context, truncation="only_second", max_length=max_length,
    stride=min(128, (max_length - question_tokens) // 4), return_overflowing_tokens=True,
    return_offsets_mapping=True, padding=True, return_tensors="pt"__MULTIPLE__,
)
offsets = encoding.pop("offset_mapping").tolist()
encoding.pop("overflow_to_sample_mapping")
lengths = encoding["attention_mask"].sum(1).tolist()

best = None  # (score, start character, end character)
lowest = torch.finfo(torch.float32).min
for window in range(len(offsets)):  # each window alone, as the bot runs it
    with torch.no_grad():
        outputs = model(**{name: values[window:window + 1, :lengths[window]] for name, values in encoding.items()})
    in_context = torch.tensor([s == 1 for s in encoding.sequence_ids(window)[:lengths[window]]])  # only context answers
    start_p = torch.softmax(outputs.start_logits[0].float().masked_fill(~in_context, lowest), dim=-1)
    end_p = torch.softmax(outputs.end_logits[0].float().masked_fill(~in_context, lowest), dim=-1)
    # Every span start <= end < start + 30 inside the context, scored start probability × end probability.
    n = len(in_context)
    ones = torch.ones(n, n, dtype=torch.bool)
    allowed = torch.triu(ones) & ~torch.triu(ones, diagonal=30) & in_context[:, None] & in_context[None, :]
    score, flat = (start_p[:, None] * end_p[None, :]).masked_fill(~allowed, 0.0).flatten().max(dim=0)
    s, e = divmod(flat.item(), n)
    if best is None or score.item() > best[0]:
        best = (score.item(), offsets[window][s][0], offsets[window][e][1])

score, start, end = best
if score < 0.1:  # the bot's threshold for "no confident answer"
    print(f"No confident answer (best guess {context[start:end]!r}, score {score:.2f}).")
else:
    print(f"{context[start:end]}\\n\\nscore {score:.2f}\\n{context[:start]}**{context[start:end]}**{context[end:]}")
"""


_TRANSLATE_ONE = """
def translate(piece):
    inputs = tokenizer(piece, return_tensors="pt")
    # At most twice the source's tokens (rounded up to 8) plus 16: the bot's limit, from this text alone.
    budget = min(model.config.max_position_embeddings, 2 * (-(-inputs["input_ids"].shape[1] // 8) * 8) + 16)
    with torch.no_grad():
        output = model.generate(**inputs, num_beams=$beams, max_new_tokens=budget)
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()

"""

_TRANSLATE_SPLIT = """
# The text is longer than the model reads at once: split it at sentence ends (between words for
# an over-long sentence) into pieces that fit, translate each, and join the translations.
limit = min(tokenizer.model_max_length, model.config.max_position_embeddings) - 2  # room for </s>


def count(piece):
    return len(tokenizer(piece, add_special_tokens=False)["input_ids"])


def pack(parts):
    chunks = []
    for part in parts:
        if chunks and count(f"{chunks[-1]} {part}") <= limit:
            chunks[-1] = f"{chunks[-1]} {part}"
        else:
            chunks.append(part)
    return chunks


pieces = []
for sentence in filter(None, (s.strip() for s in re.split(r"(?<=[.!?。！？])\\s+|\\n+", text))):
    pieces += [sentence] if count(sentence) <= limit else pack(sentence.split())
print(" ".join(translate(chunk) for chunk in pack(pieces)))
"""


def _translate(spec: ScriptSpec) -> tuple[str, str]:
    body = Template(_TRANSLATE_ONE).substitute(beams=NUM_BEAMS)
    body += _TRANSLATE_SPLIT if spec.chunks > 1 else "print(translate(text))\n"
    return _text_input(spec), body


_SAMPLER = """

class SeededSampler(LogitsProcessor):
    \"\"\"The bot's sampler: the 50 likeliest tokens, cut to top_p, one drawn with Gumbel noise from a
    hash of (seed, step, token id). The same seed gives the same text, whatever else runs.\"\"\"

    def __init__(self, prompt_length):
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        best, token_ids = scores.topk(min(50, scores.shape[1]), dim=-1)
        logits = best.float() / temperature
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, float("-inf"))
        x = (seed * 1_000_003 + step * 7919 + token_ids) % 2**31
        for _ in range(3):
            x = (x * 1_103_515_245 + 12_345) % 2**31
            x = x ^ (x >> 13)
        uniform = ((x.float() + 0.5) / 2**31).clamp(1e-9, 1 - 1e-7)
        choice = token_ids.gather(1, (logits - torch.log(-torch.log(uniform))).argmax(dim=-1, keepdim=True))
        return torch.full_like(scores, float("-inf")).scatter_(1, choice, 0.0)

"""

_GENERATE = """$copies
inputs = tokenizer($prompts, return_tensors="pt")
prompt_length = inputs["input_ids"].shape[1]
with torch.no_grad():
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,$processor
    )
new_tokens = output[0, prompt_length:].tolist()
reason = "length"
if tokenizer.eos_token_id in new_tokens:  # the model ended the text itself
    new_tokens, reason = new_tokens[: new_tokens.index(tokenizer.eos_token_id)], "eos"
text = tokenizer.decode(new_tokens, skip_special_tokens=True)
print(f"{prompt}{text}\\n\\n({len(new_tokens)} tokens, {reason}, seed {seed})")
"""


def _generate(spec: ScriptSpec) -> tuple[str, str]:
    request = spec.request
    sampled = _sampled(spec)
    copies = {"copies": "", "prompts": "prompt"}
    if _half(spec) and _rows_alone(spec):  # bot.inference.attention: a lone row runs as two copies
        copies = {"copies": f"\n# Two copies of the prompt, as the bot computes a row alone: in {spec.dtype}, a single row's\n"
                            "# matrix products take another kernel, which rounds differently.",
                  "prompts": "[prompt, prompt]"}
    inputs = _text_input(spec, "prompt", "prompt") + f"max_new_tokens = {int(request['max_new_tokens'])}\n"
    if sampled:
        inputs += (
            f"temperature = {float(request['temperature'])!r}\ntop_p = {float(request['top_p'])!r}\n"
            f"seed = {int(spec.seed or 0)}\n"
        )
        processor = "\n        logits_processor=LogitsProcessorList([SeededSampler(prompt_length)]),"
        return inputs, _SAMPLER + Template(_GENERATE).substitute(processor=processor, **copies)
    inputs += f"seed = {int(spec.seed or 0)}  # unused: temperature 0 always takes the likeliest token\n"
    return inputs, Template(_GENERATE).substitute(processor="", **copies)


def _half(spec: ScriptSpec) -> bool:
    return spec.dtype in ("bfloat16", "float16")


def _rows_alone(spec: ScriptSpec) -> bool:
    return spec.packed if spec.packed is not None else spec.task in ROW_BY_ROW


def _sampled(spec: ScriptSpec) -> bool:
    """/generate with temperature > 0: the script carries the bot's seeded sampler."""
    request = spec.request
    return spec.task == "generate" and bool(request.get("do_sample", True)) and float(request["temperature"]) > 0


_BODIES = {
    "generate": _generate,
    "mask": _mask,
    "translate": _translate,
    "ask": _ask,
    "ner": _ner,
    "sentiment": _sentiment,
    "embed": _embed,
}
