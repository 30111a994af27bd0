"""The default skill registry, ``skills-sh``: search skills.sh (or ``SKILLS_API_URL``) and fetch.

Configured by the ``[skills]`` section (``api_url``, ``download_url``, ``max_files``,
``max_bytes``; ``SKILLS_API_URL`` / ``SKILLS_DOWNLOAD_URL`` override). The factory returns a
:class:`hiclaw.registry.client.RegistryClient`, which implements
:class:`hiclaw.protocols.SkillRegistry`. A third-party registry registers another name with
``hiclaw_register_skill_registries`` and is chosen with ``[skills] registry = "<name>"``.
"""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.config import SkillsConfig
from hiclaw.protocols import RegisterSkillRegistry

REGISTRY_NAME = "skills-sh"


def make_registry(settings: SkillsConfig, ctx: Any) -> Any:
    from hiclaw.registry.client import RegistryClient
    from hiclaw.registry.models import Limits

    return RegistryClient(
        settings.api_url,
        settings.download_url,
        limits=Limits(max_files=settings.max_files, max_bytes=settings.max_bytes),
    )


@hookimpl
def hiclaw_register_skill_registries(register: RegisterSkillRegistry) -> None:
    register(
        REGISTRY_NAME,
        make_registry,
        settings_model=SkillsConfig,
        description="skills.sh-compatible registry (search, download API, well-known, git)",
    )
