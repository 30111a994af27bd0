"""The skills.sh-compatible registry client (the ``skills-sh`` skill registry).

``search`` speaks ``GET {api}/api/search?q=&limit=[&owner=]``; ``fetch`` resolves any source of
:mod:`hiclaw.registry.sources` into verified in-memory skills (:class:`FetchedSkill`) — nothing
is written to disk here; :mod:`hiclaw.registry.installer` does that, atomically.
"""
from __future__ import annotations

import asyncio
import shutil
from typing import Any
from urllib.parse import quote, urlparse

from hiclaw.registry import safety
from hiclaw.registry.disk import GitCheckout, list_tree, read_folder, skill_md_path
from hiclaw.registry.errors import RegistryError, SkillNotFoundError, SkillPolicyError, UnsafeSkillError
from hiclaw.registry.frontmatter import NAME_RE, parse_skill_md, strip_controls
from hiclaw.registry.http import FetchPolicy, HttpFetcher
from hiclaw.registry.models import FetchedSkill, Limits, Provenance, SearchResult
from hiclaw.registry.safety import validated_skill
from hiclaw.registry.sources import SourceSpec, parse_source
from hiclaw.registry.wellknown import fetch_well_known

DEFAULT_API_URL = "https://skills.sh"
MAX_SEARCH_LIMIT = 100
SEARCH_BODY_LIMIT = 4 * 1024 * 1024


def _search_result(raw: object) -> SearchResult | None:
    """One search hit; tolerates a missing ``skillId``/``source`` by deriving them from ``id``."""
    if not isinstance(raw, dict):
        return None
    skill_id, source, ident = raw.get("skillId"), raw.get("source"), raw.get("id")
    parts = ident.split("/") if isinstance(ident, str) else []
    if not isinstance(skill_id, str) or not skill_id:
        skill_id = parts[-1] if len(parts) >= 3 else raw.get("name")
    if not isinstance(source, str) or not source:
        source = "/".join(parts[:2]) if len(parts) >= 3 else None
    if not isinstance(skill_id, str) or not isinstance(source, str) or not skill_id or not source:
        return None
    raw_name = raw.get("name")
    name = raw_name if isinstance(raw_name, str) else skill_id
    installs = raw.get("installs")
    description = raw.get("description")
    return SearchResult(
        id=strip_controls(ident if isinstance(ident, str) and ident else f"{source}/{skill_id}"),
        skill_id=strip_controls(skill_id),
        name=strip_controls(name),
        source=strip_controls(source),
        installs=installs if isinstance(installs, int) and installs >= 0 else 0,
        description=strip_controls(description)[:1024] if isinstance(description, str) else "",
    )


