"""The team's skills: workers' `skills_find`/`skills_add` run here, in the control plane.

Workers never fetch skills themselves (DESIGN section 5). The control plane fetches, verifies and
installs into the worker's ``agents/<name>/skills/`` through a private staging folder, uploaded
with the storage API (:func:`in_worker_skills`), whatever the storage.

A worker's recorded skills are bundled ones (seeded at every start) or registry skills. Creating a
worker installs its registry skills first (:meth:`TeamSkills.prepare`: found by exact name, or
given as a source such as ``owner/repo@skill``), so a skill that cannot be had refuses the
creation and nothing is recorded. At every later start a registry skill missing from the
worker's folder is installed again; if that fails the worker starts without it (its role, room,
token and tasks do not depend on one skill, and it can still ``skills_find``/``skills_add``
itself) and the admin is told once, in the Manager room, through the outbox.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.state import ROOM_MANAGER, StateDB

if TYPE_CHECKING:
    from hiclaw.config import HiclawConfig, SkillsConfig
    from hiclaw.control.chat import ControlChat
from hiclaw.storage import layout

log = logging.getLogger(__name__)

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


def team_registry(host: PluginHost, config: HiclawConfig, home: Path) -> Any:
    """The ``[skills] registry`` plugin's client, or None (the service's own skills.sh client)."""
    try:
        return host.create("skill_registry", config.skills.registry, config.skills.model_dump(), ComponentContext(
            home=home, side="control", config=config, host=host), section="skills")
    except Exception:  # noqa: BLE001 - fall back to the service's own skills.sh client
        return None


class TeamSkills:
    """``registry``: the skill registry plugin's client (:func:`team_registry`), or None; the
    installs go through ``storage``, are logged in ``state`` and a skill that cannot be had at a
    start is told to ``admin`` through ``chat``'s outbox."""

    def __init__(self, config: SkillsConfig, *, registry: Any, storage: Any, state: StateDB, chat: ControlChat,
                 admin: str = "admin") -> None:
        from hiclaw.registry.service import SkillService

        self.storage, self.state, self.chat, self.admin = storage, state, chat, admin
        self.service = SkillService(config, registry=registry)

    async def aclose(self) -> None:
        await self.service.aclose()

    async def _in_worker_dir(self, worker: str, action: Any) -> Any:
        return await in_worker_skills(self.storage, worker, action)

    async def find(self, worker: str, query: str, limit: int = 10) -> list[dict[str, Any]]:
        return await self.service.find(worker, query, limit)

    async def add(self, worker: str, source: str, skill: str | None) -> dict[str, Any]:
        result = await self._in_worker_dir(worker, lambda target: self.service.add(worker, source, skill, target))
        self.state.log_event("skill.installed", worker, source=source, skill=skill)
        return result

    async def prepare(self, worker: str, names: Sequence[str]) -> list[str]:
        """The skills to record for ``worker`` (being created or updated): the bundled ones asked
        for, and every other one found in the registry and installed into its folder now. One that
        cannot be installed raises, in one line, before anything is recorded."""
        bundled, extra = split_skills(names)
        if not extra:
            return sorted(set(bundled))

        async def install_all(target: Path) -> list[str]:
            present = {entry["name"] for entry in self.service.catalog(target)}
            done = []
            for name in extra:
                try:
                    done.append(name if name in present else await self._install(worker, name, target))
                except Exception as exc:  # noqa: BLE001 - any failure refuses the creation, in one line
                    raise InvalidInputError(f"cannot install skill {name!r} for {worker}: {one_line(exc)}",
                                            hint="nothing was created; check the name with `hiclaw skills find`, "
                                                 "or give its source (owner/repo@skill)") from None
            return done

        installed = await self._in_worker_dir(worker, install_all)
        return sorted(set(bundled) | set(installed))

    async def _install(self, worker: str, name: str, target: Path) -> str:
        """Install one registry skill: by exact name (searched), or a source; its installed name."""
        from hiclaw.registry.frontmatter import NAME_RE

        if NAME_RE.match(name):
            hits = [h for h in await self.service.find(worker, name, limit=20) if h["name"] == name]
            if not hits:
                raise NotFoundError(f"no skill named {name!r} in the registry {self.service.config.api_url}")
            result = await self.service.add(worker, hits[0]["source"], name, target)
        else:
            result = await self.service.add(worker, name, None, target)
        self.state.log_event("skill.installed", worker, source=result.get("source"), skill=result["name"])
        return str(result["name"])

    async def seed(self, worker: str, names: Sequence[str]) -> list[str]:
        """At every start: the bundled skills (re)installed; a registry skill missing from the
        worker's folder installed again, or — if it cannot be — left out and reported once."""
        bundled, extra = split_skills(names)
        base = list(dict.fromkeys([*WORKER_BASE_SKILLS, *bundled]))
        missing: list[tuple[str, str]] = []

        async def action(target: Path) -> list[str]:
            done = list(await self.service.seed(worker, base, target))
            present = {entry["name"] for entry in self.service.catalog(target)}
            for name in extra:
                try:
                    done.append(name if name in present else await self._install(worker, name, target))
                except Exception as exc:  # noqa: BLE001 - the worker starts without it; the admin is told
                    missing.append((name, one_line(exc)))
            return done

        done = await self._in_worker_dir(worker, action)
        for name, why in missing:
            await self._report_missing(worker, name, why)
        return done

    async def _report_missing(self, worker: str, skill: str, why: str) -> None:
        log.warning("worker %s starts without its skill %s: %s", worker, skill, why)
        state, admin = self.state, self.admin
        with state.transaction():
            told = state.enqueue_message(
                f"skill-missing:{worker}:{skill}", ROOM_MANAGER,
                f"@{admin} worker **{worker}** started without its skill `{skill}`, which cannot be installed: {why}. "
                "It works on without it (and tries again at each start).", [admin])
            if told:
                state.log_event("worker.skill_missing", worker, skill=skill, reason=why)
        if told:
            await self.chat.flush()


@cache
def bundled_names() -> frozenset[str]:
    from hiclaw.skills import bundled_skills

    return frozenset(s.name for s in bundled_skills())


def split_skills(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``names`` as (bundled skills, registry skills or sources), each without repeats."""
    unique = list(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
    return [n for n in unique if n in bundled_names()], [n for n in unique if n not in bundled_names()]


def one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, HiclawError) else " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
