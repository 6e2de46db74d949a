"""The Code button's scripts (#14), run for real: each task's script, in a fresh Python process with
only torch and transformers (not this package), prints what the bot printed for the same request.

The bot's side is the task run in a batch with companions of other lengths (as in production); the
script runs its request alone. The "peaked" checkpoints make outputs depend on every step a script
must repeat (mask over padding, the span rule, the sampler), so a wrong step changes the printout.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.code_button import script_message
from bot.inference.local import LocalBackend
from bot.inference.tasks.ask import AskRequest
from bot.inference.tasks.base import normalize_text, padded_width
from bot.inference.tasks.embed import EmbedRequest
from bot.inference.tasks.generate import GenerateRequest
from bot.inference.tasks.mask import MaskRequest
from bot.inference.tasks.ner import NerRequest
from bot.inference.tasks.translate import TranslateRequest
from bot.render import CONTENT_LIMIT, as_text
from bot.reproduce import backend_spec, literal, script, spec_for
from tests.answers import CASES, LONG, SHORT, run, task_of
from tests.test_settings_cli import run_cli

# Inputs that try to break out of a string literal, a code block, or the template itself.
HOSTILE = [
    'He said "hi" and \'bye\'',
    "C:\\path\\to\\file \\n is not a newline \\",
    'triple """ and \'\'\' quotes """',
    "a fence ```py\nprint('pwned')\n``` inside",
    "line one\nline two\r\nline three\ttab",
    "bell\x07 escape\x1b[31m red\x7f and a \u202eright-to-left override",
    '`"; import os; os.system("echo pwned") #',
    "$checkpoint ${text} $$ \\x60 {braces} {{double}} %s %(name)s",
]
# Cases beyond tests/answers.py: more pieces, windows and masks than one row of the tiny models.
EXTRA = {
    "translate-pieces": TranslateRequest(" ".join([LONG] * 4)),
    "ask-windows": AskRequest("Who works for Google?", " ".join([LONG] * 4)),
    "mask-several": MaskRequest(f"The [MASK] in <mask> was [mask]. {SHORT}", top_k=4),
    "embed-one": EmbedRequest(SHORT),
    "embed-padded": EmbedRequest("Hello there", LONG),  # the first text is the padded one in the script
    "generate-greedy-flag": GenerateRequest(SHORT, max_new_tokens=10, temperature=0.8, seed=3, do_sample=False),
    **{f"ner-hostile-{i}": NerRequest(text) for i, text in enumerate(HOSTILE)},
    **{f"generate-hostile-{i}": GenerateRequest(text, max_new_tokens=4, temperature=0.0) for i, text in enumerate(HOSTILE)},
}
NUMBER = re.compile(r"[-+]?\d+\.\d+")

# Runs each script as __main__ in one process (torch and transformers import once), stdout captured.
RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
results = {}
for path in sys.argv[1:]:
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            runpy.run_path(path, run_name="__main__")
        results[path] = {"stdout": buffer.getvalue()}
    except BaseException:
        results[path] = {"stdout": buffer.getvalue(), "error": traceback.format_exc()}
sys.__stdout__.write("\n@@" + json.dumps(results))
"""


def same_printout(script_out: str, bot_out: str) -> str | None:
    """Where two printouts differ: text exactly; each printed decimal within one unit of its last
    digit (the bot ran the row padded in a batch, the script alone)."""
    script_out = script_out.removesuffix("\n")
    if NUMBER.split(script_out) != NUMBER.split(bot_out):
        return f"text differs:\n--- bot\n{bot_out}\n--- script\n{script_out}"
    for mine, theirs in zip(NUMBER.findall(script_out), NUMBER.findall(bot_out)):
        unit = 10.0 ** -len(theirs.split(".")[1])
        if abs(float(mine) - float(theirs)) > unit * 1.01:
            return f"{mine} vs {theirs}:\n--- bot\n{bot_out}\n--- script\n{script_out}"
    return None


def run_scripts(paths: list[Path], cwd: Path) -> dict[str, dict]:
    """Run scripts in a fresh interpreter outside the repository: nothing of this package is importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, paths)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert "@@" in done.stdout, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("\n@@", 1)[1])


@pytest.fixture(scope="module")
def backend(peaked_settings) -> LocalBackend:
    return LocalBackend(peaked_settings)


def bot_and_script_printouts(backend, folder: Path, cases: dict) -> dict[str, tuple[str, dict, object, object]]:
    """case → (the bot's printout, the script's run, the request, the result): every script run once."""
    companions_of = {task_of(case): companions for case, (_, companions) in reversed(CASES.items())}
    bot_side, paths = {}, []
    for case, request in cases.items():
        task = task_of(case)
        companions = companions_of[task]  # the request in the middle of a batch, as in production
        if backend.batch_rule(task) == "same width":  # half precision: the executor batches rows of one width only
            width = padded_width(backend.prepare(task, request).longest)
            companions = [c for c in companions if padded_width(backend.prepare(task, c).longest) == width]
        position = 1 if companions else 0
        result = run(backend, task, [*companions[:1], request, *companions[1:]])[position]
        spec = backend_spec(backend, task, request, result)
        path = folder / f"{case}.py"
        path.write_text(script(spec), encoding="utf-8")
        paths.append(path)
        bot_side[case] = (as_text(result), request, result)
    runs = run_scripts(paths, folder)
    return {case: (text, runs[str(folder / f"{case}.py")], request, result) for case, (text, request, result) in bot_side.items()}