class RegistryClient:
    """Search a registry and fetch skills from any source. Implements ``SkillRegistry``."""

    #: Where a GitHub repository's tarball comes from when git is not installed.
    github_archive = "https://codeload.github.com/{owner}/{repo}/tar.gz/{ref}"

    def __init__(
        self,
        api_url: str | None = None,
        download_url: str | None = None,
        *,
        limits: Limits | None = None,
        fetcher: HttpFetcher | None = None,
        timeout: float = 15.0,
        retries: int = 3,
        policy: FetchPolicy | None = None,
    ) -> None:
        """``policy``: every fetch (HTTP and git) obeys it — the control plane fetching for a
        worker (see :mod:`hiclaw.registry.http`); ``fetcher`` must then carry the same policy."""
        self.api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self.download_url = (download_url or self.api_url).rstrip("/")
        self.limits = limits or Limits()
        self.timeout, self.retries = timeout, retries
        if fetcher is not None and policy is not None and fetcher.policy is not policy:
            raise ValueError("the fetcher of a guarded registry client must carry its policy")
        self.policy = policy if policy is not None else (fetcher.policy if fetcher is not None else None)
        self._own_fetcher = fetcher is None
        self.http = fetcher or HttpFetcher(timeout=timeout, retries=retries, policy=policy)

    def guarded(self, policy: FetchPolicy) -> RegistryClient:
        """The same registry, every fetch under ``policy`` (a new client with its own connections)."""
        return RegistryClient(self.api_url, self.download_url, limits=self.limits, timeout=self.timeout,
                              retries=self.retries, policy=policy)

    async def aclose(self) -> None:
        if self._own_fetcher:
            await self.http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ search

    async def search(self, query: str, *, limit: int = 10, owner: str | None = None) -> list[SearchResult]:
        """Skills matching ``query`` (the registry ranks them)."""
        query = " ".join(query.split())
        if not query:
            return []
        params: dict[str, Any] = {"q": query, "limit": max(1, min(limit, MAX_SEARCH_LIMIT))}
        if owner:
            params["owner"] = owner
        url = f"{self.api_url}/api/search"
        data = await self.http.get_json(url, max_bytes=SEARCH_BODY_LIMIT, params=params)
        if not isinstance(data, dict) or not isinstance(data.get("skills"), list):
            raise RegistryError(f"{url} answered without a 'skills' list", hint="is SKILLS_API_URL a skills registry?")
        results = [r for r in map(_search_result, data["skills"]) if r is not None]
        return results[: params["limit"]]

    # ------------------------------------------------------------------ fetch

    async def fetch(self, source: str | SourceSpec, skill: str | None = None) -> list[FetchedSkill]:
        """Fetch and verify the skill(s) ``source`` names (all of them when no skill is given)."""
        spec = source if isinstance(source, SourceSpec) else parse_source(source, skill)
        if spec.skill is not None and not NAME_RE.match(spec.skill):
            raise UnsafeSkillError(f"skill name {strip_controls(spec.skill)[:70]!r} is not a valid skill name")
        if spec.kind == "registry":
            return await self._fetch_registry(spec)
        if spec.kind == "well-known":
            assert spec.url is not None
            return await fetch_well_known(self.http, spec.url, spec.skill, self.limits)
        if spec.kind == "download":
            return await self._fetch_archive(spec)
        if spec.kind == "git":
            return await self._fetch_repo(spec)
        if self.policy is not None:
            raise SkillPolicyError("a guarded registry client reads no local folders", hint="name a registry skill or a URL")
        return await asyncio.to_thread(self._fetch_local, spec)

    async def _fetch_repo(self, spec: SourceSpec) -> list[FetchedSkill]:
        """A git repository: ``git clone``; a GitHub repo without git installed: its tarball."""
        if spec.owner_repo and shutil.which("git") is None:
            return await self._fetch_github_tarball(spec)
        return await asyncio.to_thread(self._fetch_git, spec)

    async def _fetch_github_tarball(self, spec: SourceSpec) -> list[FetchedSkill]:
        assert spec.owner and spec.repo
        url = self.github_archive.format(owner=quote(spec.owner), repo=quote(spec.repo), ref=quote(spec.ref or "HEAD"))
        _, body, _ = await self.http.get(url, max_bytes=self.limits.max_download_bytes * 4)
        repo_limits = Limits(max_files=self.limits.max_files * 20, max_bytes=self.limits.max_bytes * 8)
        tree = safety.strip_single_top_folder(safety.unpack_archive(body, repo_limits, where=url))
        if spec.subpath:
            tree = safety.subtree(tree, spec.subpath)
        provenance = Provenance(source=spec.owner_repo or "", source_type="github", ref=spec.ref,
                                source_url=f"https://github.com/{spec.owner}/{spec.repo}.git")
        skills = self._pick_from_tree(tree, spec, provenance, where=url)
        if spec.subpath:  # record paths relative to the repository, as a clone would
            for skill in skills:
                skill.provenance.skill_path = f"{spec.subpath}/{skill.provenance.skill_path}"
        return skills

    async def _fetch_registry(self, spec: SourceSpec) -> list[FetchedSkill]:
        assert spec.owner and spec.repo
        if spec.skill is None:
            scoped = f"{self.download_url}/{quote(spec.owner)}/{quote(spec.repo)}"
            try:
                return await fetch_well_known(self.http, scoped, None, self.limits, source=spec.owner_repo)
            except SkillNotFoundError:
                return await self._fetch_repo(_as_github(spec))
        slug = spec.skill
        url = f"{self.download_url}/api/download/{quote(spec.owner)}/{quote(spec.repo)}/{quote(slug)}"
        limits = self.limits
        data = await self.http.get_json(url, max_bytes=limits.max_download_bytes, not_found_ok=True)
        if data is None:
            if urlparse(self.download_url).hostname in ("skills.sh", "www.skills.sh"):
                return await self._fetch_repo(_as_github(spec))
            raise SkillNotFoundError(
                f"registry {self.download_url} has no skill {spec.owner_repo}@{slug}",
                hint="search with `hiclaw skills find`, or check SKILLS_API_URL / SKILLS_DOWNLOAD_URL",
            )
        files = _download_files(data, url, limits)
        announced = data.get("hash")
        if not isinstance(announced, str) or not announced:
            raise UnsafeSkillError(f"{url} gave no content hash", hint="refusing an unverifiable download")
        provenance = Provenance(source=spec.owner_repo or "", source_type="registry", source_url=url)
        return [validated_skill(files, folder=slug, provenance=provenance, limits=limits, where=url, expected_hash=announced)]

    async def _fetch_archive(self, spec: SourceSpec) -> list[FetchedSkill]:
        assert spec.url is not None
        _, body, _ = await self.http.get(spec.url, max_bytes=self.limits.max_download_bytes)
        # The whole archive may hold several skills; unpack with room for a repository.
        repo_limits = Limits(max_files=self.limits.max_files * 10, max_bytes=self.limits.max_bytes * 4)
        tree = safety.strip_single_top_folder(safety.unpack_archive(body, repo_limits, where=spec.url))
        provenance = Provenance(source=spec.url, source_type="download", source_url=spec.url)
        return self._pick_from_tree(tree, spec, provenance, where=spec.url)

    def _pick_from_tree(self, tree: dict[str, bytes], spec: SourceSpec, provenance: Provenance, *, where: str) -> list[FetchedSkill]:
        folders = _choose(safety.skill_folders(tree), spec, where, read=lambda f: tree[skill_md_path(f)])
        return [
            validated_skill(
                safety.subtree(tree, folder),
                folder=folder.rsplit("/", 1)[-1] if folder else None,
                provenance=provenance.model_copy(update={"skill_path": skill_md_path(folder)}),
                limits=self.limits,
                where=f"{where}:{folder or '/'}",
            )
            for folder in folders
        ]

    def _fetch_git(self, spec: SourceSpec) -> list[FetchedSkill]:
        assert spec.url is not None
        github = spec.owner_repo is not None and "github.com" in spec.url
        with GitCheckout(spec.url, spec.ref, policy=self.policy) as checkout:
            root = checkout.root / spec.subpath if spec.subpath else checkout.root
            if not root.is_dir():
                raise SkillNotFoundError(f"{spec.url} has no folder {spec.subpath!r}")
            paths = list_tree(root)
            base = f"{spec.subpath}/" if spec.subpath else ""
            folders = _choose(safety.skill_folders(paths), spec, spec.url, read=lambda f: (root / skill_md_path(f)).read_bytes())
            skills = []
            for folder in folders:
                repo_folder = (base + folder).rstrip("/")
                provenance = Provenance(
                    source=spec.owner_repo if github and spec.owner_repo else spec.url,
                    source_type="github" if github else "git",
                    source_url=spec.url,
                    ref=spec.ref,
                    skill_path=skill_md_path(repo_folder),
                    folder_hash=checkout.tree_sha(repo_folder),
                )
                where = f"{spec.url}:{repo_folder or '/'}"
                files = read_folder(root / folder if folder else root, self.limits, where=where)
                skills.append(validated_skill(files, folder=folder.rsplit("/", 1)[-1] if folder else None,
                                              provenance=provenance, limits=self.limits, where=where))
            return skills

    def _fetch_local(self, spec: SourceSpec) -> list[FetchedSkill]:
        assert spec.path is not None
        root = spec.path.resolve()
        if not root.is_dir():
            raise SkillNotFoundError(f"no folder {spec.path}", hint="give the path of a skill folder or a folder of skills")
        folders = _choose(safety.skill_folders(list_tree(root)), spec, str(root),
                          read=lambda f: (root / skill_md_path(f)).read_bytes())
        skills = []
        for folder in folders:
            path = root / folder if folder else root
            provenance = Provenance(source=str(path), source_type="local")
            files = read_folder(path, self.limits, where=str(path))
            skills.append(validated_skill(files, folder=path.name, provenance=provenance, limits=self.limits, where=str(path)))
        return skills


