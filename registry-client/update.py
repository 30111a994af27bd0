"""Re-fetch locked skills from where they came from and reinstall the ones that changed.

Works on entries written by ``hiclaw skills add`` and by the ``skills`` CLI alike: the source
is rebuilt from ``sourceType``/``source``/``sourceUrl``/``ref``/``skillPath``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hiclaw.errors import HiclawError
from hiclaw.registry.client import RegistryClient
from hiclaw.registry.hashing import files_hash, folder_hash
from hiclaw.registry.installer import install
from hiclaw.registry.scopes import Scope
from hiclaw.registry.sources import SourceSpec

_DOWNLOAD_URL = re.compile(r"^(https?://.+?)/api/download/([^/]+)/([^/]+)/([^/]+)$")


@dataclass
class UpdateResult:
    name: str
    status: str  # updated | current | failed | skipped
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def spec_from_entry(name: str, entry: dict[str, Any]) -> tuple[SourceSpec, str | None]:
    """``(source, download_base)`` to re-fetch a locked skill; raises if it cannot be rebuilt."""
    kind = entry.get("sourceType")
    source = str(entry.get("source") or "")
    url = entry.get("sourceUrl")
    ref = entry.get("ref") or None
    if kind == "registry":
        match = _DOWNLOAD_URL.match(str(url or ""))
        if not match:
            raise HiclawError(f"lock entry of {name!r} has no download URL", hint="re-add it with `hiclaw skills add`")
        base, owner, repo, slug = match.groups()
        return SourceSpec("registry", str(url), skill=slug, owner=owner, repo=repo), base
    if kind == "well-known":
        base = entry.get("sourceBaseUrl") or url
        if not base:
            raise HiclawError(f"lock entry of {name!r} has no source URL")
        base = str(base).split("/.well-known/", 1)[0]
        return SourceSpec("well-known", base, skill=name, url=base), None
    if kind in ("github", "git"):
        clone = url or (f"https://github.com/{source}.git" if kind == "github" else source)
        skill_path = entry.get("skillPath")
        subpath = str(PurePosixPath(skill_path).parent) if skill_path else None
        owner_repo = source.split("/") if kind == "github" and source.count("/") == 1 else [None, None]
        return SourceSpec("git", clone, skill=name, url=clone, ref=ref, owner=owner_repo[0], repo=owner_repo[1],
                          subpath=None if subpath in (None, ".", "") else subpath), None
    if kind == "local":
        return SourceSpec("local", source, skill=name, path=Path(source)), None
    if kind == "download" and url:
        return SourceSpec("download", url, skill=name, url=url), None
    raise HiclawError(f"lock entry of {name!r} has source type {kind!r}, which cannot be updated automatically",
                      hint="re-add it with `hiclaw skills add`")


async def update(scope: Scope, client: RegistryClient, names: list[str] | None = None) -> list[UpdateResult]:
    """Update every locked skill (or ``names``) in ``scope``; one failure does not stop the rest."""
    lock = scope.lock()
    wanted = names or sorted(lock.skills)
    results: list[UpdateResult] = []
    for name in wanted:
        entry = lock.skills.get(name)
        if not isinstance(entry, dict):
            results.append(UpdateResult(name, "failed", "not in the lock file"))
            continue
        try:
            spec, download_base = spec_from_entry(name, entry)
            fetcher = client
            if download_base and download_base.rstrip("/") != client.download_url:
                fetcher = RegistryClient(client.api_url, download_base, limits=client.limits, fetcher=client.http)
            fetched = [s for s in await fetcher.fetch(spec) if s.name == name]
            if not fetched:
                raise HiclawError(f"{spec.display} no longer has skill {name!r}")
            skill = fetched[0]
            folder = scope.skill_dir(name)
            fresh = files_hash(skill.files)
            if fresh == entry.get("computedHash") and folder.is_dir() and folder_hash(folder) == fresh:
                results.append(UpdateResult(name, "current"))
                continue
            install(skill, scope, limits=client.limits)
            results.append(UpdateResult(name, "updated", spec.display))
        except HiclawError as exc:
            results.append(UpdateResult(name, "failed", str(exc)))
    return results
