"""The control plane's state: SQLite under ``$HICLAW_HOME/state.db``.

Desired state lives here (DESIGN principle 6): workers, projects, tasks and their dependencies,
schedules, an event log, the messages still to post (``pending_messages``: the transactional
outbox, see :mod:`hiclaw.control.outbox`) and the idempotency keys of messages already posted
(``outbox``). Files in storage (plan.md, spec.md) are *views* rendered from it, never parsed back.

One process writes (the control plane); every change is one transaction, and nested
:meth:`StateDB.transaction` blocks join the outermost one, so a state change and the message it
causes commit together or not at all. Reads from the CLI
(`hiclaw status`, `hiclaw task list`) open the same file read-only; WAL mode keeps them from
blocking the writer.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from hiclaw.errors import InvalidInputError, NotFoundError
from hiclaw.models import ProjectState, ResultStatus, TaskState, WorkerState

SCHEMA_VERSION = 3  # 2: pending_messages; 3: plan_versions (each created on open of an older database)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    skills TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL DEFAULT 'active',      -- active | sleeping | removed
    network INTEGER NOT NULL DEFAULT 0,
    budget_usd REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    goal TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'planning',    -- planning | awaiting_confirmation | running | paused | done | cancelled
    room_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    project_id TEXT REFERENCES projects(id),
    title TEXT NOT NULL,
    assignee TEXT NOT NULL,
    model TEXT,
    spec TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending',
    revision_of TEXT REFERENCES tasks(id),
    result_status TEXT,
    result_summary TEXT,
    dispatch_count INTEGER NOT NULL DEFAULT 0,
    last_progress_at TEXT,
    stalled_at TEXT,                           -- set by the heartbeat watchdog; state stays in_progress
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS task_deps (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    depends_on TEXT NOT NULL REFERENCES tasks(id),
    PRIMARY KEY (task_id, depends_on)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_id TEXT,
    ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,      -- delivery order
    key TEXT NOT NULL UNIQUE,                  -- idempotency key; moves to outbox once delivered
    room TEXT NOT NULL,                        -- a room id, or a room key resolved at delivery (ROOM_MANAGER, ...)
    text TEXT NOT NULL,
    mentions TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,       -- failed deliveries so far
    failing_since REAL,                        -- epoch seconds of the first failed delivery
    next_attempt_at REAL,                      -- back-off: not before (epoch seconds)
    last_error TEXT,
    alerted INTEGER NOT NULL DEFAULT 0         -- the admin was told it is stuck
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    message TEXT NOT NULL,
    assignee TEXT NOT NULL,
    last_run TEXT,
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'task',         -- task (a worker's) | remind (the admin) | report (the Manager's)
    at TEXT                                    -- a one-shot run's time (UTC); cron is '' then
);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,            -- event id of a message, or a wake-up key
    kind TEXT NOT NULL,                  -- message | wake
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed (after its last attempt)
    created_at TEXT NOT NULL,
    done_at TEXT
);
-- Tools granted to workers at run time (`hiclaw mcp grant`, `hiclaw egress grant`, the Manager's
-- grant tools), besides the `workers` lists of config.toml: an MCP server (every offered tool, or
-- the JSON list in `tools`) or an egress route.
CREATE TABLE IF NOT EXISTS tool_grants (
    worker TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- mcp | egress
    name TEXT NOT NULL,                  -- the server or route
    tools TEXT,                          -- mcp: JSON list of tool names; NULL = every offered tool
    granted_by TEXT NOT NULL,            -- admin | manager
    created_at TEXT NOT NULL,
    PRIMARY KEY (worker, kind, name)
);
-- Every version of every plan, as it was when proposed, replaced or revised (`hiclaw project history`).
CREATE TABLE IF NOT EXISTS plan_versions (
    project_id TEXT NOT NULL REFERENCES projects(id),
    version INTEGER NOT NULL,
    change TEXT NOT NULL,                -- proposed | replaced | revised
    summary TEXT NOT NULL DEFAULT '',    -- what changed, in words
    author TEXT NOT NULL DEFAULT '',     -- who changed it: manager | admin
    tasks TEXT NOT NULL DEFAULT '[]',    -- JSON: the plan's tasks then (id, title, assignee, depends_on, state)
    plan TEXT NOT NULL DEFAULT '',       -- plan.md of that version
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, version)
);
-- Calls of workers' tools that wait for the admin (hiclaw.control.approvals): one row per call
-- (the worker's call id), decided once, run once; `result` is the answer every retry gets.
CREATE TABLE IF NOT EXISTS approvals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the id is apr-<seq>
    worker TEXT NOT NULL,
    call_id TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- mcp | egress
    target TEXT NOT NULL,                -- server/tool | route/METHOD path
    arguments TEXT NOT NULL,             -- JSON, as the worker sent them (capped)
    reason TEXT NOT NULL,                -- why it needs the admin
    task_id TEXT,
    project_id TEXT,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | approved | denied | running | done | interrupted
    decided_by TEXT,
    note TEXT,                           -- the admin's note; a denial's reason
    result TEXT,                         -- JSON: the answer of the call once it ran
    reminders INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    decided_at TEXT,
    finished_at TEXT,
    UNIQUE (worker, call_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_project ON tasks(project_id);
CREATE INDEX IF NOT EXISTS tasks_by_assignee ON tasks(assignee, state);
"""


