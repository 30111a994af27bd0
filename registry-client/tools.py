"""The workers' skill tools as :class:`hiclaw.models.ToolSpec` s: ``skills_find``, ``skills_add``,
``skills_read``.

``skill_tool_specs(backend)`` takes any object with async ``find(query)``, ``add(source, skill)``
and ``read(name)`` — on the control plane a :class:`hiclaw.registry.service.WorkerSkills`; in a
worker, a client of the control API that forwards the same calls. Errors a model can act on
(:class:`hiclaw.errors.HiclawError`) come back as ``{"error": "..."}`` rather than raising.
"""
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hiclaw.agent.functions import function_tool
from hiclaw.errors import HiclawError
from hiclaw.models import ToolSpec


class SkillsBackend(Protocol):
    async def find(self, query: str) -> list[dict[str, Any]]: ...

    async def add(self, source: str, skill: str | None = None) -> dict[str, Any]: ...

    async def read(self, name: str) -> dict[str, Any]: ...


def _safe(call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """User-level failures become ``{"error": ...}`` the model can read and act on."""

    @functools.wraps(call)
    async def handler(**kwargs: Any) -> Any:
        try:
            return await call(**kwargs)
        except HiclawError as exc:
            return {"error": str(exc)}

    return handler


def skill_tool_specs(backend: SkillsBackend) -> list[ToolSpec]:
    async def skills_find(query: str) -> Any:
        """Search the skills registry for a skill that teaches a capability you lack (e.g. 'pdf tables',
        'terraform'). Returns source, name, description, installs.

        Args:
            query: What you need, in a few words.
        """
        return {"results": await backend.find(query)}

    async def skills_add(source: str, skill: str | None = None) -> Any:
        """Install a skill found with skills_find into your skills folder. The control plane fetches and verifies
        it; then call skills_read(name) to use it.

        Args:
            source: The 'source' from skills_find, e.g. 'acme/tools@pdf-tools', or a registry URL.
            skill: Skill name when source holds several (optional).
        """
        return {"installed": await backend.add(source, skill or None)}

    async def skills_read(name: str) -> Any:
        """Read an installed skill's full instructions (SKILL.md body) and list its other files (read those with
        read_file). Do this before following a skill.

        Args:
            name: Skill name from your catalogue.
        """
        return await backend.read(name)

    return [function_tool(_safe(tool)) for tool in (skills_find, skills_add, skills_read)]
