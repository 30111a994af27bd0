"""Bundled SKILL.md skills (data), one folder each: ``skills/<name>/SKILL.md``.

Each declares its audience in its frontmatter (``metadata: {hiclaw-role: worker|manager}``)::

    from hiclaw.skills import bundled_skills
    [s.name for s in bundled_skills("worker")]  # ['find-skills', 'project-work', 'task-reporting']

Install them into a worker's folder with
:meth:`hiclaw.registry.service.SkillService.install_bundled` (or ``hiclaw skills add <path>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SKILLS_ROOT = Path(__file__).resolve().parent
ROLES = ("worker", "manager")


@dataclass(frozen=True)
class BundledSkill:
    name: str
    description: str
    role: str
    path: Path  # the skill's folder

    @property
    def skill_md(self) -> Path:
        return self.path / "SKILL.md"


def bundled_skills(role: str | None = None) -> list[BundledSkill]:
    """Every bundled skill (or those for ``role``: ``"worker"`` or ``"manager"``), by name."""
    from hiclaw.registry.frontmatter import parse_skill_md

    if role is not None and role not in ROLES:
        raise ValueError(f"unknown role {role!r} (use one of {', '.join(ROLES)})")
    found = []
    for skill_md in sorted(SKILLS_ROOT.glob("*/SKILL.md")):
        meta = parse_skill_md(skill_md.read_bytes(), folder=skill_md.parent.name, where=str(skill_md))
        skill_role = str(meta.metadata.get("hiclaw-role", "worker"))
        if role is None or skill_role == role:
            found.append(BundledSkill(meta.name, meta.description, skill_role, skill_md.parent))
    return found


def bundled_skill(name: str) -> BundledSkill:
    """One bundled skill by name; :class:`hiclaw.errors.NotFoundError` naming the others if absent."""
    from hiclaw.errors import NotFoundError

    for skill in bundled_skills():
        if skill.name == name:
            return skill
    available = ", ".join(s.name for s in bundled_skills())
    raise NotFoundError(f"no bundled skill {name!r}", hint=f"available: {available}")