@pytest.fixture(scope="module")
def printouts(backend, tmp_path_factory) -> dict[str, tuple[str, dict, object, object]]:
    cases = {case: request for case, (request, _) in CASES.items()} | EXTRA
    return bot_and_script_printouts(backend, tmp_path_factory.mktemp("scripts"), cases)


# DTYPE=bfloat16: the scripts run each encoder text and /generate prompt alone and unpadded (the bot's
# rows are bit-identical to that: attention.py; a prompt as two copies, as the bot runs a lone row).
BF16_CASES = ["sentiment", "embed", "embed-padded", "mask", "mask-several", "ner", "ask", "ask-windows",
              "generate-greedy", "generate-sampled"]


@pytest.fixture(scope="module")
def bf16_printouts(peaked_settings, tmp_path_factory) -> dict[str, tuple[str, dict, object, object]]:
    import dataclasses

    backend = LocalBackend(dataclasses.replace(peaked_settings, dtype="bfloat16"))
    cases = {case: request for case, (request, _) in CASES.items()} | EXTRA
    return bot_and_script_printouts(backend, tmp_path_factory.mktemp("bf16"), {c: cases[c] for c in BF16_CASES})


@pytest.mark.parametrize("case", BF16_CASES)
def test_script_prints_what_the_bot_printed_in_bf16(bf16_printouts, case):
    bot_text, ran, _, _ = bf16_printouts[case]
    assert "error" not in ran, ran["error"]
    assert (problem := same_printout(ran["stdout"], bot_text)) is None, problem


@pytest.mark.parametrize("case", [*CASES, *EXTRA])
def test_script_prints_what_the_bot_printed(printouts, case):
    bot_text, ran, _, _ = printouts[case]
    assert "error" not in ran, ran["error"]
    assert (problem := same_printout(ran["stdout"], bot_text)) is None, problem


def test_the_extra_cases_exercise_what_they_name(printouts, backend):
    assert printouts["translate-pieces"][3].chunks > 1
    assert len(backend.prepare("ask", EXTRA["ask-windows"]).rows) > 1
    assert len(printouts["mask-several"][3].candidates) == 3
    assert printouts["generate-greedy"][3].tokens > 0 and printouts["generate-sampled"][3].tokens > 0


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_input_is_printed_back_unchanged(printouts, text):
    _, ran, _, _ = printouts[f"generate-hostile-{HOSTILE.index(text)}"]  # /generate prints the prompt first
    assert "error" not in ran, ran["error"]
    assert ran["stdout"].startswith(normalize_text(text))


