"""A recorded contract of the Higress console REST API, served for tests — not a Higress.

No Higress can run here, so the plugin is tested against this server, which answers the
endpoints hiclaw uses the way higress-console does (recorded from its controllers and models:
``SessionController``, ``ConsumersController``, ``AiRoutesController``, ``LlmProvidersController``,
``Consumer``/``KeyAuthCredential``, ``AiRoute``/``AiRouteAuthConfig``/``AiRouteFallbackConfig``,
``LlmProvider``; and from how HiClaw's own scripts call them):

* ``POST /session/login`` ``{"username", "password"}`` sets a session cookie; ``/v1/*`` without a
  valid session answers 401.
* Answers are ``{"success": true, "data": …}``; lists add ``total``, ``pageNum``, ``pageSize``;
  errors are ``{"success": false, "message": …}`` with 400 (validation), 404, 409.
* ``POST /v1/consumers`` and ``POST /v1/ai/providers`` add *or update*; ``DELETE`` answers 204.
* ``POST /v1/ai/routes`` answers 409 for an existing name; ``PUT /v1/ai/routes/{name}`` needs the
  current ``version`` (each update bumps it) — a stale one answers 409.
* Validation: consumer ``name`` and ``credentials``; key-auth ``source`` BEARER/HEADER/QUERY,
  ``key`` for HEADER/QUERY, ``values`` when creating; route ``name``, ``upstreams`` (each with a
  ``provider``), ``pathPredicate.matchType`` PRE, ``authConfig.allowedConsumers`` non-empty when
  enabled, ``fallbackConfig`` (strategy RAND/SEQ, upstreams, ``responseCodes`` in 4xx/5xx);
  provider ``name`` and ``type``, ``protocol`` defaulting to ``openai/v1``.

It routes no traffic: what it proves is that the plugin sends what the console accepts.
"""
from __future__ import annotations

import copy
import secrets
from typing import Any

from aiohttp import web

COOKIE = "_hi_sess"
KEY_SOURCES = {"BEARER", "HEADER", "QUERY"}


class ContractViolation(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message, "data": None}, status=status)


def _ok(data: Any) -> web.Response:
    return web.json_response({"success": True, "message": None, "data": data})


def _page(items: list[Any]) -> web.Response:
    return web.json_response({"success": True, "message": None, "data": items, "total": len(items), "pageNum": 0,
                              "pageSize": len(items)})


def _check_consumer(body: Any, *, update: bool) -> None:
    if not isinstance(body, dict) or not body.get("name"):
        raise ContractViolation(400, "name cannot be blank.")
    credentials = body.get("credentials")
    if not credentials:
        raise ContractViolation(400, "credentials cannot be empty.")
    for credential in credentials:
        if credential.get("type") != "key-auth":
            raise ContractViolation(400, f"unsupported credential type: {credential.get('type')}")
        source = credential.get("source")
        if not source:
            raise ContractViolation(400, "source cannot be blank.")
        if source not in KEY_SOURCES:
            raise ContractViolation(400, f"unknown source value: {source}")
        if source != "BEARER" and not credential.get("key"):
            raise ContractViolation(400, "key cannot be blank.")
        if not update and not credential.get("values"):
            raise ContractViolation(400, "value cannot be blank.")


def _check_route(body: Any) -> None:
    if not isinstance(body, dict) or not body.get("name"):
        raise ContractViolation(400, "name cannot be blank.")
    upstreams = body.get("upstreams")
    if not upstreams:
        raise ContractViolation(400, "upstreams cannot be empty.")
    if any(not u.get("provider") for u in upstreams):
        raise ContractViolation(400, "provider cannot be null or empty.")
    path = body.get("pathPredicate")
    if path is not None:
        if path.get("matchType") is None or path.get("matchValue") is None:
            raise ContractViolation(400, "matchType is required")
        if path["matchType"] != "PRE":
            raise ContractViolation(400, "pathPredicate must be of type PRE.")
    auth = body.get("authConfig")
    if auth and auth.get("enabled") and not auth.get("allowedConsumers"):
        raise ContractViolation(400, "allowedConsumers cannot be empty when auth is enabled.")
    fallback = body.get("fallbackConfig")
    if fallback and fallback.get("enabled"):
        if fallback.get("fallbackStrategy") not in (None, "", "RAND", "SEQ"):
            raise ContractViolation(400, f"unknown fallback strategy: {fallback['fallbackStrategy']}")
        if not fallback.get("upstreams"):
            raise ContractViolation(400, "upstreams cannot be empty when fallback is enabled.")
        codes = fallback.get("responseCodes")
        if not codes:
            raise ContractViolation(400, "response codes cannot be empty when fallback is enabled.")
        bad = [c for c in codes if c not in ("4xx", "5xx")]
        if bad:
            raise ContractViolation(400, f"invalid response code:{bad[0]}")