#: Columns of ``inbox`` for retrying failed turns (added to databases created before them).
INBOX_RETRY_COLUMNS = (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("next_attempt_at", "REAL"), ("last_error", "TEXT"))


#: Room keys of pending messages, resolved when the message is delivered (the room may not exist
#: when the message is recorded); a room id (``!…``) is used as it is.
ROOM_MANAGER = "manager"


def room_of_worker(name: str) -> str:
    return f"worker:{name}"


def room_of_project(project_id: str) -> str:
    return f"project:{project_id}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return None


class Worker(BaseModel):
    name: str
    role: str
    model: str
    skills: list[str] = Field(default_factory=list)
    state: WorkerState = WorkerState.ACTIVE
    network: bool = False
    budget_usd: float | None = None
    created_at: str = ""
    updated_at: str = ""

    def view(self) -> dict[str, Any]:
        """The one JSON view of a worker (`hiclaw status`, the Manager's worker tools)."""
        return {"name": self.name, "role": self.role, "model": self.model, "skills": self.skills,
                "state": self.state.value}


class ToolGrant(BaseModel):
    """A run-time grant of an MCP server (``tools``: the granted ones, None for every offered
    tool) or an egress route to a worker."""

    worker: str
    kind: str  # mcp | egress
    name: str
    tools: list[str] | None = None
    granted_by: str = "admin"
    created_at: str = ""


APPROVAL_FIELDS = frozenset({"decided_by", "note", "result", "reminders", "decided_at", "finished_at"})


class Approval(BaseModel):
    """A call waiting for (or decided by) the admin: :mod:`hiclaw.control.approvals`."""

    seq: int
    worker: str
    call_id: str
    kind: str
    target: str
    arguments: str
    reason: str
    task_id: str | None = None
    project_id: str | None = None
    state: str = "pending"
    decided_by: str | None = None
    note: str | None = None
    result: str | None = None
    reminders: int = 0
    created_at: str = ""
    decided_at: str | None = None
    finished_at: str | None = None

    @property
    def id(self) -> str:
        return f"apr-{self.seq}"

    def view(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"seq", "result", "call_id"})
        return {"id": self.id, **data}


class Project(BaseModel):
    id: str
    title: str
    goal: str = ""
    state: ProjectState = ProjectState.PLANNING
    room_id: str | None = None
    version: int = 0  # of its plan: 1 when first proposed, +1 at every replacement or revision
    created_at: str = ""
    updated_at: str = ""


class PlanVersion(BaseModel):
    """One version of a project's plan, as recorded when it was made (:meth:`StateDB.plan_versions`)."""

    project_id: str
    version: int
    change: str  # proposed | replaced | revised
    summary: str = ""
    author: str = ""
    tasks: list[dict[str, Any]] = Field(default_factory=list)
    plan: str = ""
    created_at: str = ""

    def view(self) -> dict[str, Any]:
        """Without the plan's text (`hiclaw project history --json`; ``--version N`` prints it)."""
        return self.model_dump(exclude={"plan"})


