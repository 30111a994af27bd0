"""What the Manager's prompt is made of, besides the conversation: its home in storage (rules,
memory, other files it reads), its bundled skills, the facts about the team, and the account
posted by code when a report turn produced nothing."""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hiclaw.config import HiclawConfig
from hiclaw.manager.report import MANAGER
from hiclaw.manager.report import fallback_for as report_fallback
from hiclaw.manager.when import now_line
from hiclaw.models import ProjectState
from hiclaw.state import StateDB
from hiclaw.storage import layout

log = logging.getLogger(__name__)

RULES = ("Keep the admin informed in short messages. Never do a worker's job yourself. "
         "Use `cheap` for collection and formatting tasks, `smart` for design, code and judgement.")
#: The bundled skills in the Manager's catalogue.
SKILLS = ("team-management", "project-management")


class ManagerDesk:
    """``now()`` and ``zone()``: the team's clock (the scheduler's, which tests move) and time zone."""

    def __init__(self, config: HiclawConfig, *, state: StateDB, storage: Any, now: Callable[[], datetime],
                 zone: Callable[[], ZoneInfo]) -> None:
        self.config, self.state, self.storage, self.now, self.zone = config, state, storage, now, zone

    async def seed_home(self) -> None:
        """The Manager's rules and memory, written once (the admin may edit them afterwards)."""
        if await self.storage.stat(layout.agent_rules(MANAGER)) is None:
            await self.storage.put(layout.agent_rules(MANAGER), RULES.encode())
        if await self.storage.stat(layout.agent_memory(MANAGER)) is None:
            await self.storage.put(layout.agent_memory(MANAGER), b"# Memory of the Manager\n")

    async def read_file(self, name: str) -> str:
        """A file of the Manager's home, or "" (every one is optional)."""
        try:
            return (await self.storage.get(layout.agent_file(MANAGER, name))).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - optional file
            return ""

    async def skills(self) -> list[tuple[str, str]]:
        """(name, description) of the Manager's bundled skills; a broken one is left out."""
        from hiclaw.skills import bundled_skill

        found = []
        for name in SKILLS:
            try:
                found.append((name, bundled_skill(name).description))
            except Exception as exc:  # noqa: BLE001 - a broken bundled skill is left out of the prompt
                log.debug("bundled skill %s left out: %s", name, exc)
        return found

    async def fallback(self, key: str, why: str) -> tuple[str, str] | None:
        return await report_fallback(self.storage, key, why)

    async def facts(self) -> list[str]:
        """The team as it is now, one line each: the time, workers, model aliases, open projects."""
        workers = self.state.workers()
        facts = [now_line(self.now(), self.zone()),
                 "Workers: " + (", ".join(f"{w.name} ({w.role}; model {w.model})" for w in workers) or "none yet")]
        facts.append("Model aliases: " + (", ".join(sorted(self.config.models)) or "default"))
        for project in self.state.projects():
            if project.state in (ProjectState.DONE, ProjectState.CANCELLED):
                continue
            tasks = self.state.tasks(project_id=project.id)
            summary = ", ".join(f"{t.id} {t.state.value}" for t in tasks)
            facts.append(f"Project {project.id} '{project.title}' (plan version {project.version}) is "
                         f"{project.state.replace('_', ' ')}: {summary}")
        if self.config.team.yolo:
            facts.append("YOLO mode: plans start without the admin's confirmation.")
        return facts