def _as_github(spec: SourceSpec) -> SourceSpec:
    return SourceSpec("git", spec.raw, skill=spec.skill, owner=spec.owner, repo=spec.repo, url=spec.github_url())


def _choose(folders: list[str], spec: SourceSpec, where: str, *, read: Any) -> list[str]:
    """Pick the requested skill's folder (by folder or frontmatter name), or all of them."""
    if not folders:
        raise SkillNotFoundError(f"{where} holds no SKILL.md", hint="point at a folder containing skills")
    if spec.skill is None:
        return folders
    wanted = spec.skill
    by_folder = [f for f in folders if (f.rsplit("/", 1)[-1] if f else "") == wanted]
    if by_folder:
        return by_folder[:1]
    for folder in folders:
        try:
            if parse_skill_md(read(folder), where=f"{where}:{folder}").name == wanted:
                return [folder]
        except UnsafeSkillError:
            continue
    names = ", ".join(sorted(f.rsplit("/", 1)[-1] or "(root)" for f in folders)[:20])
    raise SkillNotFoundError(f"{where} has no skill {wanted!r} (it has: {names})")


def _download_files(data: object, url: str, limits: Limits) -> dict[str, bytes]:
    """Files of a ``/api/download`` answer: ``{"files": [{"path", "contents"}], "hash"}``."""
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise RegistryError(f"{url} answered without a 'files' list", hint="is SKILLS_DOWNLOAD_URL a skills registry?")
    files: dict[str, bytes] = {}
    for item in data["files"]:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(item.get("contents"), str):
            raise UnsafeSkillError(f"{url} has a malformed file entry", hint="each file needs 'path' and 'contents' strings")
        path = item["path"]
        problem = safety.path_problem(path)
        if problem:
            raise UnsafeSkillError(f"{url} contains {problem}", hint="refusing to install it")
        if path in files:
            raise UnsafeSkillError(f"{url} lists {path!r} twice")
        files[path] = item["contents"].encode("utf-8")
        if len(files) > limits.max_files:
            raise UnsafeSkillError(f"{url} has more than {limits.max_files} files", hint="raise [skills] max_files if you trust it")
    return files