@pytest.mark.parametrize("text", [*HOSTILE, "\x00nul", "lone \ud800 surrogate", "x" * 500 + "`" * 7 + "\n" * 3])
def test_a_literal_evaluates_to_its_text_and_cannot_close_a_code_block(text):
    assert ast.literal_eval(literal(text)) == text
    assert "`" not in literal(text) and "\n" not in literal(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_a_script_embeds_the_input_only_as_a_literal(backend, text):
    [result] = run(backend, "ner", [NerRequest(text)])
    source = script(spec_for("ner", NerRequest(text), result, "some/model"))
    tree = ast.parse(source)
    [assigned] = [node.value for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "text"]
    assert ast.literal_eval(assigned) == normalize_text(text)
    for short in (source, source[:1500]):  # a message, and the same text in a script short enough for one
        message = script_message("ner", short)
        if "file" in message:
            assert message["file"].fp.read().decode() == short
        else:
            assert message["content"].count("```") == 2 and message["content"].endswith("\n```")
            assert len(message["content"]) <= CONTENT_LIMIT


def test_try_code_prints_a_script_that_runs_on_its_own(monkeypatch, tiny_env, capsys, tmp_path):
    text = "I love using transformers library!"
    assert run_cli(monkeypatch, tiny_env, "try", "sentiment", text) == 0
    printed = capsys.readouterr().out
    assert run_cli(monkeypatch, tiny_env, "try", "sentiment", text, "--code") == 0
    source = capsys.readouterr().out
    assert source.startswith("# AutoModelForSequenceClassification: ")
    path = tmp_path / "sentiment.py"
    path.write_text(source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (problem := same_printout(done.stdout, printed.removesuffix("\n"))) is None, problem


def test_a_script_too_long_for_a_message_is_attached_as_a_file(backend):
    request = AskRequest("Who works for Google?", " ".join([LONG] * 8))
    [result] = run(backend, "ask", [request])
    source = script(spec_for("ask", request, result, "some/model"))
    message = script_message("ask", source)
    assert len(source) > CONTENT_LIMIT
    assert message["content"] == "The script for this /ask reply is attached (too long for a message)."
    assert message["file"].filename == "ask.py" and message["file"].fp.read().decode() == source


def test_a_script_pads_like_the_bot_unless_the_bot_ran_the_model_packed(peaked_settings):
    """The spec says how the backend ran the model: packed (each row as alone, unpadded), or padded
    to a multiple of 8 in half precision, as a checkpoint of a family not measured for packing is."""
    import dataclasses

    request = CASES["sentiment"][0]
    bf16 = LocalBackend(dataclasses.replace(peaked_settings, dtype="bfloat16"))
    [result] = run(bf16, "sentiment", [request])
    spec = backend_spec(bf16, "sentiment", request, result)
    assert spec.packed and spec.dtype == "bfloat16"
    assert "padding=True" not in script(spec)
    spec.packed = False
    assert 'tokenizer(text, return_tensors="pt", padding=True, pad_to_multiple_of=8)' in script(spec)
    int8 = LocalBackend(dataclasses.replace(peaked_settings, quantize="int8"))  # quantized models stay unpacked
    assert backend_spec(int8, "sentiment", request, run(int8, "sentiment", [request])[0]).packed is False


def test_a_bf16_generate_script_runs_the_prompt_as_two_copies_as_the_bot_runs_a_lone_row(peaked_settings):
    import dataclasses

    request = CASES["generate-greedy"][0]
    for dtype, expected in (("bfloat16", "tokenizer([prompt, prompt], return_tensors"),
                            ("float32", "tokenizer(prompt, return_tensors")):
        backend = LocalBackend(dataclasses.replace(peaked_settings, dtype=dtype))
        spec = backend_spec(backend, "generate", request, run(backend, "generate", [request])[0])
        assert spec.packed is (dtype == "bfloat16")  # each row computed as alone: row-by-row attention
        assert expected in script(spec) and "pads this input" not in script(spec)


def test_a_script_says_its_last_digits_can_differ_where_the_bot_computed_products_in_pieces(peaked_settings, monkeypatch):
    """On a CPU whose bf16 products change with a call's rows the bot computes them in pieces
    (products.py); a plain script cannot, and says so. Forced here: this CPU may not need pieces."""
    import dataclasses

    from bot.inference import products

    monkeypatch.setattr(products, "_moves", lambda shape, pieces: not pieces)  # plain moves, pieces hold
    request = CASES["sentiment"][0]
    bf16 = LocalBackend(dataclasses.replace(peaked_settings, dtype="bfloat16"))
    spec = backend_spec(bf16, "sentiment", request, run(bf16, "sentiment", [request])[0])
    assert spec.pieces and "computed this model's matrix products in pieces of fixed row counts" in script(spec)
    fp32 = LocalBackend(dataclasses.replace(peaked_settings, dtype="float32"))
    spec = backend_spec(fp32, "sentiment", request, run(fp32, "sentiment", [request])[0])
    assert not spec.pieces and "in pieces" not in script(spec)


def test_on_ray_a_spec_says_rows_alone_only_from_replicas_that_report_the_model_loaded():
    """Until a replica reports the task's model loaded, Ray cannot tell: the spec then says None and
    the script decides by task, as specs stored before the flag do."""
    from types import SimpleNamespace

    from bot.inference.ray_client import RayBackend

    def reported(*models):
        executor = SimpleNamespace(settings=SimpleNamespace(checkpoints={}), replicas=[{"models": list(models)}])
        return RayBackend(executor).rows_alone("sentiment"), RayBackend(executor).packed("sentiment")

    assert reported() == (None, None)
    assert reported({"task": "sentiment", "loaded": False, "rows_alone": False, "packed": False}) == (None, None)
    assert reported({"task": "sentiment", "loaded": True, "rows_alone": True, "packed": True},
                    {"task": "ner", "loaded": True, "rows_alone": False, "packed": False}) == (True, True)
    assert reported({"task": "sentiment", "loaded": True, "rows_alone": True, "packed": False}) == (True, False)
    pieces = {"task": "sentiment", "loaded": True, "rows_alone": True, "packed": True, "products": "pieces"}
    executor = SimpleNamespace(settings=SimpleNamespace(checkpoints={}), replicas=[{"models": [pieces]}])
    assert RayBackend(executor).products("sentiment") == "pieces"
    assert RayBackend(executor).products("ner") == "steady"  # nothing reported: nothing to say


def test_a_script_keeps_the_bots_precision_and_says_when_a_path_is_hidden(backend):
    [result] = run(backend, "sentiment", [CASES["sentiment"][0]])
    spec = spec_for("sentiment", CASES["sentiment"][0], result, "distilbert-base-uncased-finetuned-sst-2-english",
                    "bfloat16", "int8")
    source = script(spec)
    assert "from_pretrained(checkpoint, dtype=torch.bfloat16)" in source
    assert "quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)" in source
    compile(source, "sentiment.py", "exec")
    spec.local_path_hidden = True
    assert "# A folder on the bot's own disk, shown by name only" in script(spec)

