"""The gateway's SQLite database (WAL): consumers and their hashed tokens, project budgets, ledger,
and the audit of egress calls (every table ``IF NOT EXISTS``: opening an older file adds what it lacks).

The CLI and the running server open the same file. The server keeps consumers and projects in
memory and reloads them whenever another connection has committed (``PRAGMA data_version``
changes), so ``hiclaw gateway token revoke`` takes effect on the very next request without a
round-trip per request. Only one gateway process should serve a database at a time.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hiclaw.errors import InvalidInputError, NotFoundError

TOKEN_PREFIX = "hc-"  # noqa: S105 - the public prefix of tokens, not a secret
TOKEN_BYTES = 32
CONSUMER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    models TEXT,                      -- JSON list of aliases, NULL = every alias
    budget_usd REAL,                  -- NULL = no budget
    spent_usd REAL NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY,
    budget_usd REAL,
    spent_usd REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    consumer TEXT NOT NULL,
    task TEXT,
    project TEXT,
    model TEXT,                       -- the alias that answered (after any fallback)
    upstream_model TEXT,              -- the provider model string
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    status INTEGER NOT NULL,          -- HTTP status returned to the caller
    error TEXT,                       -- error code when status != 200
    stream INTEGER NOT NULL DEFAULT 0
);
-- What the control plane has assigned each consumer it manages: {task id: project id or null}.
-- A consumer with a row here is tagged by the gateway from it, never by its own headers.
CREATE TABLE IF NOT EXISTS assignments (
    consumer TEXT PRIMARY KEY,
    tasks TEXT NOT NULL               -- JSON object
);
-- One row per call of a credentialed HTTP route (egress.py), refused or not; never the query.
CREATE TABLE IF NOT EXISTS egress_calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    consumer TEXT NOT NULL,
    task TEXT,
    project TEXT,
    route TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    request_bytes INTEGER NOT NULL DEFAULT 0,
    response_bytes INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS egress_calls_ts ON egress_calls(ts);
-- One row per MCP request of a consumer (mcp.py): tool calls, refused or not, and listings.
CREATE TABLE IF NOT EXISTS mcp_calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    consumer TEXT NOT NULL,
    task TEXT,
    project TEXT,
    server TEXT NOT NULL,
    method TEXT NOT NULL,             -- tools/call, tools/list, ...
    tool TEXT,
    outcome TEXT NOT NULL,            -- ok | tool_error | refused | failed
    error TEXT,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS mcp_calls_ts ON mcp_calls(ts);
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger(ts);
CREATE INDEX IF NOT EXISTS ledger_consumer ON ledger(consumer);
-- Spending follows from the ledger inside the same statement: one INSERT per call is atomic.
CREATE TRIGGER IF NOT EXISTS ledger_spends AFTER INSERT ON ledger WHEN NEW.cost_usd > 0 BEGIN
    UPDATE consumers SET spent_usd = spent_usd + NEW.cost_usd WHERE name = NEW.consumer;
    INSERT INTO projects(name, spent_usd) SELECT NEW.project, NEW.cost_usd WHERE NEW.project IS NOT NULL
        ON CONFLICT(name) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd;
END;
"""

