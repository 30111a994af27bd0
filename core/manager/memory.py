"""The Manager's own memory and skills: ``memory_append``, ``memory_read``, ``skills_read``.

``agents/manager/MEMORY.md`` is the Manager's memory (DESIGN §6: its own, never shared); the
most recent part of it is in every Manager system prompt. Because of that, only the admin's own
turns may write it: ``memory_append`` is not a judgement tool (:data:`hiclaw.manager.origin.JUDGEMENT_TOOLS`),
so a turn started by a worker's report, a heartbeat finding or a schedule — whose text a worker
may have written — cannot plant a "memory" that later turns would read as the Manager's own.
Reading is safe in any turn: ``memory_read`` and ``skills_read`` (the Manager's bundled skills,
read-only data shipped with hiclaw) change nothing.

Bounded: an entry has at most :data:`MAX_ENTRY_CHARS` characters (one line, dated in the team's
time zone); past :data:`MAX_MEMORY_CHARS` the oldest entries are dropped (the header stays).
"""
from __future__ import annotations

import asyncio
from typing import Annotated, Any

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.errors import InvalidInputError, NotFoundError
from hiclaw.models import ToolSpec
from hiclaw.storage import layout

MANAGER = "manager"
MAX_ENTRY_CHARS = 500
MAX_MEMORY_CHARS = 16_000
HEADER = "# Memory of the Manager"


def appended(current: str, line: str, *, limit: int = MAX_MEMORY_CHARS) -> tuple[str, int]:
    """MEMORY.md with ``line`` added, the oldest entries dropped to stay within ``limit``; (text, dropped)."""
    lines = current.rstrip("\n").splitlines() or [HEADER]
    head = lines[:1] if lines[0].startswith("#") else [HEADER]
    entries = (lines[1:] if lines[0].startswith("#") else lines) + [line]
    dropped = 0
    while len("\n".join(head + entries)) + 1 > limit and len(entries) > 1:
        entries.pop(0)
        dropped += 1
    return "\n".join(head + entries) + "\n", dropped


def manager_skill_names() -> list[str]:
    from hiclaw.skills import bundled_skills

    return [skill.name for skill in bundled_skills("manager")]


def memory_tools(plane: Any) -> list[ToolSpec]:
    key = layout.agent_memory(MANAGER)

    async def read() -> str:
        try:
            return (await plane.storage.get(key)).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - no memory yet
            return HEADER + "\n"

    async def memory_append(text: Annotated[str, schema_hint(maxLength=MAX_ENTRY_CHARS)]) -> Any:
        """Remember one fact for later conversations (your MEMORY.md, shown in every prompt): the admin's
        preferences, decisions, dates. One short line.
        """
        text = " ".join(str(text or "").split())
        if not text:
            raise InvalidInputError("nothing to remember", hint="give the fact to keep as text")
        if len(text) > MAX_ENTRY_CHARS:
            raise InvalidInputError(f"a memory entry has at most {MAX_ENTRY_CHARS} characters (this one: {len(text)})",
                                    hint="keep the fact itself; put details in a file and remember its path")
        now = plane.now().astimezone(plane.team_zone())
        line = f"- {now.strftime('%Y-%m-%d %H:%M')}: {text}"
        updated, dropped = appended(await read(), line)
        await plane.storage.put(key, updated.encode())
        plane.state.log_event("manager.memory_append", MANAGER, chars=len(text), dropped=dropped)
        return {"remembered": line, "dropped_oldest_entries": dropped}

    async def memory_read() -> Any:
        """Read your whole MEMORY.md."""
        return await read()

    names = manager_skill_names()
    skill_name = Annotated[str, schema_hint(enum=names)]  # data, not a type: the pre-check enforces the enum

    async def skills_read(name: skill_name) -> Any:
        """Read one of your skills' full instructions (SKILL.md), by name."""
        from hiclaw.skills import bundled_skill

        name = str(name or "")
        if name not in names:
            raise NotFoundError(f"no skill named {name!r} for the Manager", hint=f"available: {', '.join(names)}")
        return await asyncio.to_thread(bundled_skill(name).skill_md.read_text, encoding="utf-8")

    return [function_tool(memory_append), function_tool(memory_read), function_tool(skills_read)]
