"""The control plane's skill service: what workers' ``skills_find``/``skills_add``/``skills_read``
tools call (workers never fetch skills themselves — DESIGN section 5).

Policy, from ``[skills]``:

``allowed_sources``
    Glob patterns (case-insensitive) a source must match — ``owner/repo``, ``owner/repo/skill``,
    a URL or its host, e.g. ``["acme/*", "https://skills.internal.example/*"]``. ``["*"]``
    (default) allows any public source. Local paths and non-HTTPS git transports (``file://``,
    ``ssh://``, ``git@``) are never allowed for workers: they would read the control plane's
    files or use its keys.
``trusted_origins``
    Every fetch for a worker goes through one :class:`hiclaw.registry.http.FetchPolicy`: a host
    must resolve to globally routable addresses only, checked once and connected to as checked,
    on every redirect too — except the admin's own origins (exact scheme, host and port): the
    configured ``api_url``/``download_url``, ``trusted_origins``, and ``allowed_sources``
    patterns whose ``scheme://host[:port]`` part is literal. A worker sees every refused or
    failed fetch as the same one line (``cannot fetch URL: not reachable from the team``).
``max_files`` / ``max_bytes``
    Limits of one skill, unpacked.

Progressive disclosure: :meth:`SkillService.catalog` gives name + description of what a worker
has installed (for its prompt); :meth:`SkillService.read` gives the full body when it uses one.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hiclaw.config import SkillsConfig
from hiclaw.errors import HiclawError, InvalidInputError
from hiclaw.protocols import Closeable
from hiclaw.registry.client import RegistryClient
from hiclaw.registry.disk import read_folder
from hiclaw.registry.errors import SkillNotFoundError, SkillPolicyError, UnsafeSkillError
from hiclaw.registry.frontmatter import NAME_RE, SKILL_FILE, parse_skill_md
from hiclaw.registry.hashing import files_hash
from hiclaw.registry.http import NOT_REACHABLE, NOT_REACHABLE_HINT, FetchPolicy
from hiclaw.registry.installer import install, installed
from hiclaw.registry.models import Limits, Provenance
from hiclaw.registry.safety import validated_skill
from hiclaw.registry.scopes import dir_scope
from hiclaw.registry.sources import SourceSpec, parse_source

log = logging.getLogger(__name__)
WORKER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
MAX_QUERY = 200
MAX_RESULTS = 20
MAX_LISTED_FILES = 200


_GLOB = frozenset("*?[")


def trusted_origins(config: SkillsConfig) -> list[str]:
    """The admin's own origins, which workers' fetches may reach even on internal addresses:
    the registry (``api_url``, ``download_url``), ``trusted_origins``, and every
    ``allowed_sources`` pattern that is a URL whose ``scheme://host[:port]`` has no wildcard."""
    origins = [config.api_url, *([config.download_url] if config.download_url else []), *config.trusted_origins]
    for pattern in config.allowed_sources:
        parts = urlparse(pattern.strip())
        if parts.scheme in ("http", "https") and parts.netloc and not _GLOB & set(f"{parts.scheme}{parts.netloc}"):
            origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


def _worker(worker: str) -> str:
    if not WORKER_NAME.match(worker or ""):
        raise InvalidInputError(f"invalid worker name {worker!r}")
    return worker


