"""The workers' skill tools as :class:`hiclaw.models.ToolSpec` s: ``skills_find``, ``skills_add``,
``skills_read``.

``skill_tool_specs(backend)`` takes any object with async ``find(query)``, ``add(source, skill)``
and ``read(name)`` — on the control plane a :class:`hiclaw.registry.service.WorkerSkills`; in a
worker, a client of the control API that forwards the same calls. Errors a model can act on
(:class:`hiclaw.errors.HiclawError`) come back as ``{"error": "..."}`` rather than raising.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hiclaw.errors import HiclawError
from hiclaw.models import ToolSpec


class SkillsBackend(Protocol):
    async def find(self, query: str) -> list[dict[str, Any]]: ...

    async def add(self, source: str, skill: str | None = None) -> dict[str, Any]: ...

    async def read(self, name: str) -> dict[str, Any]: ...


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _safe(call: Callable[[dict[str, Any]], Awaitable[Any]]) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """User-level failures become ``{"error": ...}`` the model can read and act on."""

    async def handler(args: dict[str, Any]) -> Any:
        try:
            return await call(args)
        except HiclawError as exc:
            return {"error": str(exc)}

    return handler


def skill_tool_specs(backend: SkillsBackend) -> list[ToolSpec]:
    async def find(args: dict[str, Any]) -> Any:
        return {"results": await backend.find(str(args.get("query", "")))}

    async def add(args: dict[str, Any]) -> Any:
        return {"installed": await backend.add(str(args.get("source", "")), args.get("skill") or None)}

    async def read(args: dict[str, Any]) -> Any:
        return await backend.read(str(args.get("name", "")))

    return [
        ToolSpec(
            name="skills_find",
            description="Search the skills registry for a skill that teaches a capability you lack "
                        "(e.g. 'pdf tables', 'terraform'). Returns source, name, description, installs.",
            parameters=_object({"query": {"type": "string", "description": "What you need, in a few words."}}, ["query"]),
            handler=_safe(find),
        ),
        ToolSpec(
            name="skills_add",
            description="Install a skill found with skills_find into your skills folder. The control plane "
                        "fetches and verifies it; then call skills_read(name) to use it.",
            parameters=_object({
                "source": {"type": "string", "description": "The 'source' from skills_find, e.g. 'acme/tools@pdf-tools', or a registry URL."},
                "skill": {"type": "string", "description": "Skill name when source holds several (optional)."},
            }, ["source"]),
            handler=_safe(add),
        ),
        ToolSpec(
            name="skills_read",
            description="Read an installed skill's full instructions (SKILL.md body) and list its other files "
                        "(read those with read_file). Do this before following a skill.",
            parameters=_object({"name": {"type": "string", "description": "Skill name from your catalogue."}}, ["name"]),
            handler=_safe(read),
        ),
    ]
