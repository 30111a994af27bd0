"""``hiclaw registry serve DIR`` — a private skills registry both ``hiclaw`` and ``npx skills`` use.

Routes (all JSON unless noted; unknown paths 404, bad queries an empty result, never a 5xx):

``GET /api/search?q=&limit=&owner=``
    ``{"skills": [{"id", "skillId", "name", "source", "installs", "description"}]}``, ranked.
``GET /api/download/{owner}/{repo}/{skill}``
    ``{"files": [{"path", "contents"}], "hash"}`` (text files; ``hash`` as the CLI computes it).
``GET [/{owner}/{repo}]/.well-known/agent-skills/index.json``
    v0.2 discovery index; artifacts ``{name}/SKILL.md`` (one-file skills) or ``{name}.tar.gz``.
``GET [/{owner}/{repo}]/.well-known/skills/index.json``
    v0.1 index with ``files``; files at ``/.well-known/skills/{name}/{path}``.

``installs`` counts downloads served since the server started. Send ``SIGHUP`` (or call
:meth:`RegistryApp.reload`) to re-read DIR.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from hiclaw.registry.frontmatter import SKILL_FILE
from hiclaw.registry.index import IndexedSkill, RegistryIndex
from hiclaw.registry.models import Limits
from hiclaw.registry.wellknown import DISCOVERY_SCHEMA_V2

log = logging.getLogger(__name__)
DEFAULT_LIMIT = 10
MAX_LIMIT = 100


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-cache"})


def _not_found(what: str) -> web.Response:
    return _json({"error": f"{what} not found"}, status=404)


class RegistryApp:
    """The aiohttp application over a :class:`RegistryIndex`."""

    def __init__(self, root: Path, *, limits: Limits | None = None) -> None:
        self.index = RegistryIndex(root, limits=limits).load()
        self.app = web.Application(middlewares=[self._errors])
        self.app.add_routes([
            web.get("/", self.home),
            web.get("/api/search", self.search),
            web.get("/api/download/{owner}/{repo}/{slug}", self.download),
            web.get("/.well-known/{kind}/{tail:.+}", self.well_known),
            web.get("/{owner}/{repo}/.well-known/{kind}/{tail:.+}", self.well_known),
        ])

    def reload(self) -> RegistryIndex:
        """Re-read the folder; install counts of skills that still exist are kept."""
        counts = {s.id: s.installs for s in self.index.skills}
        fresh = RegistryIndex(self.index.root, limits=self.index.limits).load()
        for skill in fresh.skills:
            skill.installs = counts.get(skill.id, 0)
        self.index = fresh
        return fresh

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("registry: %s %s failed", request.method, request.path)
            if request.path == "/api/search":
                return _json({"skills": []})
            return _json({"error": "internal error; see the registry's log"}, status=500)

    async def home(self, request: web.Request) -> web.Response:
        return _json({
            "registry": "hiclaw private skills registry",
            "skills": len(self.index.skills),
            "endpoints": ["/api/search?q=", "/api/download/{owner}/{repo}/{skill}", "/.well-known/agent-skills/index.json"],
        })

    async def search(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "")
        raw_limit = request.query.get("limit", "")
        try:
            limit = min(int(raw_limit), MAX_LIMIT) if raw_limit else DEFAULT_LIMIT
        except ValueError:
            limit = DEFAULT_LIMIT
        owner = request.query.get("owner") or None
        hits = self.index.search(query, limit=limit, owner=owner)
        return _json({"skills": [s.search_hit() for s in hits]})

    async def download(self, request: web.Request) -> web.Response:
        m = request.match_info
        skill = self.index.get(m["owner"], m["repo"], m["slug"])
        if skill is None:
            return _not_found(f"skill {m['owner']}/{m['repo']}/{m['slug']}")
        try:
            files = [{"path": p, "contents": c.decode("utf-8")} for p, c in sorted(skill.files.items())]
        except UnicodeDecodeError:
            # The download API carries text; binary skills are served through well-known archives.
            return _json({"error": f"skill {skill.id} has binary files; add it by URL (well-known archive)"}, status=404)
        skill.installs += 1
        return _json({"files": files, "hash": skill.snapshot_hash})

    async def well_known(self, request: web.Request) -> web.Response:
        m = request.match_info
        owner, repo, kind, tail = m.get("owner"), m.get("repo"), m["kind"], m["tail"]
        if kind not in ("agent-skills", "skills"):
            return _not_found(request.path)
        skills = self.index.scoped(owner, repo)
        if owner is not None and not skills:
            return _not_found(f"repository {owner}/{repo}")
        if tail == "index.json":
            return _json(self._index_v2(skills) if kind == "agent-skills" else self._index_v1(skills))
        by_name = {s.name: s for s in skills}
        if kind == "agent-skills" and tail.endswith(".tar.gz") and tail[: -len(".tar.gz")] in by_name:
            skill = by_name[tail[: -len(".tar.gz")]]
            if skill.artifact_type == "archive":
                skill.installs += 1
                return web.Response(body=skill.artifact, content_type="application/gzip")
        name, _, path = tail.partition("/")
        found = by_name.get(name)
        if found is None or path not in found.files:
            return _not_found(request.path)
        if path == SKILL_FILE:
            found.installs += 1
        return web.Response(body=found.files[path], content_type="text/markdown" if path.endswith(".md") else "application/octet-stream")

    @staticmethod
    def _index_v2(skills: list[IndexedSkill]) -> dict[str, object]:
        return {
            "$schema": DISCOVERY_SCHEMA_V2,
            "skills": [
                {"name": s.name, "description": s.description, "type": s.artifact_type, "url": s.artifact_path, "digest": s.digest}
                for s in skills
            ],
        }

    @staticmethod
    def _index_v1(skills: list[IndexedSkill]) -> dict[str, object]:
        return {"skills": [{"name": s.name, "description": s.description, "files": sorted(s.files)} for s in skills]}


async def start_server(app: RegistryApp, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner (``await runner.cleanup()`` to stop) and base URL."""
    runner = web.AppRunner(app.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server  # noqa: SLF001 - aiohttp has no public accessor for a site's sockets
    sockets = server.sockets if server is not None else []  # type: ignore[attr-defined]
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


async def serve_forever(app: RegistryApp, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    runner, url = await start_server(app, host, port)
    on_ready(url)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