class SkillService:
    """Find, install and read skills on behalf of workers, within the ``[skills]`` policy."""

    def __init__(
        self,
        config: SkillsConfig | None = None,
        *,
        registry: Any = None,
        worker_skills_dir: Callable[[str], Path] | None = None,
    ) -> None:
        """``registry``: a ``SkillRegistry`` (default: a :class:`RegistryClient` from ``config``);
        ``worker_skills_dir(worker)``: the folder to install into when ``add`` gets none."""
        self.config = config or SkillsConfig()
        self.worker_skills_dir = worker_skills_dir
        self.limits = Limits(max_files=self.config.max_files, max_bytes=self.config.max_bytes)
        #: Where fetches for workers may go (module docstring, ``trusted_origins``).
        self.policy = FetchPolicy(trusted_origins(self.config))
        self._unguarded: Any = None
        if registry is None:
            registry = RegistryClient(self.config.api_url, self.config.download_url, limits=self.limits, policy=self.policy)
        elif isinstance(registry, RegistryClient) and registry.policy is None:
            self._unguarded, registry = registry, registry.guarded(self.policy)  # workers' fetches are guarded
        self.registry = registry
        self._locks: dict[Path, asyncio.Lock] = {}

    async def aclose(self) -> None:
        for registry in (self.registry, self._unguarded):
            if isinstance(registry, Closeable):
                await registry.aclose()

    # ------------------------------------------------------------------ policy

    def allowed(self, spec: SourceSpec) -> bool:
        patterns = [p.lower() for p in self.config.allowed_sources]
        return any(fnmatch.fnmatchcase(name.lower(), pattern) for name in spec.identifiers() for pattern in patterns)

    def check_source(self, source: str, skill: str | None = None) -> SourceSpec:
        """Parse ``source`` and apply the policy; raises :class:`SkillPolicyError` when refused."""
        spec = parse_source(source, skill)
        if spec.kind == "local":
            raise SkillPolicyError("workers may not install skills from local paths", hint="name a registry skill (owner/repo@skill) or an https URL")
        if spec.kind == "git" and not (spec.url or "").startswith("https://"):
            raise SkillPolicyError(f"workers may install git sources over https only (got {source!r})")
        refused = self.policy.literal_refusal(spec.url) if spec.url else None
        if refused is not None:  # on its face (a name is resolved, checked and pinned when fetched)
            log.warning("skills: refusing source %r for a worker: %s", spec.url, refused)
            raise SkillPolicyError(f"cannot fetch {spec.url}: {NOT_REACHABLE}", hint=NOT_REACHABLE_HINT)
        if not self.allowed(spec):
            raise SkillPolicyError(
                f"source {spec.display!r} is not allowed by [skills] allowed_sources",
                hint=f"allowed: {', '.join(self.config.allowed_sources) or 'nothing'}; ask the admin to add it",
            )
        return spec

    # ------------------------------------------------------------------ operations

    def _target(self, worker: str, target_dir: Path | None) -> Path:
        if target_dir is not None:
            return Path(target_dir)
        if self.worker_skills_dir is None:
            raise InvalidInputError("no skills folder given for the worker")
        return Path(self.worker_skills_dir(worker))

    async def find(self, worker: str, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """Registry search for ``worker``; hits the policy would refuse are left out."""
        _worker(worker)
        query = " ".join(str(query).split())[:MAX_QUERY]
        if not query:
            raise InvalidInputError("empty search query", hint="describe the capability you need, e.g. 'pdf tables'")
        results = await self.registry.search(query, limit=max(1, min(limit, MAX_RESULTS)))
        hits = []
        for r in results:
            try:
                spec = parse_source(r.install_source)
            except InvalidInputError:
                continue
            if self.allowed(spec):
                hits.append({"source": r.install_source, "name": r.name, "description": r.description, "installs": r.installs})
        log.info("skills: worker %s searched %r (%d hits)", worker, query, len(hits))
        return hits

    async def add(self, worker: str, source: str, skill: str | None = None, target_dir: Path | None = None) -> dict[str, Any]:
        """Fetch, verify and install one skill into ``target_dir`` (the worker's skills folder)."""
        target = self._target(_worker(worker), target_dir)
        if skill is not None and not NAME_RE.match(skill):
            raise InvalidInputError(f"invalid skill name {skill!r}", hint="skill names are like 'pdf-tools'")
        spec = self.check_source(source, skill)
        try:
            fetched = await self.registry.fetch(spec)
        except HiclawError as exc:
            log.info("skills: worker %s could not install %s: %s", worker, spec.display, exc)
            raise
        if len(fetched) != 1:
            names = ", ".join(s.name for s in fetched[:20])
            raise InvalidInputError(f"{spec.display} has {len(fetched)} skills ({names})", hint="name the one you want")
        result = await self._install(fetched[0], target)
        log.info("skills: worker %s installed %s from %s", worker, result.name, spec.display)
        return {"name": result.name, "description": result.description, "files": result.files,
                "source": result.source, "path": result.path}

    async def _install(self, skill: Any, target: Path) -> Any:
        scope = dir_scope(target)
        async with self._locks.setdefault(scope.skills_dir, asyncio.Lock()):  # one install per folder at a time
            return await asyncio.to_thread(install, skill, scope, limits=self.limits)

    async def install_bundled(self, target_dir: Path, names: Sequence[str]) -> list[str]:
        """Install bundled skills (``hiclaw.skills``) by name into ``target_dir``; returns the names.

        Skills already installed with the same content are left alone (cheap to call at every boot)."""
        from hiclaw.skills import bundled_skill

        done = []
        for name in names:
            folder = bundled_skill(name).path
            skill, digest = await self._bundled(folder)
            current = dir_scope(Path(target_dir)).lock().skills.get(name) or {}
            if current.get("computedHash") != digest or not (Path(target_dir) / name / SKILL_FILE).is_file():
                await self._install(skill, Path(target_dir))
            done.append(name)
        return done

    async def _bundled(self, folder: Path) -> tuple[Any, str]:
        """A bundled skill read and validated once per process (they ship with hiclaw and do not
        change while it runs), with its hash: seeding many workers costs one parse per skill."""
        cache: dict[Path, tuple[Any, str]] = self.__dict__.setdefault("_bundled_cache", {})
        if folder not in cache:
            files = await asyncio.to_thread(read_folder, folder, self.limits, where=str(folder))
            provenance = Provenance(source=str(folder), source_type="local")
            skill = validated_skill(files, folder=folder.name, provenance=provenance, limits=self.limits,
                                    where=str(folder))
            cache[folder] = (skill, files_hash(files))
        return cache[folder]

    async def seed(self, worker: str, names: Sequence[str], target_dir: Path | None = None) -> list[str]:
        """Install the bundled skills ``names`` for ``worker`` (see :meth:`install_bundled`)."""
        return await self.install_bundled(self._target(_worker(worker), target_dir), names)

    def read(self, target_dir: Path, name: str) -> dict[str, Any]:
        """The full SKILL.md of an installed skill, plus the names of its other files."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidInputError(f"invalid skill name {name!r}", hint="use a name from your skills catalogue")
        folder = Path(target_dir) / name
        skill_md = folder / SKILL_FILE
        if folder.is_symlink() or not skill_md.is_file():
            raise SkillNotFoundError(f"skill {name!r} is not installed", hint="see your skills catalogue, or skills_find")
        meta = parse_skill_md(skill_md.read_bytes(), folder=name, where=f"skill {name!r}")
        others = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p != skill_md
        )
        return {"name": meta.name, "description": meta.description, "body": meta.body.strip(),
                "files": others[:MAX_LISTED_FILES], "path": str(folder)}

    def catalog(self, target_dir: Path) -> list[dict[str, str]]:
        """Name and description of each installed skill (what an agent sees before reading one)."""
        try:
            return [{"name": s.name, "description": s.description} for s in installed(dir_scope(Path(target_dir)))]
        except (OSError, UnsafeSkillError):
            return []

    def for_worker(self, worker: str, target_dir: Path | None = None) -> WorkerSkills:
        return WorkerSkills(self, _worker(worker), self._target(worker, target_dir))


class WorkerSkills:
    """:class:`SkillService` bound to one worker — the backend of its skill tools."""

    def __init__(self, service: SkillService, worker: str, target_dir: Path) -> None:
        self.service, self.worker, self.target_dir = service, worker, target_dir

    async def find(self, query: str) -> list[dict[str, Any]]:
        return await self.service.find(self.worker, query)

    async def add(self, source: str, skill: str | None = None) -> dict[str, Any]:
        return await self.service.add(self.worker, source, skill, self.target_dir)

    async def read(self, name: str) -> dict[str, Any]:
        return self.service.read(self.target_dir, name)

    async def catalog(self) -> list[dict[str, str]]:
        return self.service.catalog(self.target_dir)


def render_catalog(entries: list[dict[str, str]]) -> str:
    """The catalogue as prompt text (one line per skill)."""
    if not entries:
        return "No skills installed. Use skills_find to look for one."
    lines = [f"- {e['name']}: {e['description']}" for e in entries]
    return "Installed skills (call skills_read(name) before using one):\n" + "\n".join(lines)
