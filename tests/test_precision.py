"""DTYPE=auto (#12): bf16 for the encoder tasks on a CPU with native bf16, fp32 for generation and on
other CPUs, said in the start-up log and /models. Real tiny models, loaded through the Auto classes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bot.inference import device as device_module
from bot.inference import local as local_module
from bot.inference.device import CPU_BF16_TASKS, native_bf16, resolve_dtypes
from bot.inference.local import LocalBackend
from bot.inference.tasks import TASKS
from bot.settings import load_settings

EPYC = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 avx512_vbmi2\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_tile amx_int8 amx_bf16 avx512_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n"
SKYLAKE = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cpuinfo", "feature"),
    [(EPYC, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (GRAVITON3, "bf16"), (SKYLAKE, None), ("", None)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, feature):
    assert native_bf16(cpuinfo) == feature


def test_auto_on_a_bf16_cpu_keeps_generation_in_float32():
    dtypes, reason = resolve_dtypes("auto", CPU, tuple(TASKS), "avx512_bf16")
    assert {t for t, d in dtypes.items() if d == torch.bfloat16} == set(CPU_BF16_TASKS)
    assert dtypes["generate"] == dtypes["translate"] == torch.float32
    assert "avx512_bf16" in reason and "/generate" in reason.split("float32 for")[1]


def test_auto_on_other_cpus_and_an_explicit_dtype_are_one_dtype_for_all():
    dtypes, reason = resolve_dtypes("auto", CPU, tuple(TASKS), None)
    assert set(dtypes.values()) == {torch.float32} and "no native bf16" in reason
    dtypes, reason = resolve_dtypes("float32", CPU, tuple(TASKS), "avx512_bf16")
    assert set(dtypes.values()) == {torch.float32} and reason.startswith("DTYPE=float32")
    dtypes, _ = resolve_dtypes("bfloat16", CPU, tuple(TASKS), None)
    assert set(dtypes.values()) == {torch.bfloat16}


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This machine as a CPU with native bf16, whatever it really has (the choice, not the speed, is tested)."""
    monkeypatch.setattr(local_module, "native_bf16", lambda: "avx512_bf16")


def test_models_load_in_the_chosen_dtype_and_say_why(tiny_env, bf16_cpu):
    backend = LocalBackend(load_settings(tiny_env))
    for task in ("sentiment", "generate"):
        loaded = backend.acquire(task)
        try:
            assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16 if task in CPU_BF16_TASKS else torch.float32}
        finally:
            backend.release(loaded)
    rows = {row["task"]: row for row in backend.describe()}
    assert rows["sentiment"]["dtype"] == "bfloat16" and rows["generate"]["dtype"] == "float32"
    assert rows["sentiment"]["dtype_reason"] == backend.dtype_reason
    assert backend.precision("ner") == ("float32", "none")
    # /embed and /mask share one bert (the same checkpoint): one load, in /mask's exact dtype, and said so.
    assert backend.precision("embed") == ("float32", "none")
    assert "/embed float32 too: it shares /mask's model" in backend.dtype_reason


def test_embed_on_its_own_or_a_bf16_tasks_checkpoint_runs_in_bf16(tiny_env, tiny_checkpoints, peaked_checkpoints, bf16_cpu):
    """/embed on a checkpoint of its own, or riding on /sentiment's, runs in bf16; on /generate's, float32."""
    alone = LocalBackend(load_settings(dict(tiny_env, MODEL_EMBED=str(peaked_checkpoints["embed"]))))
    assert alone.precision("embed") == ("bfloat16", "none") and "shares" not in alone.dtype_reason
    on_sentiment = LocalBackend(load_settings(dict(tiny_env, MODEL_EMBED=str(tiny_checkpoints["sentiment"]))))
    assert on_sentiment.precision("embed") == ("bfloat16", "none") and "shares" not in on_sentiment.dtype_reason
    on_generate = LocalBackend(load_settings(dict(tiny_env, MODEL_EMBED=str(tiny_checkpoints["generate"]))))
    assert on_generate.precision("embed") == on_generate.precision("generate") == ("float32", "none")


def test_a_load_never_switches_torchs_default_dtype(tiny_env, bf16_cpu, monkeypatch):
    """from_pretrained(dtype=bf16) sets torch's process-wide default dtype while it loads, and a task
    running meanwhile in another thread would create its tensors in bf16 (it broke /translate's beam
    search). Models load in float32 and are cast after."""
    seen = []
    set_default_dtype = torch.set_default_dtype
    monkeypatch.setattr(torch, "set_default_dtype", lambda d: (seen.append(d), set_default_dtype(d)))
    backend = LocalBackend(load_settings(tiny_env))
    backend.release(backend.acquire("sentiment"))
    assert backend.precision("sentiment") == ("bfloat16", "none")
    assert seen and set(seen) == {torch.float32}


def test_auto_with_int8_keeps_float32_around_the_int8_layers(tiny_env, bf16_cpu):
    backend = LocalBackend(load_settings(dict(tiny_env, QUANTIZE="int8")))
    assert backend.precision("sentiment") == ("float32", "int8") and "QUANTIZE=int8" in backend.dtype_reason


def test_half_precision_keeps_the_modules_a_class_keeps_in_float32():
    from bot.inference.local import cast

    model = torch.nn.Sequential()
    model.add_module("wi", torch.nn.Linear(4, 4))
    model.add_module("wo", torch.nn.Linear(4, 4))
    model._keep_in_fp32_modules = ["wo"]  # T5's, for float16
    half = cast(model, CPU, torch.float16)
    assert half.wi.weight.dtype == torch.float16 and half.wo.weight.dtype == torch.float32
    assert cast(model, CPU, torch.bfloat16).wo.weight.dtype == torch.bfloat16  # only strict ones stay for bf16


def test_bf16_answers_stay_close_to_float32(tiny_env, peaked_checkpoints):
    """Sanity of the bf16 path on the peaked models: same labels, scores within bf16's rounding."""
    from tests.answers import first_requests, run

    env = dict(tiny_env, **{f"MODEL_{t.upper()}": str(p) for t, p in peaked_checkpoints.items()})
    exact, fast = (LocalBackend(load_settings(dict(env, DTYPE=d))) for d in ("float32", "bfloat16"))
    requests = first_requests()
    sentiment = [run(b, "sentiment", [requests["sentiment"]])[0] for b in (exact, fast)]
    assert sentiment[0].label == sentiment[1].label
    assert sentiment[0].score == pytest.approx(sentiment[1].score, abs=0.02)
    embeds = [run(b, "embed", [requests["embed"]])[0] for b in (exact, fast)]
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(embeds[0].vector), torch.tensor(embeds[1].vector), dim=0)
    assert cosine > 0.99
    assert dataclasses.asdict(sentiment[1]) != dataclasses.asdict(sentiment[0])  # bf16 really ran: scores moved


def test_device_module_names_dtypes_as_settings_spell_them():
    assert device_module.dtype_name(torch.bfloat16) == "bfloat16"