class Task(BaseModel):
    id: str
    project_id: str | None = None
    title: str
    assignee: str
    model: str | None = None
    spec: str = ""
    state: TaskState = TaskState.PENDING
    revision_of: str | None = None
    result_status: ResultStatus | None = None
    result_summary: str | None = None
    dispatch_count: int = 0
    last_progress_at: str | None = None
    stalled_at: str | None = None  # no progress for two heartbeat intervals (hiclaw.control.watchdog)
    stuck: str | None = None  # why its owner cannot move it on, e.g. a judgement that keeps failing (plan.md note)
    depends_on: list[str] = Field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""
    position: int = 0

    def view(self) -> dict[str, Any]:
        """The one JSON view of a task: `hiclaw task list|show --json`, `hiclaw status` and the
        Manager's task tools all show these keys. ``stalled_at`` only while the task is in progress
        (a stall stamp left on a finished task says nothing)."""
        return {"id": self.id, "project": self.project_id, "title": self.title, "assignee": self.assignee,
                "state": self.state.value, "marker": self.state.marker, "model": self.model,
                "depends_on": self.depends_on, "revision_of": self.revision_of,
                "result_status": self.result_status.value if self.result_status else None,
                "result_summary": self.result_summary, "attempts": self.dispatch_count,
                "stalled_at": self.stalled_at if self.state is TaskState.IN_PROGRESS else None,
                "created_at": self.created_at, "updated_at": self.updated_at}


class PendingMessage(BaseModel):
    """A message recorded with a state change and not yet accepted by the homeserver."""

    id: int
    key: str
    room: str
    text: str
    mentions: list[str] = Field(default_factory=list)
    created_at: str = ""
    attempts: int = 0
    failing_since: float | None = None
    next_attempt_at: float | None = None
    last_error: str | None = None
    alerted: bool = False


class Schedule(BaseModel):
    name: str
    cron: str  # '' for a one-shot run (``at``)
    timezone: str = "UTC"
    message: str
    assignee: str  # a worker (kind task), the admin (remind), the Manager (report)
    last_run: str | None = None
    created_at: str = ""
    kind: str = "task"
    at: str | None = None


