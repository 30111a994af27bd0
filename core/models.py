"""Data that crosses a boundary (between plugins, processes, the model and storage).

Each piece is a pydantic model so it is validated where it enters and serialises the same way
everywhere. Keep this module import-light: it is imported by workers and by the CLI.
"""
from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class ResultStatus(str, enum.Enum):
    """What a worker says about its task (DESIGN section 6)."""

    SUCCESS = "SUCCESS"
    SUCCESS_WITH_NOTES = "SUCCESS_WITH_NOTES"
    REVISION_NEEDED = "REVISION_NEEDED"
    BLOCKED = "BLOCKED"
    INTERRUPTED = "INTERRUPTED"  # set by the runtime, never by the model


class TaskState(str, enum.Enum):
    """Where a task is in its life; plan.md markers are derived from it."""

    PENDING = "pending"  # [ ]
    IN_PROGRESS = "in_progress"  # [~]
    REVIEW = "review"  # [~] reported, waiting for the Manager's judgement
    DONE = "done"  # [x]
    BLOCKED = "blocked"  # [!]
    REVISION = "revision"  # [→] a revision task is open for it
    CANCELLED = "cancelled"

    @property
    def marker(self) -> str:
        return _MARKERS[self]


class WorkerState(enum.StrEnum):
    """Whether a worker is part of the team (a ``str``: compares equal to, and is stored as, its value)."""

    ACTIVE = "active"
    SLEEPING = "sleeping"  # stopped while idle; started again when work reaches it (hiclaw.control.idle)
    REMOVED = "removed"  # kept for the record; its account is deactivated


class ProjectState(enum.StrEnum):
    """Where a project is in its life (a ``str``, like :class:`WorkerState`)."""

    PLANNING = "planning"  # created; no plan proposed yet
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # a plan waits for the admin's confirmation
    RUNNING = "running"
    PAUSED = "paused"  # running, but nothing new starts until it is resumed (hiclaw.manager.steer)
    DONE = "done"
    CANCELLED = "cancelled"


_MARKERS = {
    TaskState.PENDING: "[ ]",
    TaskState.IN_PROGRESS: "[~]",
    TaskState.REVIEW: "[~]",
    TaskState.DONE: "[x]",
    TaskState.BLOCKED: "[!]",
    TaskState.REVISION: "[→]",
    TaskState.CANCELLED: "[-]",
}


class ChatMessage(BaseModel):
    """A message in a room, as seen by one agent."""

    model_config = ConfigDict(frozen=True)

    room_id: str
    room_name: str = ""
    event_id: str
    sender: str  # full user id, e.g. "@alice:hiclaw.local"
    body: str
    formatted_body: str | None = None
    mentions: tuple[str, ...] = ()  # user ids mentioned (any of the three forms)
    is_direct: bool = False
    timestamp: datetime = Field(default_factory=utcnow)
    # Unmentioned messages buffered since this agent's last turn in this room (oldest first).
    context: tuple[ChatMessage, ...] = ()


class ModelRequest(BaseModel):
    """One call an agent is about to make to the gateway (mutable for plugins)."""

    agent: str
    model: str  # an alias such as "smart" or a provider model the consumer may use
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    task_id: str | None = None
    project_id: str | None = None


class TaskResult(BaseModel):
    """What a worker reported for a task (the summary; the full text is result.md)."""

    task_id: str
    status: ResultStatus
    summary: str = ""
    reported_at: datetime = Field(default_factory=utcnow)


class TaskRecord(BaseModel):
    """A task as the control plane stores it."""

    id: str  # "task-001"
    project_id: str | None = None
    title: str
    assignee: str  # worker name
    depends_on: tuple[str, ...] = ()
    model: str | None = None  # alias override for this task
    state: TaskState = TaskState.PENDING
    revision_of: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]]


class ToolSpec(BaseModel):
    """A tool offered to an agent: an OpenAI function definition plus its handler."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}, "additionalProperties": False}
    )
    handler: ToolHandler

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