USAGE_DIMENSIONS = ("consumer", "task", "project", "model", "upstream_model", "status")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def check_consumer_name(name: str) -> str:
    if not isinstance(name, str) or not CONSUMER_NAME.match(name):
        raise InvalidInputError(f"consumer name {name!r} is invalid",
                                hint="use 1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


@dataclass
class Consumer:
    name: str
    token_hash: str
    models: tuple[str, ...] | None
    budget_usd: float | None
    spent_usd: float
    created_at: str
    revoked_at: str | None

    def allows(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "models": list(self.models) if self.models is not None else None,
                "budget_usd": self.budget_usd, "spent_usd": round(self.spent_usd, 9), "created": self.created_at,
                "revoked": self.revoked_at is not None, "revoked_at": self.revoked_at}


@dataclass
class Project:
    name: str
    budget_usd: float | None
    spent_usd: float


@dataclass(frozen=True)
class LedgerEntry:
    consumer: str
    task: str | None
    project: str | None
    model: str | None
    upstream_model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    status: int
    error: str | None = None
    stream: bool = False


@dataclass(frozen=True)
class BudgetCrossing:
    """Spending crossed the warning ratio of a budget with this call."""

    scope: str  # "consumer" | "project"
    name: str
    spent_usd: float
    budget_usd: float


class GatewayStore:
    """All persistent gateway state. Methods are synchronous and fast (one event-loop thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Token hashes and who spent what: the control plane's business only. 0600 before SQLite
        # opens it (never readable, even briefly, whatever the umask; -wal/-shm get its mode).
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        self._db.executescript(SCHEMA)
        self._by_hash: dict[str, Consumer] = {}
        self._by_name: dict[str, Consumer] = {}
        self._projects: dict[str, Project] = {}
        self._assignments: dict[str, dict[str, str | None]] = {}
        self._version: int | None = None
        self._checkpointer: _Checkpointer | None = None

    def close(self) -> None:
        self.stop_background_checkpoints()
        self._db.close()

    # ------------------------------------------------------------------ checkpoints

    def start_background_checkpoints(self, interval: float = 1.0) -> None:
        """For the serving process: commits stay on the event loop (no fsync with synchronous=NORMAL),
        while WAL checkpoints — the only fsyncs — run in a thread instead of stalling a request."""
        if self._checkpointer is not None:
            return
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = _Checkpointer(self.path, interval)

    def stop_background_checkpoints(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
            self._db.execute("PRAGMA wal_autocheckpoint=1000")

    # ------------------------------------------------------------------ cache

    def _refresh(self) -> None:
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        consumers = [Consumer(r[0], r[1], tuple(json.loads(r[2])) if r[2] is not None else None, r[3], r[4], r[5], r[6])
                     for r in self._db.execute("SELECT name, token_hash, models, budget_usd, spent_usd, created_at, "
                                               "revoked_at FROM consumers")]
        self._by_hash = {c.token_hash: c for c in consumers}
        self._by_name = {c.name: c for c in consumers}
        self._projects = {r[0]: Project(r[0], r[1], r[2]) for r in self._db.execute("SELECT name, budget_usd, spent_usd FROM projects")}
        self._assignments = {r[0]: json.loads(r[1]) for r in self._db.execute("SELECT consumer, tasks FROM assignments")}
        self._version = version

    def _changed(self) -> None:
        # data_version only moves for other connections' commits; force a reload after our own.
        self._version = None

    # ------------------------------------------------------------------ consumers

    def authenticate(self, token: str) -> Consumer | None:
        """The consumer owning ``token`` (revoked ones included: the caller tells them apart)."""
        self._refresh()
        digest = hash_token(token)
        consumer = self._by_hash.get(digest)
        # The dictionary lookup finds the candidate; the final comparison is constant-time.
        if consumer is None or not hmac.compare_digest(consumer.token_hash, digest):
            return None
        return consumer

    def mint(self, name: str, *, models: list[str] | None, budget_usd: float | None) -> str:
        check_consumer_name(name)
        if budget_usd is not None and budget_usd < 0:
            raise InvalidInputError(f"budget for {name!r} is negative", hint="give a budget >= 0 USD")
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        models_json = json.dumps(sorted(set(models))) if models is not None else None
        # Spent is kept across re-mints: a new token for the same agent does not reset its spending.
        self._db.execute(
            "INSERT INTO consumers(name, token_hash, models, budget_usd, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET token_hash=excluded.token_hash, models=excluded.models, "
            "budget_usd=excluded.budget_usd, created_at=excluded.created_at, revoked_at=NULL",
            (name, hash_token(token), models_json, budget_usd, _now_iso()),
        )
        self._changed()
        return token

    def revoke(self, name: str) -> None:
        cursor = self._db.execute("UPDATE consumers SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (_now_iso(), name))
        self._changed()
        if cursor.rowcount == 0 and self.consumer(name) is None:
            raise NotFoundError(f"no consumer named {name!r}", hint="see `hiclaw gateway token list`")

    def consumer(self, name: str) -> Consumer | None:
        self._refresh()
        return self._by_name.get(name)

    def consumers(self) -> list[Consumer]:
        self._refresh()
        return sorted(self._by_name.values(), key=lambda c: c.name)

    # ------------------------------------------------------------------ assignments

    def set_assignments(self, consumer: str, tasks: dict[str, str | None]) -> None:
        """Replace what consumer ``consumer`` works on (``{task id: project id or None}``)."""
        check_consumer_name(consumer)
        for task, project in tasks.items():
            if not isinstance(task, str) or not task or not (project is None or (isinstance(project, str) and project)):
                raise InvalidInputError(f"invalid assignment {task!r} -> {project!r} for {consumer!r}",
                                        hint="task ids and project ids are non-empty strings (project: or None)")
        self._db.execute("INSERT INTO assignments(consumer, tasks) VALUES (?, ?) "
                         "ON CONFLICT(consumer) DO UPDATE SET tasks=excluded.tasks",
                         (consumer, json.dumps(dict(sorted(tasks.items())))))
        self._changed()

    def assignments(self, consumer: str) -> dict[str, str | None] | None:
        """What the control plane assigned ``consumer``; ``None`` if it manages no assignments for it."""
        self._refresh()
        return self._assignments.get(consumer)

    # ------------------------------------------------------------------ budgets

    def project(self, name: str) -> Project | None:
        self._refresh()
        return self._projects.get(name)

    def set_budget(self, *, consumer: str | None = None, project: str | None = None, usd: float | None) -> None:
        if (consumer is None) == (project is None):
            raise InvalidInputError("set a budget for exactly one consumer or one project")
        if usd is not None and usd < 0:
            raise InvalidInputError("a budget cannot be negative", hint="give USD >= 0")
        if consumer is not None:
            cursor = self._db.execute("UPDATE consumers SET budget_usd=? WHERE name=?", (usd, consumer))
            if cursor.rowcount == 0:
                raise NotFoundError(f"no consumer named {consumer!r}", hint="mint its token first")
        else:
            self._db.execute("INSERT INTO projects(name, budget_usd) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET budget_usd=excluded.budget_usd", (project, usd))
        self._changed()

    def budgets(self) -> list[dict[str, Any]]:
        self._refresh()
        rows = [{"scope": "consumer", "name": c.name, "budget_usd": c.budget_usd, "spent_usd": round(c.spent_usd, 9)}
                for c in self._by_name.values() if c.budget_usd is not None]
        rows += [{"scope": "project", "name": p.name, "budget_usd": p.budget_usd, "spent_usd": round(p.spent_usd, 9)}
                 for p in self._projects.values() if p.budget_usd is not None]
        return sorted(rows, key=lambda r: (r["scope"], r["name"]))

    # ------------------------------------------------------------------ ledger

    def record(self, entry: LedgerEntry, *, warn_ratio: float) -> list[BudgetCrossing]:
        """Append ``entry``; the ``ledger_spends`` trigger adds its cost to the consumer's and the
        project's spending in the same statement. Returns the budgets this call took past ``warn_ratio``."""
        self._db.execute(
            "INSERT INTO ledger(ts, consumer, task, project, model, upstream_model, prompt_tokens, completion_tokens,"
            " cost_usd, latency_ms, status, error, stream) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (time.time(), entry.consumer, entry.task, entry.project, entry.model, entry.upstream_model,
             entry.prompt_tokens, entry.completion_tokens, entry.cost_usd, round(entry.latency_ms, 3),
             entry.status, entry.error, int(entry.stream)))
        crossings: list[BudgetCrossing] = []
        if entry.cost_usd:  # mirror the trigger in the cache
            consumer = self._by_name.get(entry.consumer)
            if consumer is not None:
                crossings += _crossed("consumer", consumer.name, consumer, entry.cost_usd, warn_ratio)
            if entry.project is not None:
                project = self._projects.setdefault(entry.project, Project(entry.project, None, 0.0))
                crossings += _crossed("project", project.name, project, entry.cost_usd, warn_ratio)
        return crossings

    def usage(self, by: list[str], since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Totals grouped by ``by`` (any of :data:`USAGE_DIMENSIONS`), most expensive first, of the
        calls at or after ``since`` and before ``until`` (Unix times; ``None``: unbounded)."""
        for dim in by:
            if dim not in USAGE_DIMENSIONS:
                raise InvalidInputError(f"cannot group usage by {dim!r}", hint=f"use one of: {', '.join(USAGE_DIMENSIONS)}")
        columns = ", ".join(by)
        bounds = [(f"ts {op} ?", value) for op, value in ((">=", since), ("<", until)) if value is not None]
        where = ("WHERE " + " AND ".join(b[0] for b in bounds)) if bounds else ""
        params = tuple(b[1] for b in bounds)
        sql = (f"SELECT {columns}, COUNT(*), SUM(status != 200), SUM(prompt_tokens), "  # noqa: S608 - columns allowlisted
               "SUM(completion_tokens), SUM(cost_usd), AVG(latency_ms) "
               f"FROM ledger {where} GROUP BY {columns} ORDER BY SUM(cost_usd) DESC, {columns}")
        rows = []
        for row in self._db.execute(sql, params):
            keys = dict(zip(by, row[: len(by)], strict=True))
            calls, errors, prompt, completion, cost, latency = row[len(by):]
            rows.append({**keys, "calls": calls, "errors": errors, "prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion, "cost_usd": round(cost, 9), "avg_latency_ms": round(latency, 1)})
        return rows

    def record_egress(self, row: dict[str, Any]) -> None:
        """Append one egress call (keys: the columns of ``egress_calls`` but ``id`` and ``ts``)."""
        columns = ("consumer", "task", "project", "route", "method", "path", "status", "error", "request_bytes",
                   "response_bytes", "latency_ms")
        self._db.execute(f"INSERT INTO egress_calls(ts, {', '.join(columns)}) "  # noqa: S608 - fixed columns
                         f"VALUES (?{', ?' * len(columns)})",
                         (time.time(), *(row.get(c, 0 if c.endswith(("_bytes", "_ms")) else None) for c in columns)))

    def egress_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest egress calls, newest first."""
        return self._latest("egress_calls", limit)

    def record_mcp(self, row: dict[str, Any]) -> None:
        """Append one MCP request (keys: the columns of ``mcp_calls`` but ``id`` and ``ts``)."""
        columns = ("consumer", "task", "project", "server", "method", "tool", "outcome", "error", "result_bytes",
                   "latency_ms")
        self._db.execute(f"INSERT INTO mcp_calls(ts, {', '.join(columns)}) "  # noqa: S608 - fixed columns
                         f"VALUES (?{', ?' * len(columns)})",
                         (time.time(), *(row.get(c, 0 if c.endswith(("_bytes", "_ms")) else None) for c in columns)))

    def mcp_calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest MCP requests, newest first."""
        return self._latest("mcp_calls", limit)

    def tool_usage(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        """Calls of MCP tools and egress routes per consumer, kind and server/route: ``calls``,
        ``refused`` and ``failed`` (MCP listings are not counted)."""
        clauses = [c for c, v in (("ts >= ?", since), ("ts < ?", until)) if v is not None]
        where = (" AND " + " AND ".join(clauses)) if clauses else ""
        params = [v for v in (since, until) if v is not None]
        # The clauses are fixed text; the values are parameters.
        mcp = ("SELECT consumer, 'mcp', server, COUNT(*), SUM(outcome = 'refused'), "  # noqa: S608
               "SUM(outcome IN ('failed', 'tool_error')) FROM mcp_calls WHERE method = 'tools/call'" + where
               + " GROUP BY consumer, server")
        egress = ("SELECT consumer, 'egress', COALESCE(route, '-'), COUNT(*), "  # noqa: S608
                  "SUM(status IN (401, 403, 404, 405, 413)), SUM(status >= 500) FROM egress_calls WHERE 1" + where
                  + " GROUP BY consumer, route")
        rows = self._db.execute(mcp + " UNION ALL " + egress + " ORDER BY 1, 2, 3",
            params + params).fetchall()
        return [{"consumer": r[0], "kind": r[1], "name": r[2], "calls": r[3], "refused": r[4] or 0, "failed": r[5] or 0}
                for r in rows]

    def _latest(self, table: str, limit: int) -> list[dict[str, Any]]:
        cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY id DESC LIMIT ?", (limit,))  # noqa: S608 - fixed names
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def ledger(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ledger rows, newest first."""
        cursor = self._db.execute("SELECT * FROM ledger ORDER BY id DESC LIMIT ?", (limit,))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def _crossed(scope: str, name: str, holder: Consumer | Project, cost: float, ratio: float) -> list[BudgetCrossing]:
    before = holder.spent_usd
    holder.spent_usd = before + cost
    budget = holder.budget_usd
    if budget and before < ratio * budget <= holder.spent_usd:
        return [BudgetCrossing(scope, name, holder.spent_usd, budget)]
    return []


class _Checkpointer:
    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, timeout=10)
        try:
            while not self._stopping.wait(self._interval):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)
