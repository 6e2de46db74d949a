"""bot.inference.fetch against tests/fake_hub.py: the real huggingface_hub / transformers download path.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import time (this process has HF_HUB_OFFLINE=1
from conftest), so downloads run in subprocesses with FakeHub.env(): HF_ENDPOINT at the fake hub, a
fresh HF_HOME, the offline flags removed. Each script prints one JSON line.

What huggingface_hub 2.4.0 does with an interrupted download (http_get): the same call retries after
1 s, up to 5 times in a row without progress, sending Range from the bytes it has written. It writes
in 10 MiB chunks (DOWNLOAD_CHUNK_SIZE), so a cut inside the first 10 MiB restarts the file from byte
0 (no Range), a later cut resumes at the last 10 MiB boundary (206). When the retries run out, the
httpx2.RemoteProtocolError propagates, the partial temporary file is deleted, and the next call
starts that file over. Progress reaches the callback at the same 10 MiB granularity.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub

ROOT = Path(__file__).resolve().parent.parent
REPO = "fake-org/tiny-sst2"
BIG = "fake-org/big"  # one file over 10 MiB: progress (and resume) inside a file
MIXED = "fake-org/mixed"  # tiny-sst2 plus .bin and other frameworks' weights
MiB = 1024 * 1024

FETCH = """
    import json, sys, time
    from bot.inference.fetch import fetch, is_cached

    repo = sys.argv[1]
    out = {"cached_before": is_cached(repo), "reports": []}
    t0 = time.monotonic()
    try:
        out["path"] = fetch(repo, lambda done, total: out["reports"].append([time.monotonic() - t0, done, total]))
    except Exception as err:
        out["error"] = [type(err).__module__, type(err).__name__, str(err)]
    out["seconds"] = time.monotonic() - t0
    out["cached_after"] = is_cached(repo)
    if "path" in out and "--load" in sys.argv:
        from transformers import AutoModelForSequenceClassification
        out["loaded"] = type(AutoModelForSequenceClassification.from_pretrained(out["path"])).__name__
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big-repo")
    (folder / "config.json").write_text("{}")
    (folder / "blob.safetensors").write_bytes(os.urandom(32 * MiB))
    return folder


