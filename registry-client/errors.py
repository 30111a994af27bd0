"""Error types of the skills subsystem (all :class:`hiclaw.errors.HiclawError`: one line, exit 1)."""
from __future__ import annotations

from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError


class RegistryError(HiclawError):
    """A registry could not be reached or answered badly; the message names its URL."""


class UnsafeSkillError(InvalidInputError):
    """A skill was refused: bad path, link, too big, bad digest or invalid SKILL.md."""


class SkillNotFoundError(NotFoundError):
    """No skill with that name at that source, or not installed."""


class SkillPolicyError(HiclawError):
    """The ``[skills]`` policy forbids this (source not allowed, size limits)."""
