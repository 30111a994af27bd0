"""The channel's private, persistent state: one SQLite file per store directory (0700/0600).

What survives a restart (so a restart neither replays nor loses messages, and never posts twice):
sync token and joined rooms (``kv``), handled event ids (``seen``, bounded), idempotency keys of
sent messages (``sent``), per-room sender allow-lists (``allow``); on the control side also the
agents' account credentials (``accounts``) and the rooms hiclaw manages (``rooms``).

SQLite in WAL mode commits each write; a killed process loses nothing that was committed.
Calls are synchronous: each is well under a millisecond.
"""
from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sent (idem_key TEXT PRIMARY KEY, event_id TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS allow (room_id TEXT PRIMARY KEY, senders TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (key TEXT PRIMARY KEY, room_id TEXT NOT NULL, data TEXT NOT NULL);
"""
SEEN_KEEP = 20000  # handled event ids remembered (far more than one sync can replay)


class ChannelStore:
    """Persistent state in ``<directory>/channel.sqlite3``; ``directory=None`` keeps it in memory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is None:
            self._db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            path = directory / "channel.sqlite3"
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # never world-readable, even briefly
            os.close(fd)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._seen_added = 0

    def close(self) -> None:
        self._db.close()

    # -- key/value ------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- handled events -------------------------------------------------------------------------
    def seen(self, event_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE event_id = ?", (event_id,)).fetchone() is not None

    def mark_seen(self, event_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO seen (event_id, at) VALUES (?, ?)", (event_id, time.time()))
        self._seen_added += 1
        if self._seen_added >= 1000:
            self._seen_added = 0
            self._db.execute(
                "DELETE FROM seen WHERE event_id NOT IN (SELECT event_id FROM seen ORDER BY at DESC LIMIT ?)",
                (SEEN_KEEP,),
            )

    # -- sent messages ---------------------------------------------------------------------------
    def sent_event(self, idem_key: str) -> str | None:
        row = self._db.execute("SELECT event_id FROM sent WHERE idem_key = ?", (idem_key,)).fetchone()
        return row[0] if row else None

    def record_sent(self, idem_key: str, event_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO sent (idem_key, event_id, at) VALUES (?, ?, ?)", (idem_key, event_id, time.time())
        )

    # -- sender allow-lists ----------------------------------------------------------------------
    def allowed_senders(self, room_id: str) -> builtins.set[str] | None:
        row = self._db.execute("SELECT senders FROM allow WHERE room_id = ?", (room_id,)).fetchone()
        return set(json.loads(row[0])) if row else None

    def set_allowed_senders(self, room_id: str, senders: builtins.set[str]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO allow (room_id, senders) VALUES (?, ?)", (room_id, json.dumps(sorted(senders)))
        )

    # -- accounts (control side) -------------------------------------------------------------------
    def account(self, name: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT data FROM accounts WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def save_account(self, name: str, data: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO accounts (name, data) VALUES (?, ?)", (name, json.dumps(data)))

    def accounts(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(data) for name, data in self._db.execute("SELECT name, data FROM accounts")}

    # -- managed rooms (control side) --------------------------------------------------------------
    def room(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT room_id, data FROM rooms WHERE key = ?", (key,)).fetchone()
        return {"room_id": row[0], **json.loads(row[1])} if row else None

    def save_room(self, key: str, room_id: str, data: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rooms (key, room_id, data) VALUES (?, ?, ?)", (key, room_id, json.dumps(data))
        )

    def rooms(self) -> dict[str, dict[str, Any]]:
        return {key: {"room_id": rid, **json.loads(data)} for key, rid, data in
                self._db.execute("SELECT key, room_id, data FROM rooms ORDER BY key")}