def _check_provider(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not body.get("name"):
        raise ContractViolation(400, "name cannot be blank.")
    if not body.get("type"):
        raise ContractViolation(400, "type cannot be blank.")
    protocol = body.get("protocol") or "openai/v1"
    if protocol not in ("openai/v1", "original"):
        raise ContractViolation(400, f"Unknown protocol: {protocol}")
    return {**body, "protocol": protocol}


class HigressConsoleContract:
    """The recorded console API over in-memory state. ``calls`` logs ``(method, path)``."""

    def __init__(self, *, username: str = "admin", password: str = "admin") -> None:  # noqa: S107 - an in-memory fake
        self.username = username
        self.password = password
        self.consumers: dict[str, dict[str, Any]] = {}
        self.routes: dict[str, dict[str, Any]] = {}
        self.providers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self._sessions: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def expire_sessions(self) -> None:
        self._sessions.clear()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/session/login", self._login)
        for kind in ("consumers", "ai/routes", "ai/providers"):
            app.router.add_get(f"/v1/{kind}", self._list)
            app.router.add_post(f"/v1/{kind}", self._add)
            app.router.add_get(f"/v1/{kind}/{{name}}", self._get)
            app.router.add_put(f"/v1/{kind}/{{name}}", self._put)
            app.router.add_delete(f"/v1/{kind}/{{name}}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if request.path.startswith("/v1/") and request.cookies.get(COOKIE) not in self._sessions:
            return _fail(401, "Not logged in.")
        try:
            return await handler(request)
        except ContractViolation as exc:
            return _fail(exc.status, str(exc))

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.get("username") or not body.get("password"):
            return _fail(400, "Missing user name or password.")
        if (body["username"], body["password"]) != (self.username, self.password):
            return _fail(401, "Incorrect username or password")
        session = secrets.token_hex(16)
        self._sessions.add(session)
        response = _ok({"name": self.username, "displayName": self.username})
        response.set_cookie(COOKIE, session, httponly=True)
        return response

    def _store(self, request: web.Request) -> tuple[str, dict[str, dict[str, Any]]]:
        kind = request.path.split("/v1/", 1)[1].split("/")
        key = "/".join(kind[:2]) if kind[0] == "ai" else kind[0]
        return key, {"consumers": self.consumers, "ai/routes": self.routes, "ai/providers": self.providers}[key]

    async def _list(self, request: web.Request) -> web.Response:
        _, store = self._store(request)
        return _page([copy.deepcopy(v) for _, v in sorted(store.items())])

    async def _get(self, request: web.Request) -> web.Response:
        _, store = self._store(request)
        item = store.get(request.match_info["name"])
        return _ok(copy.deepcopy(item)) if item is not None else _fail(404, f"{request.match_info['name']} not found")

    async def _add(self, request: web.Request) -> web.Response:
        kind, store = self._store(request)
        body = await request.json()
        if kind == "consumers":
            _check_consumer(body, update=False)
        elif kind == "ai/providers":
            body = _check_provider(body)
        else:
            _check_route(body)
            if body["name"] in store:
                raise ContractViolation(409, "Route already existed with the same name.")
            body["version"] = "1"
        store[body["name"]] = body
        return _ok(copy.deepcopy(body))

    async def _put(self, request: web.Request) -> web.Response:
        kind, store = self._store(request)
        name = request.match_info["name"]
        body = await request.json()
        if body.get("name") and body["name"] != name:
            raise ContractViolation(400, "name in the URL doesn't match the one in the body.")
        body["name"] = name
        if kind == "consumers":
            _check_consumer(body, update=True)
        elif kind == "ai/providers":
            body = _check_provider(body)
        else:
            _check_route(body)
            current = store.get(name)
            if current is None:
                raise ContractViolation(404, f"route {name} not found")
            if body.get("version") != current["version"]:
                raise ContractViolation(409, "version conflict: read the route again before updating it")
            body["version"] = str(int(current["version"]) + 1)
        store[name] = body
        return _ok(copy.deepcopy(body))

    async def _delete(self, request: web.Request) -> web.Response:
        _, store = self._store(request)
        store.pop(request.match_info["name"], None)
        return web.Response(status=204)
