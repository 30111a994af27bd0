"""The control API: what workers (skills, readiness) and the admin CLI ask the control plane.

Listens on loopback; workers reach it through their sandbox bridge. Workers authenticate with
their own control token (issued at each start, revoked on removal) and can only act as
themselves; the admin CLI uses the admin token in ``$HICLAW_HOME/run/control.json`` (0600).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from hiclaw.errors import HiclawError

log = logging.getLogger(__name__)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def control_file(home: Path) -> Path:
    return home / "run" / "control.json"


class ControlService(Protocol):
    """What the control API serves (the control plane implements it). ``worker``: the calling
    worker, from its control token — a worker can only act as itself."""

    async def worker_ready(self, worker: str, info: dict[str, Any]) -> None: ...

    async def worker_notice(self, worker: str, body: dict[str, Any]) -> None: ...

    async def worker_approval(self, worker: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def skills_find(self, worker: str, query: str, limit: int) -> list[dict[str, Any]]: ...

    async def skills_add(self, worker: str, source: str, skill: str | None) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any: ...


class ControlAPI:
    """``home``: where the admin's token file is written (``run/control.json``)."""

    def __init__(self, service: ControlService, home: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service, self.home = service, home
        self.host = host
        self.port = port
        self._worker_tokens: dict[str, str] = {}  # hash -> worker name
        self._admin_token = secrets.token_urlsafe(32)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def issue(self, worker: str) -> str:
        token = secrets.token_urlsafe(32)
        self.register(worker, token)
        return token

    def register(self, worker: str, token: str) -> None:
        """Accept ``token`` for ``worker`` (its only one): a worker adopted after a crash keeps its token."""
        self.revoke(worker)
        self._worker_tokens[_hash(token)] = worker

    def revoke(self, worker: str) -> None:
        for digest, name in list(self._worker_tokens.items()):
            if name == worker:
                del self._worker_tokens[digest]

    def _caller(self, request: web.Request) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if token and hmac.compare_digest(_hash(token), _hash(self._admin_token)):
            return "admin", "admin"
        worker = self._worker_tokens.get(_hash(token)) if token else None
        if worker is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "unknown or revoked control token"}),
                                       content_type="application/json")
        return "worker", worker

    async def start(self) -> None:
        app = web.Application(middlewares=[self._errors], client_max_size=1024 * 1024)
        app.add_routes([
            web.get("/v1/health", self._health),
            web.post("/v1/ready", self._ready),
            web.post("/v1/notice", self._notice),
            web.post("/v1/approval", self._approval),
            web.post("/v1/skills/find", self._skills_find),
            web.post("/v1/skills/add", self._skills_add),
            web.get("/v1/status", self._status),
            web.post("/v1/admin/{action}", self._admin),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001 - aiohttp: bound port
        path = control_file(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": self.url, "token": self._admin_token, "pid": os.getpid()}, fh)

    async def stop(self) -> None:
        control_file(self.home).unlink(missing_ok=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except HiclawError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _ready(self, request: web.Request) -> web.Response:
        kind, name = self._caller(request)
        if kind != "worker":
            raise web.HTTPForbidden()
        try:
            info = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        await self.service.worker_ready(name, info if isinstance(info, dict) else {})
        return web.json_response({"ok": True})

    async def _notice(self, request: web.Request) -> web.Response:
        kind, name = self._caller(request)
        if kind != "worker":
            raise web.HTTPForbidden()
        body = await request.json()
        if not isinstance(body, dict):
            raise HiclawError("a notice is a JSON object")
        await self.service.worker_notice(name, body)
        return web.json_response({"ok": True})

    async def _approval(self, request: web.Request) -> web.Response:
        kind, name = self._caller(request)
        if kind != "worker":
            raise web.HTTPForbidden()
        body = await request.json()
        if not isinstance(body, dict):
            raise HiclawError("an approval request is a JSON object")
        return web.json_response(await self.service.worker_approval(name, body))

    async def _skills_find(self, request: web.Request) -> web.Response:
        _, name = self._caller(request)
        body = await request.json()
        found = await self.service.skills_find(name, str(body["query"]), int(body.get("limit") or 10))
        return web.json_response({"skills": found})

    async def _skills_add(self, request: web.Request) -> web.Response:
        kind, name = self._caller(request)
        if kind != "worker":
            raise web.HTTPForbidden()
        body = await request.json()
        installed = await self.service.skills_add(name, str(body["source"]), body.get("skill"))
        return web.json_response(installed)

    async def _status(self, request: web.Request) -> web.Response:
        kind, _ = self._caller(request)
        if kind != "admin":
            raise web.HTTPForbidden()
        return web.json_response(await self.service.status())

    async def _admin(self, request: web.Request) -> web.Response:
        kind, _ = self._caller(request)
        if kind != "admin":
            raise web.HTTPForbidden()
        body = await request.json()
        return web.json_response(await self.service.admin_action(request.match_info["action"], body))
