"""Matrix fixtures: one real Synapse for the whole test session, and helpers around it.

``synapse`` (session)
    A :class:`SynapseServer`: the embedded Synapse started on a free loopback port, with
    registration tokens enabled and cheap password hashing. Tests share it, so each test takes
    its own ``synapse.unique_prefix()`` for user names and room keys.
``matrix_control`` (function)
    ``await matrix_control(prefix=None, home=None, **settings)`` → a started
    ``ControlMatrixChannel`` (logged in as ``<prefix>manager``) on that server; stopped afterwards.

``start_worker_channel(control, name, home)``
    Provisions an agent and starts its worker-side channel exactly as a worker process would.

Raw client-server helpers (``register``, ``create_room``, ``send``, ``sync``, ``messages``) use
httpx, not matrix-nio, so they are an independent second client for checking what the channel did.
"""
from __future__ import annotations

import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

try:
    import pytest_asyncio

    async_fixture: Callable[..., Any] = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - only the sync fixtures without pytest-asyncio
    async_fixture = pytest.fixture

CLIENT = "/_matrix/client/v3"
TEST_SYNAPSE_CONFIG = {
    "bcrypt_rounds": 4,  # password hashing dominates registration time otherwise
    "enable_registration": True,
    "registration_requires_token": True,  # lets tests exercise m.login.registration_token
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@dataclass
class MatrixUser:
    user_id: str
    access_token: str
    device_id: str | None
    password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class SynapseServer:
    """A running Synapse plus raw (httpx) client-server and admin helpers."""

    def __init__(self, homeserver: Any) -> None:
        self.homeserver = homeserver
        self.url: str = homeserver.url
        self.server_name: str = homeserver.server_name
        self.shared_secret: str = homeserver.shared_secret
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self._admin: MatrixUser | None = None

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def unique_prefix() -> str:
        """A fresh user/room namespace, e.g. ``t3fa1-``."""
        return f"t{secrets.token_hex(3)}-"

    # ------------------------------------------------------------------ users

    def register(self, localpart: str, password: str | None = None, *, admin: bool = False) -> MatrixUser:
        from hiclaw.plugins.channels.matrix.accounts import shared_secret_mac

        password = password or secrets.token_urlsafe(12)
        nonce = self.http.get("/_synapse/admin/v1/register").json()["nonce"]
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin,
                "mac": shared_secret_mac(self.shared_secret, nonce, localpart, password, admin)}
        resp = self.http.post("/_synapse/admin/v1/register", json=body)
        resp.raise_for_status()
        data = resp.json()
        return MatrixUser(data["user_id"], data["access_token"], data.get("device_id"), password)

    @property
    def admin(self) -> MatrixUser:
        """A server admin of this Synapse (made on first use)."""
        if self._admin is None:
            self._admin = self.register(f"fixture-admin-{secrets.token_hex(3)}", admin=True)
        return self._admin

    def create_registration_token(self, uses_allowed: int | None = None) -> str:
        resp = self.http.post("/_synapse/admin/v1/registration_tokens/new", headers=self.admin.headers,
                              json={"uses_allowed": uses_allowed})
        resp.raise_for_status()
        return str(resp.json()["token"])

    def override_ratelimit(self, user_id: str, messages_per_second: float, burst_count: int) -> None:
        resp = self.http.post(f"/_synapse/admin/v1/users/{q(user_id)}/override_ratelimit", headers=self.admin.headers,
                              json={"messages_per_second": messages_per_second, "burst_count": burst_count})
        resp.raise_for_status()

    # ------------------------------------------------------------------ rooms and messages

    def create_room(self, owner: MatrixUser, *, name: str = "", invite: tuple[MatrixUser, ...] = (),
                    join: bool = True) -> str:
        body: dict[str, Any] = {"preset": "private_chat", "invite": [u.user_id for u in invite]}
        if name:
            body["name"] = name
        resp = self.http.post(f"{CLIENT}/createRoom", headers=owner.headers, json=body)
        resp.raise_for_status()
        room_id = str(resp.json()["room_id"])
        if join:
            for user in invite:
                self.join(user, room_id)
        return room_id

    def join(self, user: MatrixUser, room_id: str) -> None:
        self.http.post(f"{CLIENT}/join/{q(room_id)}", headers=user.headers, json={}).raise_for_status()

    def send(self, user: MatrixUser, room_id: str, content: dict[str, Any] | str) -> str:
        if isinstance(content, str):
            content = {"msgtype": "m.text", "body": content}
        txn = secrets.token_hex(8)
        resp = self.http.put(f"{CLIENT}/rooms/{q(room_id)}/send/m.room.message/{txn}", headers=user.headers,
                             json=content)
        resp.raise_for_status()
        return str(resp.json()["event_id"])

    def messages(self, user: MatrixUser, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The room's last ``limit`` message events, oldest first (raw JSON, as any client sees them)."""
        resp = self.http.get(f"{CLIENT}/rooms/{q(room_id)}/messages", headers=user.headers,
                             params={"dir": "b", "limit": limit, "filter": '{"types":["m.room.message"]}'})
        resp.raise_for_status()
        return list(reversed(resp.json()["chunk"]))

    def state(self, user: MatrixUser, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
        resp = self.http.get(f"{CLIENT}/rooms/{q(room_id)}/state/{event_type}/{state_key}", headers=user.headers)
        resp.raise_for_status()
        return dict(resp.json())

    def joined_members(self, user: MatrixUser, room_id: str) -> set[str]:
        resp = self.http.get(f"{CLIENT}/rooms/{q(room_id)}/joined_members", headers=user.headers)
        resp.raise_for_status()
        return set(resp.json()["joined"])

    # ------------------------------------------------------------------ channel wiring

    def channel_settings(self, prefix: str, **overrides: Any) -> dict[str, Any]:
        """``[channel.settings]`` for a control-side channel on this server, namespaced by ``prefix``."""
        return {"embedded": False, "homeserver_url": self.url, "server_name": self.server_name,
                "registration": "shared_secret", "user_prefix": prefix, "sync_timeout_ms": 10000, **overrides}

    def secrets(self) -> dict[str, SecretStr]:
        return {"matrix_registration_shared_secret": SecretStr(self.shared_secret)}


async def start_worker_channel(control: Any, name: str, home: Path, **overrides: Any) -> Any:
    """Provision agent ``name`` through ``control`` and start its worker-side channel, built the
    way a worker process builds it (plugin host, worker-side settings from ``worker_settings``)."""
    from hiclaw.host import ComponentContext, PluginHost

    await control.ensure_account(name, display_name=name.capitalize())
    host = PluginHost(default_plugins=[("matrix", "hiclaw.plugins.channels.matrix")], load_entry_points=False)
    settings = {**control.worker_settings(name), **overrides}
    channel = host.create("channel", "matrix", settings, ComponentContext(home=home, side="worker", agent=name))
    await channel.start()
    return channel


def start_synapse(home: Path, *, server_name: str = "hiclaw.test", extra: dict[str, Any] | None = None) -> Any:
    """Start an embedded Synapse in ``home`` on a free port (retrying if the port is snatched)."""
    from hiclaw.plugins.channels.matrix.errors import HomeserverError
    from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver
    from hiclaw.plugins.channels.matrix.settings import MatrixSettings

    last: Exception | None = None
    for _ in range(3):
        settings = MatrixSettings(server_name=server_name, port=free_port(),
                                  synapse_config={**TEST_SYNAPSE_CONFIG, **(extra or {})})
        server = EmbeddedHomeserver(home, settings)
        try:
            server.start()
            return server
        except HomeserverError as exc:
            last = exc
    raise RuntimeError(f"could not start Synapse for the tests: {last}")


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SynapseServer]:
    """A real Synapse for the whole session (see the module docstring)."""
    homeserver = start_synapse(tmp_path_factory.mktemp("synapse-home"))
    server = SynapseServer(homeserver)
    try:
        yield server
    finally:
        server.close()
        homeserver.stop()


@async_fixture
async def matrix_control(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory of started control-side Matrix channels on the session's Synapse."""
    from hiclaw.plugins.channels.matrix.control import ControlMatrixChannel
    from hiclaw.plugins.channels.matrix.settings import MatrixSettings

    made: list[Any] = []

    async def make(*, prefix: str | None = None, home: Path | None = None, **settings: Any) -> Any:
        home = home or tmp_path / f"home-{len(made)}"
        settings_model = MatrixSettings.model_validate(synapse.channel_settings(prefix or synapse.unique_prefix(),
                                                                                **settings))
        channel = ControlMatrixChannel(settings_model, home=home, secrets=synapse.secrets())
        await channel.start()
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.stop()