@pytest.fixture(scope="module")
def mixed_repo(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny checkpoint plus weights this bot never reads."""
    folder = tmp_path_factory.mktemp("mixed-repo")
    for file in tiny_checkpoints["sentiment"].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "onnx/model.onnx"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not for this bot")
    return folder


@pytest.fixture
def hub(tiny_checkpoints, big_repo, mixed_repo):
    with FakeHub({REPO: tiny_checkpoints["sentiment"], BIG: big_repo, MIXED: mixed_repo}) as served:
        yield served


def run(hub: FakeHub, home: Path, script: str, *args: str, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """Run a script against the fake hub (HF_HOME=home); return its JSON line and its stderr."""
    env = {**hub.env(home), "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def same_files(snapshot: str, original: Path) -> None:
    expected = {p.relative_to(original).as_posix(): p for p in original.rglob("*") if p.is_file()}
    got = {p.relative_to(snapshot).as_posix(): p for p in Path(snapshot).rglob("*") if p.is_file()}
    assert sorted(got) == sorted(expected)
    for name, path in expected.items():
        assert hashlib.sha256(got[name].read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest(), name


def check_reports(reports: list, total: int) -> None:
    """Never decreasing, and ending with done == total."""
    dones, totals = [r[1] for r in reports], [r[2] for r in reports]
    assert dones == sorted(dones) and totals == sorted(totals), reports
    assert all(done <= t for done, t in zip(dones, totals)), reports
    assert reports[-1][1:] == [total, total], reports


def test_fetch_downloads_every_file_with_progress(hub, tiny_checkpoints, tmp_path):
    original = tiny_checkpoints["sentiment"]
    hub.chunk_size, hub.chunk_delay = 16 * 1024, 0.02  # ~1 s for the weights
    out, stderr = run(hub, tmp_path, FETCH, REPO, "--load")
    assert "error" not in out, out
    same_files(out["path"], original)
    check_reports(out["reports"], sum(p.stat().st_size for p in original.iterdir()))
    assert any(done < t for _, done, t in out["reports"])  # one before the end: per file here (< 10 MiB)
    assert out["loaded"] == "DistilBertForSequenceClassification"
    assert len(hub.gets()) == len(list(original.iterdir()))  # each file once
    assert not any(bar in stderr for bar in ("Fetching", "Downloading", "Reconstruct"))  # no bar on the terminal


def test_fetch_skips_other_frameworks_and_bin_beside_safetensors(hub, tiny_checkpoints, tmp_path):
    out, _ = run(hub, tmp_path, FETCH, MIXED)
    assert "error" not in out, out
    same_files(out["path"], tiny_checkpoints["sentiment"])
    assert not [r for r in hub.requests if r.path.endswith((".bin", ".h5", ".msgpack", ".onnx"))]


def test_progress_inside_a_large_file(hub, big_repo, tmp_path):
    hub.chunk_size, hub.chunk_delay = MiB, 0.06  # 32 MiB in ~2 s
    out, _ = run(hub, tmp_path, FETCH, BIG)
    assert "error" not in out, out
    same_files(out["path"], big_repo)
    total = 32 * MiB + 2
    check_reports(out["reports"], total)
    inside = [r for r in out["reports"] if 10 * MiB <= r[1] < total]
    assert len(inside) >= 2, out["reports"]
    times = [r[0] for r in out["reports"][:-1]]  # the final report comes whenever the download ends
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:])), out["reports"]  # throttled


def test_from_pretrained_against_the_fake_hub(hub, tmp_path):
    script = """
        import json
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        tok = AutoTokenizer.from_pretrained("fake-org/tiny-sst2")
        model = AutoModelForSequenceClassification.from_pretrained("fake-org/tiny-sst2")
        logits = model(**tok(["a fine day"], return_tensors="pt")).logits
        print(json.dumps({"shape": list(logits.shape), "labels": model.config.num_labels}))
    """
    out, _ = run(hub, tmp_path, script)
    assert out["shape"] == [1, out["labels"]]
    seen = {(r.method, r.path) for r in hub.requests}
    assert ("GET", "/api/models/fake-org/tiny-sst2") in seen  # transformers resolves main to a commit first
    assert any(m == "HEAD" and p.endswith("/config.json") for m, p in seen)
    assert len(hub.gets("/model.safetensors")) == 1 and len(hub.gets("/tokenizer.json")) == 1
    assert (tmp_path / "hub" / "models--fake-org--tiny-sst2").is_dir()  # in HF_HOME's cache


def test_cut_in_first_10_mib_restarts_the_file_in_the_same_call(hub, tiny_checkpoints, tmp_path):
    hub.cut(REPO, "model.safetensors", after_bytes=300_000)
    out, stderr = run(hub, tmp_path, FETCH, REPO)
    assert "error" not in out, out
    same_files(out["path"], tiny_checkpoints["sentiment"])
    gets = hub.gets("/model.safetensors")
    assert [(g.range, g.status) for g in gets] == [(None, 200), (None, 200)]  # again from byte 0
    assert "Trying to resume download" in stderr


def test_cut_after_10_mib_resumes_with_range(hub, big_repo, tmp_path):
    hub.cut(BIG, "blob.safetensors", after_bytes=15 * MiB)
    out, _ = run(hub, tmp_path, FETCH, BIG)
    assert "error" not in out, out
    same_files(out["path"], big_repo)
    check_reports(out["reports"], 32 * MiB + 2)
    gets = hub.gets("/blob.safetensors")
    assert [(g.range, g.status) for g in gets] == [(None, 200), (f"bytes={10 * MiB}-", 206)]


def test_download_that_keeps_failing_raises_and_the_next_fetch_completes(hub, tiny_checkpoints, tmp_path):
    hub.cut(REPO, "model.safetensors", after_bytes=300_000, times=None)
    out, _ = run(hub, tmp_path, FETCH, REPO)
    assert out["error"][:2] == ["httpx2", "RemoteProtocolError"], out
    assert len(hub.gets("/model.safetensors")) == 6  # the first try and 5 retries
    assert not out["cached_after"]
    assert not list(tmp_path.rglob("*.incomplete"))  # the partial file is not kept

    hub.uncut()
    hub.requests.clear()
    out, _ = run(hub, tmp_path, FETCH, REPO)
    assert "error" not in out, out
    same_files(out["path"], tiny_checkpoints["sentiment"])
    assert [(g.path.rsplit("/", 1)[-1], g.range) for g in hub.gets()] == [("model.safetensors", None)]
    assert out["cached_after"]


def test_wrong_repo_fails_at_once(hub, tmp_path):
    script = """
        import json, time
        from bot.inference.fetch import fetch
        out = {}
        t0 = time.monotonic()
        try:
            fetch("fake-org/no-such-model")
        except Exception as err:
            out["fetch"] = [type(err).__name__, time.monotonic() - t0]
        from transformers import AutoModelForSequenceClassification
        t0 = time.monotonic()
        try:
            AutoModelForSequenceClassification.from_pretrained("fake-org/no-such-either")
        except Exception as err:
            out["transformers"] = [type(err).__name__, isinstance(err, OSError), time.monotonic() - t0]
        print(json.dumps(out))
    """
    out, _ = run(hub, tmp_path, script)
    # No timing asserts (the suite has none): the requests below show that nothing waited to retry.
    assert out["fetch"][0] == "RepositoryNotFoundError", out
    assert out["transformers"][:2] == ["OSError", True], out
    asked = [(r.method, r.path) for r in hub.requests if "no-such-model" in r.path]
    assert asked == [("GET", "/api/models/fake-org/no-such-model/tree/main")]  # the listing, once
    # transformers looks the revision up once per layer (AutoModel, AutoConfig, get_config_dict: each
    # fails open), then HEADs config.json once; no backoff retries (those would wait 1 + 2 + 4 + 8 + 8 s).
    asked = [(r.method, r.path, r.status) for r in hub.requests if "no-such-either" in r.path]
    assert asked.count(("HEAD", "/fake-org/no-such-either/resolve/main/config.json", 404)) == 1, asked
    assert all(status == 404 for *_, status in asked) and len(asked) <= 4, asked


def test_is_cached(hub, tmp_path):
    out, _ = run(hub, tmp_path, FETCH, REPO)
    assert (out["cached_before"], out["cached_after"]) == (False, True)
    assert "path" in out

    hub.requests.clear()  # now offline: decided from the cache alone; and a missing file is noticed
    script = """
        import json, os, sys
        from bot.inference.fetch import is_cached
        before = is_cached(sys.argv[1])
        os.remove(os.path.join(sys.argv[2], "model.safetensors"))
        print(json.dumps([before, is_cached(sys.argv[1]), is_cached("fake-org/never-fetched")]))
    """
    flags, _ = run(hub, tmp_path, script, REPO, out["path"], env={"HF_HUB_OFFLINE": "1"})
    assert flags == [True, False, False]
    assert hub.requests == []


def test_in_process_with_monkeypatched_constants(hub, tiny_checkpoints, tmp_path, monkeypatch):
    """FakeHub.patch_in_process (the attributes listed in tests/fake_hub.py) is enough in a process
    that imported huggingface_hub offline: this one."""
    import huggingface_hub
    import transformers.utils.hub
    from huggingface_hub import constants
    from transformers import AutoConfig

    from bot.inference.fetch import fetch

    assert constants.HF_HUB_OFFLINE  # from conftest
    transformers.utils.hub.hf_api()  # as after any earlier from_pretrained: made with huggingface.co
    hub.patch_in_process(monkeypatch, tmp_path / "hub")

    assert "config.json" in huggingface_hub.list_repo_files(REPO)
    reports = []
    path = fetch(REPO, lambda done, total: reports.append((done, total)))
    same_files(path, tiny_checkpoints["sentiment"])
    assert reports[-1][0] == reports[-1][1] > 0
    assert Path(path).resolve().is_relative_to(tmp_path.resolve())

    hub.requests.clear()
    assert AutoConfig.from_pretrained(REPO, force_download=True).num_labels == 2
    assert ("GET", "/api/models/fake-org/tiny-sst2") in [(r.method, r.path) for r in hub.requests]


def test_each_tenth_reports_once_per_tenth_of_the_total():
    from bot.inference.fetch import each_tenth

    reported: list[tuple[int, int]] = []
    progress = each_tenth(lambda done, total: reported.append((done, total)))
    progress(0, 0)  # nothing known yet: nothing to say
    for done in range(0, 1001, 7):
        progress(done, 1000)
    progress(1000, 1000)
    assert [10 * done // total for done, total in reported] == list(range(11))
