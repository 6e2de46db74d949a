"""What each reply's Code button needs, kept on disk so a press still works after a restart.

One SQLite file in STATE_DIR: key (the button's custom_id suffix) → the ScriptSpec as JSON, with
the time it was stored. Entries older than CODE_KEEP_DAYS are deleted as new ones arrive; a press
on an older reply gets "too old". Several bot processes may share the file (SQLite locks it).
Blocking: callers on the event loop use asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from bot.reproduce import ScriptSpec

PRUNE_EVERY = 100  # puts between two deletions of expired entries


class CodeStore:
    def __init__(self, path: Path, keep_days: float) -> None:
        self.path = path
        self.keep_seconds = keep_days * 86400
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._puts = 0

    def put(self, spec: ScriptSpec) -> str:
        """Store `spec`; return its key (16 hex digits)."""
        key = secrets.token_hex(8)
        body = json.dumps(dataclasses.asdict(spec))
        with self._lock:
            db = self._open()
            with db:
                db.execute("INSERT INTO specs (key, stored, body) VALUES (?, ?, ?)", (key, time.time(), body))
                self._puts += 1
                if self._puts % PRUNE_EVERY == 1:
                    db.execute("DELETE FROM specs WHERE stored < ?", (time.time() - self.keep_seconds,))
        return key

    def get(self, key: str) -> ScriptSpec | None:
        """The spec stored under `key`, or None when it expired or never existed."""
        with self._lock:
            row = self._open().execute(
                "SELECT body FROM specs WHERE key = ? AND stored >= ?", (key, time.time() - self.keep_seconds)
            ).fetchone()
        return ScriptSpec(**json.loads(row[0])) if row else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> sqlite3.Connection:
        """Opened on first use, so an unwritable STATE_DIR costs the Code button, not the start."""
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS specs (key TEXT PRIMARY KEY, stored REAL NOT NULL, body TEXT NOT NULL)")
            db.execute("CREATE INDEX IF NOT EXISTS specs_stored ON specs (stored)")
            self.path.chmod(0o600)  # users' text: readable by the bot's user only
            self._db = db
        return self._db
