"""A client of the Higress console REST API (the subset hiclaw drives).

Wire format (higress-console ``ConsumersController``, ``AiRoutesController``,
``LlmProvidersController``, ``SessionController``): log in with ``POST /session/login``
``{"username", "password"}`` (a session cookie); answers are ``{"success", "message", "data"}``
(lists add ``total``, ``pageNum``, ``pageSize``). ``POST /v1/consumers`` and
``POST /v1/ai/providers`` add or update; ``POST /v1/ai/routes`` answers 409 for an existing
route, and ``PUT /v1/ai/routes/{name}`` needs the ``version`` last read.
"""
from __future__ import annotations

from typing import Any

import httpx
from pydantic import SecretStr

from hiclaw.errors import NotFoundError, PluginError


class HigressError(PluginError):
    """The Higress console refused or failed an operation."""


class HigressConsole:
    def __init__(self, url: str, username: str, password: SecretStr, *, timeout: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._username = username
        self._password = password
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)
        self._logged_in = False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def login(self) -> None:
        try:
            response = await self._http.post("/session/login", json={
                "username": self._username, "password": self._password.get_secret_value()})
        except httpx.HTTPError as exc:
            raise HigressError(f"cannot reach the Higress console at {self.url} ({type(exc).__name__})",
                               hint="check [gateway.settings] console_url") from None
        if response.status_code != 200 or not _success(response):
            raise HigressError(f"the Higress console at {self.url} refused the login of {self._username!r}",
                               hint="check console_username and the secret higress_console_password")
        self._logged_in = True

    async def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """``data`` of the answer (``None`` for 204 or, with ``missing_ok``, for 404)."""
        if not self._logged_in:
            await self.login()
        for attempt in (1, 2):
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise HigressError(f"{method} {path}: cannot reach the Higress console ({type(exc).__name__})") from None
            expired = response.status_code == 401 or response.headers.get("content-type", "").startswith("text/html")
            if expired and attempt == 1:
                await self.login()  # the session expired: log in again once
                continue
            break
        if response.status_code == 204:
            return None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code == 404:
            raise NotFoundError(f"Higress has no {path}")
        if response.status_code >= 400 or not _success(response):
            raise HigressError(f"Higress console {method} {path} failed ({response.status_code}): {_message(response)}")
        return response.json().get("data")

    # ------------------------------------------------------------------ resources

    async def consumers(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/consumers") or []

    async def consumer(self, name: str) -> dict[str, Any] | None:
        return await self.call("GET", f"/v1/consumers/{name}", missing_ok=True)

    async def put_consumer(self, name: str, token: str) -> None:
        """Create or update consumer ``name`` with one key-auth bearer credential (``token``)."""
        await self.call("POST", "/v1/consumers", {"name": name, "credentials": [
            {"type": "key-auth", "source": "BEARER", "values": [token]}]})

    async def delete_consumer(self, name: str) -> None:
        await self.call("DELETE", f"/v1/consumers/{name}", missing_ok=True)

    async def routes(self) -> list[dict[str, Any]]:
        return await self.call("GET", "/v1/ai/routes") or []

    async def route(self, name: str) -> dict[str, Any] | None:
        return await self.call("GET", f"/v1/ai/routes/{name}", missing_ok=True)

    async def add_route(self, route: dict[str, Any]) -> None:
        await self.call("POST", "/v1/ai/routes", route)

    async def update_route(self, route: dict[str, Any]) -> None:
        await self.call("PUT", f"/v1/ai/routes/{route['name']}", route)

    async def delete_route(self, name: str) -> None:
        await self.call("DELETE", f"/v1/ai/routes/{name}", missing_ok=True)

    async def provider(self, name: str) -> dict[str, Any] | None:
        return await self.call("GET", f"/v1/ai/providers/{name}", missing_ok=True)

    async def put_provider(self, provider: dict[str, Any]) -> None:
        await self.call("POST", "/v1/ai/providers", provider)


def _success(response: httpx.Response) -> bool:
    try:
        return bool(response.json().get("success", True))
    except (ValueError, AttributeError):
        return False


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.text[:200])
    except (ValueError, AttributeError):
        return response.text[:200]

