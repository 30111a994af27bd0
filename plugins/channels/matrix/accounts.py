"""Creating and logging in agent accounts, on the embedded Synapse or any external homeserver.

Registration modes (``[channel.settings] registration``):

``shared_secret``
    Synapse's ``/_synapse/admin/v1/register`` with an HMAC-SHA1 over
    ``nonce \\0 user \\0 password \\0 admin|notadmin`` (the embedded server's default; for an
    external Synapse, the secret ``matrix_registration_shared_secret``).
``token``
    The standard ``/register`` with the ``m.login.registration_token`` stage (secret
    ``matrix_registration_token``) — Synapse, Tuwunel, Conduit, conduwuit…
``admin_api``
    Synapse's admin API ``PUT /_synapse/admin/v2/users/<id>`` with an admin's access token
    (secret ``matrix_admin_token``), then a password login.
``auto``
    ``shared_secret`` for the embedded server; otherwise the first mode whose secret is set.

Raw HTTP (httpx) on purpose: these are admin and account calls made on behalf of other users.
"""
from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from hiclaw.errors import ConfigError
from hiclaw.plugins.channels.matrix.errors import MatrixError
from hiclaw.plugins.channels.matrix.settings import MatrixSettings

CLIENT = "/_matrix/client/v3"


def shared_secret_mac(secret: str, nonce: str, user: str, password: str, admin: bool) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, user, password):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    return mac.hexdigest()


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _error(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "", resp.text[:200]
    return str(body.get("errcode", "")), str(body.get("error", ""))


async def password_login(
    http: httpx.AsyncClient, user_id: str, password: str, device_id: str | None = None
) -> dict[str, Any] | None:
    """``m.login.password`` (reusing ``device_id``); returns credentials, ``None`` if refused."""
    body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                            "password": password, "initial_device_display_name": "hiclaw"}
    if device_id:
        body["device_id"] = device_id
    resp = await http.post(f"{CLIENT}/login", json=body)
    if resp.status_code == 200:
        data = resp.json()
        return {"user_id": data["user_id"], "access_token": data["access_token"], "device_id": data.get("device_id")}
    if resp.status_code == 403:
        return None
    code, message = _error(resp)
    raise MatrixError(f"login of {user_id} failed: {code or resp.status_code} {message}", hint="check the homeserver")


