"""Who caused a Manager turn — its *origin* — and which tools that origin may use.

Only the admin's own chat messages start Manager turns that may change the team. Every other
turn is started by code, for someone: a worker's report to judge (origin ``worker``), the
engine's or the watchdog's findings (origin ``code``). Whatever text such a turn carries — a
worker's summary, a prompt injection, a forged "admin:" line — the turn's tools are cut down, in
code, to :data:`JUDGEMENT_TOOLS`: reading state and judging results. Every other tool (creating
or removing workers, models, budgets, plans, projects, assignments, schedules, messages, and any
tool a plugin adds) answers with a one-line refusal instead of running.

The origin travels with the turn: :meth:`ManagerAgent.handle`/``wake`` take it, the durable
inbox stores it with the queued turn, and tools can read it with :func:`current_origin`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from hiclaw.errors import HiclawError
from hiclaw.models import ToolSpec

OriginKind = Literal["admin", "worker", "code"]

#: What a turn the admin did not start may do: look at the team and judge reported results.
#: Reading memory and the bundled skills is safe; *writing* memory is not (a worker's words in a
#: review could plant a "memory" every later prompt carries): ``memory_append`` is not here.
JUDGEMENT_TOOLS = frozenset({
    "list_workers", "list_tasks", "read_result", "accept_task", "request_revision", "block_task", "usage_report",
    "schedule_list", "memory_read", "skills_read",
})


class OriginRefused(HiclawError):
    """A tool the turn's origin may not use."""


@dataclass(frozen=True)
class Origin:
    """``kind``: ``admin`` (the admin's own message), ``worker`` (caused by what a worker did,
    e.g. its report), ``code`` (the engine, the watchdog, the scheduler). ``name``: the admin,
    the worker's name, or the part of the code. ``detail``: what happened (for the prompt and logs)."""

    kind: OriginKind
    name: str
    detail: str = ""

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def describe(self) -> str:
        who = {"admin": "the admin", "worker": f"worker {self.name}", "code": f"the {self.name}"}[self.kind]
        return f"{who} ({self.detail})" if self.detail else who

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Any) -> Origin:
        """An origin stored with a queued turn; anything unreadable is code, never the admin."""
        if isinstance(data, dict) and data.get("kind") in ("admin", "worker", "code") and isinstance(data.get("name"), str):
            return cls(data["kind"], data["name"], str(data.get("detail") or ""))
        return CODE

    @classmethod
    def worker(cls, name: str, detail: str = "") -> Origin:
        return cls("worker", name, detail)

    @classmethod
    def code(cls, part: str, detail: str = "") -> Origin:
        return cls("code", part, detail)


ADMIN = Origin("admin", "admin")
#: A turn queued without an origin (e.g. by a plugin, or by an older version): not the admin.
CODE = Origin("code", "control plane")

_current: ContextVar[Origin | None] = ContextVar("hiclaw_manager_turn_origin", default=None)


def current_origin() -> Origin | None:
    """The origin of the Manager turn running now (``None`` outside a Manager turn)."""
    return _current.get()


@contextlib.contextmanager
def turn_origin(origin: Origin) -> Iterator[None]:
    token = _current.set(origin)
    try:
        yield
    finally:
        _current.reset(token)


def _refusal(tool: str, origin: Origin) -> OriginRefused:
    return OriginRefused(f"{tool} refused: this turn was started by {origin.describe()}, not by the admin, "
                         "and only the admin's own requests may do that")


def require_admin(tool: str) -> None:
    """Refuse, in the tool's own code path, unless the turn running it is the admin's — for tools
    that steer the team (:mod:`hiclaw.manager.plan_tools`): a second check beside
    :func:`tools_for`'s, so they stay the admin's even if a plugin or a later change lists them
    among the judgement tools. Outside any Manager turn there is no admin either."""
    origin = current_origin() or CODE
    if not origin.is_admin:
        raise _refusal(tool, origin)


def _refusing(tool: ToolSpec, origin: Origin) -> ToolSpec:
    async def refuse(arguments: dict[str, Any]) -> Any:
        raise _refusal(tool.name, origin)

    return tool.model_copy(update={"handler": refuse})


def tools_for(origin: Origin, tools: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The tools a turn of ``origin`` gets: all of them for the admin; otherwise the same list
    (the model sees what exists) with every tool outside :data:`JUDGEMENT_TOOLS` refusing."""
    if origin.is_admin:
        return list(tools)
    return [tool if tool.name in JUDGEMENT_TOOLS else _refusing(tool, origin) for tool in tools]
