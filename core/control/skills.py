"""The team's skills: workers' `skills_find`/`skills_add` run here, in the control plane.

Workers never fetch skills themselves (DESIGN section 5). The control plane fetches, verifies and
installs into the worker's ``agents/<name>/skills/`` through a private staging folder, uploaded
with the storage API (:func:`in_worker_skills`), whatever the storage.
"""
from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hiclaw.host import ComponentContext
from hiclaw.storage import layout

#: Bundled skills every worker starts with.
WORKER_BASE_SKILLS = ("find-skills", "task-reporting", "project-work")


async def in_worker_skills(storage: Any, worker: str, action: Callable[[Path], Awaitable[Any]]) -> Any:
    """Run ``action(folder)`` on a private copy of ``worker``'s skills folder, then upload it.

    Never in place, even on local storage: the worker's home is the worker's to change, so the
    installer's renames and removals must not run along paths in it. The copy lives in the
    control plane's own temporary folder; storage reads and writes it without following
    links, and the worker sees its skills folder read-only. (``hiclaw sandbox check`` installs
    through here too, after a sandboxed probe tried to swap that folder for a link.)"""
    prefix = layout.agent_skills_dir(worker)
    with tempfile.TemporaryDirectory(prefix="hiclaw-skills-") as tmp:
        staging = Path(tmp)
        await storage.sync(staging, prefix, direction="down")
        result = await action(staging)
        await storage.sync(staging, prefix, direction="up", delete=True)
        return result


class TeamSkills:
    def __init__(self, plane: Any) -> None:
        from hiclaw.registry.service import SkillService

        self.plane = plane
        config = plane.config.skills
        registry = None
        try:
            registry = plane.host.create("skill_registry", config.registry, config.model_dump(), ComponentContext(
                home=plane.home, side="control", config=plane.config, host=plane.host), section="skills")
        except Exception:  # noqa: BLE001 - fall back to the service's own skills.sh client
            registry = None
        self.service = SkillService(config, registry=registry)

    async def aclose(self) -> None:
        await self.service.aclose()

    async def _in_worker_dir(self, worker: str, action: Any) -> Any:
        return await in_worker_skills(self.plane.storage, worker, action)

    async def find(self, worker: str, query: str, limit: int = 10) -> list[dict[str, Any]]:
        return await self.service.find(worker, query, limit)

    async def add(self, worker: str, source: str, skill: str | None) -> dict[str, Any]:
        result = await self._in_worker_dir(worker, lambda target: self.service.add(worker, source, skill, target))
        self.plane.state.log_event("skill.installed", worker, source=source, skill=skill)
        return result

    async def seed(self, worker: str, names: Sequence[str]) -> list[str]:
        bundled = list(dict.fromkeys([*WORKER_BASE_SKILLS, *names]))
        return await self._in_worker_dir(worker, lambda target: self.service.seed(worker, bundled, target))