class AccountRegistrar:
    """Registers, logs in and repairs accounts over the client-server and admin APIs."""

    def __init__(self, settings: MatrixSettings, secrets: Mapping[str, SecretStr], *, shared_secret: str | None) -> None:
        self.settings = settings
        self.secrets = secrets
        self.shared_secret = shared_secret
        self.http = httpx.AsyncClient(base_url=settings.url, timeout=30.0)
        self.mode = self._pick_mode()

    async def aclose(self) -> None:
        await self.http.aclose()

    def _secret(self, name: str) -> str | None:
        value = self.secrets.get(name)
        return value.get_secret_value() if value is not None else None

    def _pick_mode(self) -> str:
        mode = self.settings.registration
        if mode == "auto":
            if self.shared_secret or self._secret("matrix_registration_shared_secret"):
                mode = "shared_secret"
            elif self._secret("matrix_admin_token"):
                mode = "admin_api"
            elif self._secret("matrix_registration_token"):
                mode = "token"
            else:
                raise ConfigError(
                    f"no way to create agent accounts on {self.settings.url}",
                    hint="set one of the secrets matrix_registration_token, matrix_admin_token or "
                         "matrix_registration_shared_secret (see docs/matrix.md)",
                )
        needed = {"token": "matrix_registration_token", "admin_api": "matrix_admin_token"}.get(mode)
        if needed and not self._secret(needed):
            raise ConfigError(f"registration = {mode!r} needs the secret {needed!r}",
                              hint=f"add `{needed} = \"…\"` to secrets.toml")
        if mode == "shared_secret" and not (self.shared_secret or self._secret("matrix_registration_shared_secret")):
            raise ConfigError("registration = 'shared_secret' needs the secret 'matrix_registration_shared_secret'",
                              hint="copy registration_shared_secret from your homeserver.yaml into secrets.toml")
        return mode

    # ------------------------------------------------------------------ register

    async def register(self, user_id: str, password: str, *, admin: bool = False) -> dict[str, Any] | None:
        """Create the account; returns ``{user_id, access_token, device_id}``, or ``None`` if taken."""
        localpart = user_id[1:].split(":", 1)[0]
        if self.mode == "shared_secret":
            return await self._register_shared_secret(localpart, password, admin)
        if self.mode == "admin_api":
            return await self._register_admin_api(user_id, password, admin)
        return await self._register_token(localpart, password)

    async def _register_shared_secret(self, localpart: str, password: str, admin: bool) -> dict[str, Any] | None:
        secret = self.shared_secret or self._secret("matrix_registration_shared_secret") or ""
        nonce_resp = await self._request("GET", "/_synapse/admin/v1/register")
        nonce = nonce_resp.json()["nonce"]
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin,
                "mac": shared_secret_mac(secret, nonce, localpart, password, admin)}
        resp = await self._request("POST", "/_synapse/admin/v1/register", json=body)
        return self._registered(resp, "shared-secret registration")

    async def _register_token(self, localpart: str, password: str) -> dict[str, Any] | None:
        body: dict[str, Any] = {"username": localpart, "password": password,
                                "initial_device_display_name": "hiclaw", "inhibit_login": False}
        token = self._secret("matrix_registration_token")
        for _ in range(4):  # the server walks us through its stages (token, maybe dummy)
            resp = await self._request("POST", f"{CLIENT}/register", json=body)
            if resp.status_code != 401:
                return self._registered(resp, "token registration")
            flow_info = resp.json()
            done = set(flow_info.get("completed", []))
            flows = [f["stages"] for f in flow_info.get("flows", [])]
            stages = next((s for s in flows if set(s) <= {"m.login.registration_token", "m.login.dummy"}), None)
            if stages is None:
                raise MatrixError(f"{self.settings.url} offers no registration flow hiclaw can complete ({flows})",
                                  hint="enable registration tokens on the server or use registration = 'admin_api'")
            stage = next(s for s in stages if s not in done)
            auth: dict[str, Any] = {"type": stage, "session": flow_info.get("session")}
            if stage == "m.login.registration_token":
                auth["token"] = token
            body["auth"] = auth
        raise MatrixError("token registration did not complete", hint="check matrix_registration_token")

    async def _register_admin_api(self, user_id: str, password: str, admin: bool) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {self._secret('matrix_admin_token')}"}
        existing = await self._request("GET", f"/_synapse/admin/v2/users/{quote(user_id)}", headers=headers)
        if existing.status_code == 200:
            return None
        resp = await self._request("PUT", f"/_synapse/admin/v2/users/{quote(user_id)}", headers=headers,
                                   json={"password": password, "admin": admin})
        if resp.status_code not in (200, 201):
            code, message = _error(resp)
            raise MatrixError(f"admin API refused to create {user_id}: {code} {message}",
                              hint="check that matrix_admin_token belongs to a server admin")
        return await self.login(user_id, password)

    def _registered(self, resp: httpx.Response, what: str) -> dict[str, Any] | None:
        if resp.status_code == 200:
            data = resp.json()
            return {"user_id": data["user_id"], "access_token": data["access_token"], "device_id": data.get("device_id")}
        code, message = _error(resp)
        if code == "M_USER_IN_USE":
            return None
        raise MatrixError(f"{what} on {self.settings.url} failed: {code or resp.status_code} {message}",
                          hint="check the registration secret or token in secrets.toml")

    # ------------------------------------------------------------------ login and repair

    async def login(self, user_id: str, password: str, device_id: str | None = None) -> dict[str, Any] | None:
        """Password login (reusing ``device_id`` when given); ``None`` for a wrong password."""
        try:
            return await password_login(self.http, user_id, password, device_id)
        except httpx.HTTPError as exc:
            raise MatrixError(f"cannot reach the homeserver at {self.settings.url}: {exc}",
                              hint="start it with `hiclaw homeserver start` (or `hiclaw up`)") from None

    async def reset_password(self, user_id: str, password: str, admin_token: str) -> bool:
        resp = await self._request("POST", f"/_synapse/admin/v1/reset_password/{quote(user_id)}",
                                    headers={"Authorization": f"Bearer {admin_token}"},
                                    json={"new_password": password, "logout_devices": False})
        return resp.status_code == 200

    async def change_password(self, user_id: str, token: str, old: str, new: str) -> bool:
        """The standard client-server password change (works on any homeserver)."""
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": old}
        resp = await self._request("POST", f"{CLIENT}/account/password", headers={"Authorization": f"Bearer {token}"},
                                   json={"new_password": new, "logout_devices": False, "auth": auth})
        return resp.status_code == 200

    async def token_valid(self, token: str) -> bool:
        resp = await self._request("GET", f"{CLIENT}/account/whoami", headers={"Authorization": f"Bearer {token}"})
        return resp.status_code == 200

    # ------------------------------------------------------------------ taking an account away

    async def deactivate(self, user_id: str, admin_token: str) -> tuple[bool, str]:
        """Synapse's admin ``POST /_synapse/admin/v1/deactivate/<user>`` (``erase: false``): every
        device logged out, every token invalid, the account parted from every room, no login
        again until an admin reactivates it. Returns (done, why not): an already deactivated
        account is done; a server without the admin API, or a token that is not a server
        admin's, is not."""
        resp = await self._request("POST", f"/_synapse/admin/v1/deactivate/{quote(user_id)}",
                                   headers={"Authorization": f"Bearer {admin_token}"}, json={"erase": False})
        if resp.status_code == 200:
            return True, ""
        code, message = _error(resp)
        return False, f"{code or resp.status_code} {message}".strip()

    async def reactivate(self, user_id: str, password: str, admin_token: str) -> str:
        """Undo :meth:`deactivate` (Synapse admin API), with ``password`` as the new password.
        Returns ``""`` when done, else the server's reason."""
        resp = await self._request("PUT", f"/_synapse/admin/v2/users/{quote(user_id)}",
                                   headers={"Authorization": f"Bearer {admin_token}"},
                                   json={"deactivated": False, "password": password})
        if resp.status_code in (200, 201):
            return ""
        code, message = _error(resp)
        return f"{code or resp.status_code} {message}".strip()

    async def log_out_everywhere(self, token: str) -> list[str]:
        """As the account itself (standard client-server API, any homeserver): leave every room
        it is in, then log out all its devices (every token of it becomes invalid). Returns the
        rooms it left. A token that is already invalid has nothing left to do."""
        joined = await self.as_user(token, "GET", "/joined_rooms")
        if joined.status_code != 200:
            return []
        left = []
        for room_id in joined.json().get("joined_rooms", []):
            resp = await self.as_user(token, "POST", f"/rooms/{quote(room_id)}/leave", {})
            if resp.status_code == 200:
                left.append(room_id)
        resp = await self.as_user(token, "POST", "/logout/all", {})
        if resp.status_code not in (200, 401):
            code, message = _error(resp)
            raise MatrixError(f"logging out every device failed: {code or resp.status_code} {message}",
                              hint="check the homeserver's log")
        return left

    # ------------------------------------------------------------------ acting as a user

    async def as_user(self, token: str, method: str, path: str, json: Any = None) -> httpx.Response:
        """A client-server call with ``token`` (the control plane acting for an agent it provisioned)."""
        return await self._request(method, f"{CLIENT}{path}", headers={"Authorization": f"Bearer {token}"}, json=json)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MatrixError(f"cannot reach the homeserver at {self.settings.url}: {exc}",
                              hint="start it with `hiclaw homeserver start` (or `hiclaw up`), or check homeserver_url") from None
