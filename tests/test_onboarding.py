"""From clone to a working bot (#13): a checkpoint that cannot be used ends in one line that names the
variable, what is wrong and what to do, at once; library chatter stays out of the log.

The CLI runs in a subprocess, as a newcomer runs it, from a folder without a .env, with the hub
either forbidden (HF_HUB_OFFLINE=1) or unreachable (HF_ENDPOINT at a closed loopback port).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import discord
import pytest

from bot.inference.tasks.ner import Entity, NerResult
from bot.logs import LibraryChatter
from bot.render import as_text
from tests.fake_discord import APP_ID, OTHER_USER_ID, USER_ID
from tests.test_cogs import (  # noqa: F401  the real bot on tiny models, for /help
    _every_sent_message_is_safe,
    backend,
    bot_executor,
    bot_extensions,
    bot_settings,
    env_overrides,
    shared_backend,
)
from tests.test_settings_cli import run_cli

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "HF_", "TRANSFORMERS_", "DISCORD_"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=base | env, cwd=cwd, capture_output=True,
                          stdin=subprocess.DEVNULL, text=True, timeout=300)


@pytest.fixture
def empty_hf_home(tmp_path) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf-home")}


def one_line(done: subprocess.CompletedProcess) -> str:
    """The run printed exactly one line on stderr, and no traceback or retry notice anywhere."""
    assert "Traceback" not in done.stdout + done.stderr and "Retrying" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("automodel-bot: ") and ".." not in lines[0]
    return lines[0]


def test_an_unreachable_hub_fails_at_once_with_what_to_do(tmp_path, empty_hf_home):
    env = empty_hf_home | {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "LOG_LEVEL": "WARNING"}
    done = cli(env, "try", "sentiment", "hi", cwd=tmp_path)
    assert done.returncode == 3
    line = one_line(done)
    # The hub's retry notices are chatter (DEBUG): look there to see that none happened.
    debug = cli(env | {"LOG_LEVEL": "DEBUG"}, "try", "sentiment", "hi", cwd=tmp_path)
    assert "Retrying" not in debug.stderr and debug.stderr.strip().splitlines()[-1] == line
    assert line == (
        "automodel-bot: MODEL_SENTIMENT='distilbert-base-uncased-finetuned-sst-2-english' is not in the Hugging Face "
        f"cache, and {env['HF_ENDPOINT'].removeprefix('http://')} cannot be reached. Run `automodel-bot download` "
        "where it can be, set MODEL_SENTIMENT to a local folder, or set HF_HUB_OFFLINE=1 if this machine is offline on "
        "purpose."
    )


def test_offline_on_purpose_says_so(tmp_path, empty_hf_home):
    done = cli(empty_hf_home | {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"}, "try", "ner", "hi", cwd=tmp_path)
    assert done.returncode == 3
    line = one_line(done)
    assert line.startswith("automodel-bot: MODEL_NER='dbmdz/bert-large-cased-finetuned-conll03-english' is not in the "
                           "Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it.")


def test_a_missing_folder_is_directory_not_found_with_its_full_path(tmp_path, empty_hf_home):
    env = empty_hf_home | {"HF_HUB_OFFLINE": "1", "MODEL_ASK": "./models/my-squad", "LOG_LEVEL": "WARNING"}
    done = cli(env, "try", "ask", "Who?", "Alice.", cwd=tmp_path)
    assert done.returncode == 3
    assert one_line(done) == (
        f"automodel-bot: MODEL_ASK='./models/my-squad': directory not found ({tmp_path.resolve() / 'models/my-squad'}; "
        f"a relative path starts from {tmp_path.resolve()}). Set it to a folder that holds a checkpoint."
    )


def test_a_checkpoint_of_the_wrong_kind_is_named_not_run(tmp_path, tiny_checkpoints):
    env = {"HF_HUB_OFFLINE": "1", "MODEL_SENTIMENT": str(tiny_checkpoints["generate"]), "LOG_LEVEL": "WARNING"}
    done = cli(env, "try", "sentiment", "hi", cwd=tmp_path)
    assert done.returncode == 3
    assert one_line(done) == (
        f"automodel-bot: MODEL_SENTIMENT='{tiny_checkpoints['generate']}' is a GPT2LMHeadModel checkpoint, which has no "
        "trained head for text classification. Use a checkpoint fine-tuned for that (the default is in the README)."
    )


def test_library_chatter_stays_out_of_the_log(tmp_path, tiny_env):
    """transformers' load reports and progress bars, the max_length notice of /translate and the
    tokenizer's length notice: none of them at INFO; all of them, as DEBUG, with LOG_LEVEL=DEBUG."""
    long_sentence = "word " * 300  # longer than the tiny Marian's 128 positions: the tokenizer warns
    quiet = cli(tiny_env | {"HF_HUB_OFFLINE": "1"}, "try", "translate", long_sentence, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    for noise in ("LOAD REPORT", "Loading weights", "max_new_tokens", "Token indices", "\x1b["):
        assert noise not in quiet.stderr, noise
    assert all(" INFO    bot." in line for line in quiet.stderr.strip().splitlines()), quiet.stderr
    loud = cli(tiny_env | {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "DEBUG"}, "try", "translate", long_sentence, cwd=tmp_path)
    assert loud.returncode == 0 and "Token indices sequence length" in loud.stderr and "\x1b[" not in loud.stderr
    assert "max_new_tokens" in loud.stderr or "max_length" in loud.stderr


@pytest.mark.parametrize(
    ("logger", "level", "message", "shown_at_info"),
    [
        ("transformers.modeling_utils", logging.WARNING, "\x1b[1mBertModel LOAD REPORT\x1b[0m", False),
        ("huggingface_hub.utils._http", logging.WARNING, "Retrying in 8s [Retry 4/5].", False),
        ("py.warnings", logging.WARNING, "UserWarning: something deprecated", False),
        ("discord.client", logging.WARNING, "PyNaCl is not installed, voice will NOT be supported", False),
        ("discord.client", logging.WARNING, "a real gateway problem", True),
        ("transformers.modeling_utils", logging.ERROR, "a real load error", True),
        ("bot.inference.local", logging.INFO, "Loaded gpt2 in 1.2s", True),
    ],
)
def test_chatter_is_demoted_and_problems_are_not(logger, level, message, shown_at_info):
    record = logging.LogRecord(logger, level, __file__, 1, message, None, None)
    assert LibraryChatter(logging.INFO).filter(record) is shown_at_info
    assert "\x1b[" not in record.getMessage()
    if not shown_at_info:
        assert LibraryChatter(logging.DEBUG).filter(record) and record.levelname == "DEBUG"


def test_run_at_a_terminal_without_a_token_asks_for_it_and_saves_it_privately(tmp_path):
    import pty
    import select

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "DISCORD_TOKEN")} | {"PYTHONPATH": str(ROOT)}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `automodel-bot run` at a terminal, in a folder without .env
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "bot.cli", "run"], env)
    seen, answered = b"", False
    while True:
        ready, _, _ = select.select([terminal], [], [], 60)
        assert ready, f"no output for 60 s: {seen[-2000:]!r}"
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Bot token (not shown): " in seen:
            os.write(terminal, b"MTIz.secret-token.xyz\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    assert answered, seen.decode(errors="replace")
    assert b"MTIz.secret-token.xyz" not in seen  # not echoed
    saved = tmp_path / ".env"
    assert saved.read_text().strip() == "DISCORD_TOKEN='MTIz.secret-token.xyz'"
    assert saved.stat().st_mode & 0o777 == 0o600
    # Then it goes on with that token: here Discord cannot be reached, which ends the run in one line.
    assert b"Could not reach Discord" in seen and os.waitstatus_to_exitcode(status) == 1


def test_a_configuration_error_in_a_container_waits_instead_of_restart_looping(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"} | {"PYTHONPATH": str(ROOT), "ON_CONFIG_ERROR": "wait"}
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stderr.readline()
        second = process.stderr.readline()
        assert first.startswith("automodel-bot: DISCORD_TOKEN is not set.")
        assert second.startswith("automodel-bot: stopped for good: restarting cannot fix a configuration error.")
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=2)  # still there: Docker sees no exit, so no restart
        process.terminate()  # docker stop
        assert process.wait(timeout=10) == 2
    finally:
        process.kill()
        process.communicate()
    # Without the setting (a terminal, a script, CI) the same error exits at once with code 2.
    plain = cli({"ON_CONFIG_ERROR": ""}, "run", cwd=tmp_path)
    assert plain.returncode == 2 and "stopped for good" not in plain.stderr


# -- getting the bot into a server ---------------------------------------------------------------------


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="bot.client")
    return caplog


