"""A loopback stand-in for the Hugging Face hub's HTTP API, for unmodified huggingface_hub / transformers.

    with FakeHub(repos={"fake-org/tiny-sst2": Path("...")}) as hub:
        env = hub.env(hf_home=tmp_path)  # for a subprocess: HF_ENDPOINT=hub.url, offline flags removed
        ...

Routes (what huggingface_hub 2.4.0 calls): GET /api/models/{repo}[/revision/{rev}] (repo info: its
commit sha), GET /api/models/{repo}/tree/{rev}[/{path}] (file listing), HEAD and GET
/{repo}/resolve/{rev}/{path} (X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size for LFS-style files,
Content-Length, Range → 206). No X-Xet-* headers and no xetHash in listings, so huggingface_hub takes
its plain HTTP path even with hf_xet installed. An unknown repo is a 404 with X-Error-Code: RepoNotFound
(RepositoryNotFoundError), a missing file EntryNotFound, an unknown revision RevisionNotFound. No
redirects (files are served from the resolve URL itself).

Faults: `cut(repo, path, after_bytes, times=1)` drops the connection after that many body bytes of the
file's next GET(s) (times=None: every GET); `chunk_size`/`chunk_delay` serve bodies slowly.
`requests` records every request (method, path, query, range, status).

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import time, so the simplest use is from a
subprocess with `hub.env(...)`. In the SAME process (huggingface_hub already imported with
HF_HUB_OFFLINE=1, as under tests/conftest.py) it works too, checked with snapshot_download,
hf_hub_download, HfApi().list_repo_files, the module-level list_repo_files and transformers
AutoConfig/AutoTokenizer/AutoModelForSequenceClassification.from_pretrained, after monkeypatching
exactly these attributes (FakeHub.patch_in_process does it; test_fetch has a test of it):
    huggingface_hub.constants.HF_HUB_OFFLINE = False   # is_offline_mode(), which transformers asks too;
                                                        # without it: OfflineModeIsEnabled / cache-only
    huggingface_hub.constants.ENDPOINT = hub.url        # read by each new HfApi(): snapshot_download,
                                                        # list_repo_tree (transformers' tokenizer too);
                                                        # without it those go to huggingface.co
    huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
                                                        # hf_hub_url(): every file's HEAD/GET
    huggingface_hub.hf_api.api.endpoint = hub.url       # the HfApi behind module-level functions
                                                        # (list_repo_files, model_info, ...), made at import
    transformers.utils.hub._hf_api = None               # transformers' shared HfApi, made on first use
                                                        # (even offline) with the endpoint of that moment;
                                                        # if stale, its revision look-ups go to huggingface.co
                                                        # (they fail open: loads still work, off this machine)
    huggingface_hub.constants.HF_HUB_CACHE = tmp_dir    # not needed to reach the hub: keeps the cache apart
                                                        # (transformers reads it at call time too)
Setting HF_HUB_OFFLINE / HF_ENDPOINT in os.environ has no effect once imported. Left alone:
huggingface_hub.utils._http._HUB_ORIGINS (frozen at import; used only to follow redirects, never sent here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

# Files the hub keeps in LFS (its HEAD then carries X-Linked-Etag = sha256 and X-Linked-Size).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024

_API = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/(?P<path>.*))?)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class Request(NamedTuple):
    method: str
    path: str  # as sent (percent-encoded), without the query
    query: str
    range: str | None
    status: int


class _File(NamedTuple):
    data: bytes
    oid: str  # git blob sha1
    sha256: str | None  # LFS files only

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid


class _Repo(NamedTuple):
    sha: str
    files: dict[str, _File]


class _Reply(Exception):
    """An error answer: status, the hub's X-Error-Code, and extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class FakeHub:
    def __init__(self, repos: Mapping[str, Path | str] | None = None, *, chunk_size: int = 64 * 1024,
                 chunk_delay: float = 0.0):
        self.repos = {repo: Path(folder) for repo, folder in (repos or {}).items()}
        self.chunk_size = chunk_size  # bodies are written chunk_size bytes at a time...
        self.chunk_delay = chunk_delay  # ...with this pause between chunks (slow serving)
        self.requests: list[Request] = []
        self.url = ""
        self._cuts: dict[tuple[str, str], list] = {}  # (repo, path) -> [after_bytes, times left or None]
        self._loaded: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- for tests -------------------------------------------------------------------------------
    def cut(self, repo_id: str, path: str, after_bytes: int, times: int | None = 1) -> None:
        """Drop the connection after `after_bytes` body bytes of the next `times` GETs of this file
        (None: every GET until `uncut`)."""
        with self._lock:
            self._cuts[(repo_id, path)] = [after_bytes, times]

    def uncut(self) -> None:
        with self._lock:
            self._cuts.clear()

    def gets(self, path_suffix: str = "") -> list[Request]:
        """The GET requests of files (resolve URLs) whose path ends with path_suffix."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(path_suffix)]

    def env(self, hf_home: Path | str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that talks to this hub, with its cache under hf_home."""
        env = {k: v for k, v in (os.environ if base is None else base).items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN")}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
        return env

    def patch_in_process(self, monkeypatch, cache_dir: Path | str) -> None:
        """Point this process's huggingface_hub (imported offline) and transformers at this hub; the
        attributes of the module docstring. monkeypatch (pytest's) undoes it after the test."""
        import huggingface_hub.hf_api
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", self.url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        try:
            import transformers.utils.hub
        except ImportError:
            return
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)

    # --- serving ---------------------------------------------------------------------------------
    def _repo(self, repo_id: str) -> _Repo:
        if repo_id not in self.repos:
            raise _Reply(404, "RepoNotFound", "Repository not found")
        with self._lock:
            if repo_id not in self._loaded:
                self._loaded[repo_id] = _load(self.repos[repo_id])
            return self._loaded[repo_id]

    def _revision(self, repo_id: str, rev: str) -> _Repo:
        repo = self._repo(repo_id)
        if rev not in ("main", repo.sha):
            raise _Reply(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    def _handle(self, h: _Handler, method: str) -> None:
        url = urlsplit(h.path)
        try:
            status = self._route(h, method, url.path, url.query)
        except Exception as err:  # _Reply: an answer of the hub's; anything else: a bug here, said as a 500
            reply = err if isinstance(err, _Reply) else _Reply(500, None, f"fake hub: {err!r}")
            status = reply.status
            body = json.dumps({"error": str(reply)}).encode()
            headers = {"Content-Type": "application/json", **reply.headers}
            if reply.code:
                headers.update({"X-Error-Code": reply.code, "X-Error-Message": str(reply)})
            _send(h, status, headers, body, head=method == "HEAD")
        finally:
            with self._lock:
                self.requests.append(Request(method, url.path, url.query, h.headers.get("Range"), status))

    def _route(self, h: _Handler, method: str, path: str, query: str) -> int:
        if m := _RESOLVE.match(path):
            return self._resolve(h, method, unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]))
        m = _API.match(path)
        if m is None or method != "GET":
            raise _Reply(404, None, "Not found")
        repo_id, rev = unquote(m["repo"]), unquote(m["rev"] or "main")
        repo = self._revision(repo_id, rev)
        if m["kind"] == "tree":
            recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
            body = _tree(repo, unquote(m["path"] or "").strip("/"), recursive)
        else:
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "gated": False,
                    "disabled": False, "tags": [], "siblings": [{"rfilename": p} for p in repo.files]}
        _send(h, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())
        return 200

    def _resolve(self, h: _Handler, method: str, repo_id: str, rev: str, path: str) -> int:
        repo = self._revision(repo_id, rev)
        if path not in repo.files:
            raise _Reply(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": repo.sha})
        file = repo.files[path]
        size = len(file.data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{file.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if file.sha256:
            headers.update({"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(size)})
        start, status = 0, 200
        if method == "GET" and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))):
            start, end = int(m[1]), min(int(m[2] or size - 1), size - 1)
            if start >= size:
                raise _Reply(416, None, "Range not satisfiable", {"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            body, status = file.data[start:end + 1], 206
        else:
            body = file.data
        cut_after = None
        if method == "GET":
            with self._lock:
                if (cut := self._cuts.get((repo_id, path))) is not None:
                    cut_after = cut[0]
                    if cut[1] is not None:
                        cut[1] -= 1
                        if cut[1] <= 0:
                            del self._cuts[(repo_id, path)]
        _send(h, status, headers, body, head=method == "HEAD", chunk_size=self.chunk_size,
              delay=self.chunk_delay, cut_after=cut_after)
        return status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects from the hub
    timeout = 30  # an idle keep-alive connection's thread ends after this
    hub: FakeHub

    def do_GET(self):
        self.hub._handle(self, "GET")

    def do_HEAD(self):
        self.hub._handle(self, "HEAD")

    def log_message(self, *args):  # quiet: the hub keeps its own request log
        pass


def _send(h: _Handler, status: int, headers: dict[str, str], body: bytes, *, head: bool = False,
          chunk_size: int = 1 << 20, delay: float = 0.0, cut_after: int | None = None) -> None:
    try:
        h.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(name, value)
        h.end_headers()
        if head:
            return
        sent = body if cut_after is None else body[:cut_after]
        for i in range(0, len(sent), chunk_size):
            if i and delay:
                time.sleep(delay)
            h.wfile.write(sent[i:i + chunk_size])
            h.wfile.flush()
        if cut_after is not None:  # fewer bytes than Content-Length, then EOF: an interrupted download
            h.close_connection = True
    except (BrokenPipeError, ConnectionResetError):  # the client went away
        h.close_connection = True


def _load(folder: Path) -> _Repo:
    files: dict[str, _File] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        rel = file.relative_to(folder).as_posix()
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = rel.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        files[rel] = _File(data, oid, hashlib.sha256(data).hexdigest() if lfs else None)
    sha = hashlib.sha1("".join(f"{p}\0{f.oid}\n" for p, f in files.items()).encode()).hexdigest()
    return _Repo(sha, files)


def _tree(repo: _Repo, path: str, recursive: bool) -> list[dict]:
    prefix = f"{path}/" if path else ""
    if path and not any(p.startswith(prefix) for p in repo.files):
        raise _Reply(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": repo.sha})
    entries: dict[str, dict] = {}
    for name, file in repo.files.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            entry = {"type": "file", "oid": file.oid, "size": len(file.data), "path": name}
            if file.sha256:
                entry["lfs"] = {"oid": file.sha256, "size": len(file.data), "pointerSize": 134}
            entries[name] = entry
    return list(entries.values())


if __name__ == "__main__":  # python -m tests.fake_hub org/name=/path/to/folder ...  (serves until Ctrl-C)
    import sys

    with FakeHub(dict(arg.split("=", 1) for arg in sys.argv[1:])) as served:
        print(f"HF_ENDPOINT={served.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