class StateDB:
    """Typed access to ``state.db``. Thread-safe; every write is one transaction."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() blocks
        self._owner: object = None  # the asyncio task (or None) that opened the outermost one
        self._new_messages: list[str] = []  # keys enqueued in the open transaction
        #: Called with each enqueued message's key once its transaction has committed.
        self.on_message_committed: Callable[[str], None] | None = None
        if readonly:
            if not path.exists():
                raise NotFoundError(f"no state at {path}", hint="start the team with `hiclaw up` first")
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # 0600 whatever the umask, before SQLite opens it (its -wal and -shm get the same mode).
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(SCHEMA)
            self._add_missing_columns()
            self._conn.execute(  # raised to this version, never lowered (a newer one may have opened it)
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET"
                " value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (str(SCHEMA_VERSION),),
            )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self._conn.close()

    def _add_missing_columns(self) -> None:
        """Columns added after a database was created (additive migrations)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(tasks)")}
        if "stalled_at" not in columns:
            self._conn.execute("ALTER TABLE tasks ADD COLUMN stalled_at TEXT")
        scheduled = {row[1] for row in self._conn.execute("PRAGMA table_info(schedules)")}
        if "kind" not in scheduled:
            self._conn.execute("ALTER TABLE schedules ADD COLUMN kind TEXT NOT NULL DEFAULT 'task'")
        if "at" not in scheduled:
            self._conn.execute("ALTER TABLE schedules ADD COLUMN at TEXT")
        if "stuck" not in columns:  # why its owner cannot move it on (plan.md note; hiclaw.control.ownership)
            self._conn.execute("ALTER TABLE tasks ADD COLUMN stuck TEXT")
        projects = {row[1] for row in self._conn.execute("PRAGMA table_info(projects)")}
        if "version" not in projects:  # the plan's version (hiclaw.manager.revise)
            self._conn.execute("ALTER TABLE projects ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
        inbox = {row[1] for row in self._conn.execute("PRAGMA table_info(inbox)")}
        for column, kind in INBOX_RETRY_COLUMNS:  # failed Manager turns retried (hiclaw.control.turns)
            if column not in inbox:
                self._conn.execute(f"ALTER TABLE inbox ADD COLUMN {column} {kind}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction. Blocks nested in it (the methods below open their own) join it: all of
        it commits, or none (an exception leaving the outermost block rolls everything back).
        Never ``await`` inside: the transaction belongs to the asyncio task that opened it."""
        with self._lock:
            if self._depth:
                if _current_task() is not self._owner:
                    raise RuntimeError("a state transaction is open in another asyncio task "
                                       "(never await inside `with state.transaction()`)")
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth, self._owner = 1, _current_task()
            try:
                yield self._conn
            except BaseException:
                self._depth, self._owner, self._new_messages = 0, None, []
                self._conn.execute("ROLLBACK")
                raise
            self._depth, self._owner = 0, None
            self._conn.execute("COMMIT")
            committed, self._new_messages = self._new_messages, []
        if self.on_message_committed is not None:
            for key in committed:
                self.on_message_committed(key)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ events & outbox

    def log_event(self, kind: str, subject: str = "", **data: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO events(ts, kind, subject, data) VALUES (?, ?, ?, ?)",
                (now_iso(), kind, subject, json.dumps(data, default=str)),
            )

    def events(self, *, kind: str | None = None, subject: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = "SELECT id, ts, kind, subject, data FROM events WHERE 1=1"
        params: list[Any] = []
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        if subject:
            sql += " AND subject = ?"
            params.append(subject)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [dict(r) | {"data": json.loads(r["data"])} for r in self._query(sql, params)]

    def outbox_get(self, key: str) -> str | None:
        rows = self._query("SELECT event_id FROM outbox WHERE key = ?", (key,))
        return rows[0]["event_id"] if rows else None

    def outbox_put(self, key: str, room_id: str, event_id: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO outbox(key, room_id, event_id, ts) VALUES (?, ?, ?, ?)",
                (key, room_id, event_id, now_iso()),
            )

    # ------------------------------------------------------------------ the transactional outbox

    def enqueue_message(self, key: str, room: str, text: str, mentions: Sequence[str] = ()) -> bool:
        """Record a message to post (delivered by :class:`hiclaw.control.outbox.Outbox`), in the
        caller's transaction: ``with state.transaction(): state.update_task(...);
        state.enqueue_message(...)``. ``room``: a room id or a room key (:data:`ROOM_MANAGER`,
        :func:`room_of_worker`, :func:`room_of_project`). False if ``key`` was recorded or sent before."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone():
                return False
            cursor = conn.execute(
                "INSERT OR IGNORE INTO pending_messages(key, room, text, mentions, created_at) VALUES (?, ?, ?, ?, ?)",
                (key, room, text, json.dumps(list(mentions)), now_iso()),
            )
            if cursor.rowcount != 1:
                return False
            self._new_messages.append(key)
            return True

    def discard_message(self, key: str) -> bool:
        """Drop a message not delivered yet (superseded, e.g. an older plan's); False if there is none."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM pending_messages WHERE key = ?", (key,)).rowcount == 1

    def pending_messages(self) -> list[PendingMessage]:
        rows = self._query("SELECT * FROM pending_messages ORDER BY id")
        return [PendingMessage(**dict(r) | {"mentions": json.loads(r["mentions"]), "alerted": bool(r["alerted"])})
                for r in rows]

    def message_delivered(self, message_id: int, key: str, room_id: str, event_id: str) -> None:
        """The homeserver accepted a pending message: its key moves to the sent outbox."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM pending_messages WHERE id = ?", (message_id,))
            conn.execute("INSERT OR REPLACE INTO outbox(key, room_id, event_id, ts) VALUES (?, ?, ?, ?)",
                         (key, room_id, event_id, now_iso()))

    def message_failed(self, message_id: int, *, error: str, failing_since: float, next_attempt_at: float) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE pending_messages SET attempts = attempts + 1, last_error = ?, failing_since = ?,"
                         " next_attempt_at = ? WHERE id = ?", (error, failing_since, next_attempt_at, message_id))

    def message_alerted(self, message_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE pending_messages SET alerted = 1 WHERE id = ?", (message_id,))

    # ------------------------------------------------------------------ the Manager's inbox

    def inbox_add(self, key: str, kind: str, payload: dict[str, Any]) -> bool:
        """Queue a turn for the Manager; False if ``key`` was queued before (at-most-once)."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO inbox(key, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                (key, kind, json.dumps(payload, default=str), now_iso()),
            )
            return cursor.rowcount == 1

    def inbox_pending(self) -> list[dict[str, Any]]:
        """Queued turns not done yet, in order; ``attempts`` failed so far, ``next_attempt_at``
        (epoch seconds) when the next may start (``None``: now)."""
        rows = self._query("SELECT id, key, kind, payload, attempts, next_attempt_at, last_error FROM inbox"
                           " WHERE status = 'pending' ORDER BY id")
        return [dict(r) | {"payload": json.loads(r["payload"])} for r in rows]

    def inbox_retry(self, item_id: int, *, error: str, next_attempt_at: float) -> None:
        """A turn failed: count the attempt; it stays pending, not before ``next_attempt_at``."""
        with self.transaction() as conn:
            conn.execute("UPDATE inbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                         (error, next_attempt_at, item_id))

    def inbox_failed(self, item_id: int, *, error: str) -> None:
        """A turn failed for the last time: no more attempts (the admin is told by the caller)."""
        with self.transaction() as conn:
            conn.execute("UPDATE inbox SET status = 'failed', attempts = attempts + 1, last_error = ?, done_at = ?"
                         " WHERE id = ?", (error, now_iso(), item_id))

    def inbox_status(self, key: str) -> str | None:
        """``pending``, ``done`` or ``failed`` for a queued key; ``None`` if never queued."""
        rows = self._query("SELECT status FROM inbox WHERE key = ?", (key,))
        return str(rows[0]["status"]) if rows else None

    def inbox_done(self, item_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE inbox SET status = 'done', done_at = ? WHERE id = ?", (now_iso(), item_id))

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ workers

    def upsert_worker(self, worker: Worker) -> Worker:
        stamp = now_iso()
        with self.transaction() as conn:
            existing = conn.execute("SELECT created_at FROM workers WHERE name = ?", (worker.name,)).fetchone()
            created = existing["created_at"] if existing else stamp
            conn.execute(
                "INSERT OR REPLACE INTO workers(name, role, model, skills, state, network, budget_usd, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (worker.name, worker.role, worker.model, json.dumps(worker.skills), worker.state,
                 int(worker.network), worker.budget_usd, created, stamp),
            )
        return self.worker(worker.name)

    def worker(self, name: str) -> Worker:
        rows = self._query("SELECT * FROM workers WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(f"no worker named {name!r}", hint="see `hiclaw worker list`")
        return _worker(rows[0])

    def find_worker(self, name: str) -> Worker | None:
        rows = self._query("SELECT * FROM workers WHERE name = ?", (name,))
        return _worker(rows[0]) if rows else None

    def workers(self, *, include_removed: bool = False) -> list[Worker]:
        if include_removed:
            return [_worker(r) for r in self._query("SELECT * FROM workers ORDER BY created_at, name")]
        return [_worker(r) for r in self._query("SELECT * FROM workers WHERE state != ? ORDER BY created_at, name",
                                                 (WorkerState.REMOVED.value,))]

    def set_worker_state(self, name: str, state: WorkerState | str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE workers SET state = ?, updated_at = ? WHERE name = ?",
                         (WorkerState(state).value, now_iso(), name))

    def set_worker_model(self, name: str, model: str) -> None:
        self.worker(name)
        with self.transaction() as conn:
            conn.execute("UPDATE workers SET model = ?, updated_at = ? WHERE name = ?", (model, now_iso(), name))

    # ------------------------------------------------------------------ projects

    def next_id(self, prefix: str, table: str) -> str:
        rows = self._query(f"SELECT id FROM {table} WHERE id LIKE ?", (f"{prefix}-%",))  # noqa: S608 - fixed names
        numbers = [int(r["id"].rsplit("-", 1)[1]) for r in rows if r["id"].rsplit("-", 1)[1].isdigit()]
        return f"{prefix}-{(max(numbers) if numbers else 0) + 1:03d}"

    def create_project(self, title: str, goal: str = "") -> Project:
        stamp = now_iso()
        with self.transaction() as conn:
            project_id = self.next_id("proj", "projects")
            conn.execute(
                "INSERT INTO projects(id, title, goal, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (project_id, title, goal, ProjectState.PLANNING.value, stamp, stamp),
            )
        return self.project(project_id)

    def project(self, project_id: str) -> Project:
        rows = self._query("SELECT * FROM projects WHERE id = ?", (project_id,))
        if not rows:
            raise NotFoundError(f"no project {project_id!r}", hint="see `hiclaw project list`")
        return Project(**dict(rows[0]))

    def projects(self) -> list[Project]:
        return [Project(**dict(r)) for r in self._query("SELECT * FROM projects ORDER BY created_at, id")]

    def update_project(self, project_id: str, **fields: Any) -> Project:
        allowed = {"title", "goal", "state", "room_id", "version"}
        if not set(fields) <= allowed:
            raise ValueError(f"cannot update {set(fields) - allowed}")
        if "state" in fields:
            fields["state"] = ProjectState(fields["state"]).value
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE projects SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608 - keys checked
                (*fields.values(), now_iso(), project_id),
            )
        return self.project(project_id)

    def record_plan_version(self, version: PlanVersion) -> PlanVersion:
        """Keep a plan version (in the caller's transaction, with the change that made it)."""
        version = version.model_copy(update={"created_at": version.created_at or now_iso()})
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO plan_versions(project_id, version, change, summary, author, tasks, plan,"
                         " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (version.project_id, version.version, version.change, version.summary, version.author,
                          json.dumps(version.tasks, default=str), version.plan, version.created_at))
        return version

    def plan_versions(self, project_id: str) -> list[PlanVersion]:
        """The project's plan versions, oldest first (none for plans made before they were kept)."""
        try:
            rows = self._query("SELECT * FROM plan_versions WHERE project_id = ? ORDER BY version", (project_id,))
        except sqlite3.OperationalError:  # a read-only look at a database older than the table
            return []
        return [PlanVersion(**dict(r) | {"tasks": json.loads(r["tasks"])}) for r in rows]

    # ------------------------------------------------------------------ tasks

    def add_tasks(self, project_id: str | None, tasks: Sequence[Task]) -> list[Task]:
        """Insert tasks and their dependencies in one transaction (all or nothing)."""
        stamp = now_iso()
        with self.transaction() as conn:
            base = conn.execute("SELECT COALESCE(MAX(position), 0) FROM tasks").fetchone()[0]
            for offset, task in enumerate(tasks, start=1):
                if conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task.id,)).fetchone():
                    raise InvalidInputError(f"task {task.id} already exists", hint="use a new task id")
                conn.execute(
                    "INSERT INTO tasks(id, project_id, title, assignee, model, spec, state, revision_of, created_at,"
                    " updated_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (task.id, project_id, task.title, task.assignee, task.model, task.spec, task.state.value,
                     task.revision_of, stamp, stamp, base + offset),
                )
            for task in tasks:
                for dep in task.depends_on:
                    conn.execute("INSERT INTO task_deps(task_id, depends_on) VALUES (?, ?)", (task.id, dep))
        return [self.task(t.id) for t in tasks]

    def task(self, task_id: str) -> Task:
        rows = self._query("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise NotFoundError(f"no task {task_id!r}", hint="see `hiclaw task list`")
        return self._task(rows[0])

    def tasks(self, *, project_id: str | None = None, assignee: str | None = None,
              states: Sequence[TaskState] | None = None) -> list[Task]:
        sql = "SELECT * FROM tasks WHERE 1=1"
        params: list[Any] = []
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        if assignee is not None:
            sql += " AND assignee = ?"
            params.append(assignee)
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            params.extend(s.value for s in states)
        sql += " ORDER BY position, id"
        return [self._task(r) for r in self._query(sql, params)]

    def next_task_id(self) -> str:
        return self.next_id("task", "tasks")

    def delete_tasks(self, task_ids: Sequence[str]) -> None:
        """Remove tasks that never started (a plan replaced before it was confirmed), with their
        dependencies; in the caller's transaction."""
        marks = ", ".join("?" for _ in task_ids)
        with self.transaction() as conn:
            conn.execute(f"DELETE FROM task_deps WHERE task_id IN ({marks}) OR depends_on IN ({marks})",  # noqa: S608 - placeholders only
                         (*task_ids, *task_ids))
            conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", tuple(task_ids))  # noqa: S608 - placeholders only

    def set_dependencies(self, task_id: str, depends_on: Sequence[str]) -> None:
        """Replace a task's dependencies (a revised plan); in the caller's transaction."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM task_deps WHERE task_id = ?", (task_id,))
            conn.executemany("INSERT INTO task_deps(task_id, depends_on) VALUES (?, ?)", [(task_id, d) for d in depends_on])

    def update_task(self, task_id: str, **fields: Any) -> Task:
        allowed = {"state", "result_status", "result_summary", "dispatch_count", "last_progress_at", "assignee", "model",
                   "stalled_at", "stuck"}
        if not set(fields) <= allowed:
            raise ValueError(f"cannot update {set(fields) - allowed}")
        values = [v.value if hasattr(v, "value") else v for v in fields.values()]
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE tasks SET {assignments}, updated_at = ? WHERE id = ?",  # noqa: S608 - keys checked
                (*values, now_iso(), task_id),
            )
        return self.task(task_id)

    def _task(self, row: sqlite3.Row) -> Task:
        deps = [r["depends_on"] for r in self._query(
            "SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on", (row["id"],))]
        data = dict(row)
        return Task(**data, depends_on=deps)

    # ------------------------------------------------------------------ schedules

    def tool_grants(self, *, kind: str | None = None) -> list[ToolGrant]:
        """The run-time grants (:class:`ToolGrant`), by worker, kind and name."""
        try:
            rows = (self._query("SELECT * FROM tool_grants WHERE kind = ? ORDER BY worker, name", (kind,)) if kind
                    else self._query("SELECT * FROM tool_grants ORDER BY worker, kind, name"))
        except sqlite3.OperationalError:  # a read-only look at a database older than the table
            return []
        return [ToolGrant(worker=r["worker"], kind=r["kind"], name=r["name"],
                          tools=None if r["tools"] is None else json.loads(r["tools"]),
                          granted_by=r["granted_by"], created_at=r["created_at"]) for r in rows]

    def put_tool_grant(self, grant: ToolGrant) -> ToolGrant:
        """Insert or replace the grant of ``grant.name`` to ``grant.worker``."""
        grant = grant.model_copy(update={"created_at": grant.created_at or now_iso()})
        with self.transaction() as conn:
            conn.execute("INSERT INTO tool_grants(worker, kind, name, tools, granted_by, created_at) VALUES (?,?,?,?,?,?)"
                         " ON CONFLICT(worker, kind, name) DO UPDATE SET tools = excluded.tools,"
                         " granted_by = excluded.granted_by, created_at = excluded.created_at",
                         (grant.worker, grant.kind, grant.name, None if grant.tools is None else json.dumps(grant.tools),
                          grant.granted_by, grant.created_at))
        return grant

    def delete_tool_grant(self, worker: str, kind: str, name: str) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM tool_grants WHERE worker = ? AND kind = ? AND name = ?",
                                (worker, kind, name)).rowcount > 0

    # ------------------------------------------------------------------ approvals

    def add_approval(self, approval: Approval) -> tuple[Approval, bool]:
        """Record a call that waits for the admin, once per (worker, call id): the row, and
        whether it is new."""
        with self.transaction() as conn:  # looked up first: a refused insert would use up an id
            new = conn.execute("SELECT 1 FROM approvals WHERE worker = ? AND call_id = ?",
                               (approval.worker, approval.call_id)).fetchone() is None
            if new:
                conn.execute(
                    "INSERT INTO approvals(worker, call_id, kind, target, arguments, reason, task_id, project_id,"
                    " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (approval.worker, approval.call_id, approval.kind, approval.target, approval.arguments,
                     approval.reason, approval.task_id, approval.project_id, now_iso()))
        found = self.approval_of_call(approval.worker, approval.call_id)
        assert found is not None
        return found, new

    def approval_of_call(self, worker: str, call_id: str) -> Approval | None:
        rows = self._query("SELECT * FROM approvals WHERE worker = ? AND call_id = ?", (worker, call_id))
        return Approval(**dict(rows[0])) if rows else None

    def approval(self, approval_id: str) -> Approval:
        seq = approval_id.removeprefix("apr-")
        valid = seq.isascii() and seq.isdigit() and len(seq) <= 18  # an SQLite integer; "apr-١" is no id
        rows = self._query("SELECT * FROM approvals WHERE seq = ?", (int(seq),)) if valid else []
        if not rows:
            raise NotFoundError(f"no approval {approval_id!r}", hint="see `hiclaw approvals list --all` for the ids")
        return Approval(**dict(rows[0]))

    def approvals(self, *, states: Sequence[str] | None = None) -> list[Approval]:
        try:
            if states:
                marks = ",".join("?" * len(states))
                rows = self._query(f"SELECT * FROM approvals WHERE state IN ({marks}) ORDER BY seq",  # noqa: S608 - placeholders
                                   tuple(states))
            else:
                rows = self._query("SELECT * FROM approvals ORDER BY seq")
        except sqlite3.OperationalError:  # a read-only look at a database older than the table
            return []
        return [Approval(**dict(r)) for r in rows]

    def move_approval(self, seq: int, expected: Sequence[str], new_state: str, **fields: Any) -> bool:
        """``state`` from one of ``expected`` to ``new_state`` (and ``fields``) in one UPDATE: of
        two decisions or two runs at once, exactly one wins."""
        unknown = set(fields) - APPROVAL_FIELDS
        if unknown:
            raise ValueError(f"not a field of an approval: {sorted(unknown)}")
        assigns = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
        marks = ",".join("?" * len(expected))
        with self.transaction() as conn:
            return conn.execute(
                f"UPDATE approvals SET {assigns} WHERE seq = ? AND state IN ({marks})",  # noqa: S608 - names checked
                (new_state, *fields.values(), seq, *expected)).rowcount > 0

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO schedules(name, cron, timezone, message, assignee, last_run, created_at,"
                " kind, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (schedule.name, schedule.cron, schedule.timezone, schedule.message, schedule.assignee,
                 schedule.last_run, schedule.created_at or now_iso(), schedule.kind, schedule.at),
            )
        return self.schedule(schedule.name)

    def schedule(self, name: str) -> Schedule:
        rows = self._query("SELECT * FROM schedules WHERE name = ?", (name,))
        if not rows:
            raise NotFoundError(f"no schedule named {name!r}", hint="see `hiclaw schedule list`")
        return Schedule(**dict(rows[0]))

    def schedules(self) -> list[Schedule]:
        return [Schedule(**dict(r)) for r in self._query("SELECT * FROM schedules ORDER BY name")]

    def delete_schedule(self, name: str) -> None:
        self.schedule(name)
        with self.transaction() as conn:
            conn.execute("DELETE FROM schedules WHERE name = ?", (name,))

    def set_schedule_last_run(self, name: str, when: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE schedules SET last_run = ? WHERE name = ?", (when, name))


def _worker(row: sqlite3.Row) -> Worker:
    data = dict(row)
    data["skills"] = json.loads(data["skills"])
    data["network"] = bool(data["network"])
    return Worker(**data)