async def test_the_invite_link_is_logged_and_shown_to_owners_in_help(info_logs, fake_discord, discord_bot):
    [line] = [r.getMessage() for r in info_logs.get_records("setup") if "Invite the bot" in r.getMessage()]
    url = line.removeprefix("Invite the bot to a server: ")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith("https://discord.com/oauth2/authorize?") and query["client_id"] == [str(APP_ID)]
    assert query["scope"] == ["bot applications.commands"]
    granted = discord.Permissions(int(query["permissions"][0]))
    assert granted == discord.Permissions(
        view_channel=True, send_messages=True, send_messages_in_threads=True, embed_links=True, attach_files=True)
    owner = await (await fake_discord.invoke_slash("help", user_id=USER_ID)).wait_final()
    fields = {f["name"]: f["value"] for f in owner.embeds[0]["fields"]}
    assert fields["Invite link (shown to owners only)"] == url
    other = await (await fake_discord.invoke_slash("help", user_id=OTHER_USER_ID)).wait_final()
    assert not any("Invite" in f["name"] for f in other.embeds[0]["fields"])


# -- the command line ------------------------------------------------------------------------------------


def test_help_is_quick_to_build_and_python_m_bot_is_the_cli(tmp_path):
    probe = "import sys, bot.cli; bot.cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr  # torch takes seconds to import; --help needs none of it
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(ROOT)}
    module = subprocess.run([sys.executable, "-m", "bot", "try", "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert module.returncode == 0 and module.stdout.startswith("usage: automodel-bot try")
    assert "generate: tokens to add (at most the MAX_NEW_TOKENS setting) (default: 50)" in " ".join(module.stdout.split())
    assert "mask: candidates per mask (at most the MAX_TOP_K setting) (default: 5)" in " ".join(module.stdout.split())


def test_try_names_the_flag_and_the_setting_that_bounds_it(monkeypatch, tiny_env, capsys):
    assert run_cli(monkeypatch, tiny_env, "try", "generate", "hi", "--max-new-tokens", "5000") == 2
    assert capsys.readouterr().err.strip() == (
        "automodel-bot: `--max-new-tokens` must be between 1 and 200 (got 5000). (MAX_NEW_TOKENS sets the upper limit.)")
    assert run_cli(monkeypatch, tiny_env, "try", "mask", "a [MASK]", "--top-k", "0") == 2
    assert "`--top-k` must be between 1 and 10 (got 0)" in capsys.readouterr().err


def test_ner_legend_is_aligned_and_json_vectors_are_one_line(monkeypatch, tiny_env, capsys):
    result = NerResult("Alice met Bartholomew", [Entity("Alice", "PER", 0.9, 0, 5), Entity("Bartholomew", "PER", 0.8, 10, 21)])
    legend = as_text(result).splitlines()[2:]
    assert legend == ["  PER   Alice         90.0%", "  PER   Bartholomew   80.0%"]  # the scores in one column
    assert run_cli(monkeypatch, tiny_env, "try", "embed", "a cat", "--json") == 0
    out = capsys.readouterr().out
    [vector_line] = [line for line in out.splitlines() if line.strip().startswith('"vector"')]
    assert len(json.loads(out)["vector"]) == 64 and vector_line.count(",") == 64  # 63 between numbers, 1 after


def test_an_unexpected_error_is_one_line_not_a_traceback(monkeypatch, tiny_env, capsys):
    from bot import cli

    def broken(args, settings):  # a fault no input of ours causes: a bug in a command
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "models", broken)
    assert run_cli(monkeypatch, tiny_env, "models") == 1
    assert capsys.readouterr().err.strip() == (
        "automodel-bot: unexpected RuntimeError: disk on fire (LOG_LEVEL=DEBUG logs the traceback)")


def test_what_the_image_and_scripts_install_is_pinned_and_the_package_keeps_ranges():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"torch", "transformers", "discord.py", "huggingface_hub", "tokenizers", "python-dotenv"} <= set(pins)
    assert "-c constraints.txt" in (ROOT / "scripts/install.sh").read_text()
    assert (ROOT / "Dockerfile").read_text().count("-c constraints.txt") == 2  # torch, then the package
    dependencies = (ROOT / "pyproject.toml").read_text().split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "==" not in dependencies and ">=" in dependencies
