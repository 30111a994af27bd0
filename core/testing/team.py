"""A whole team on real components, for tests: ``async with running_team(home, scenario) as team``.

It starts the scripted model server with ``scenario`` (see docs/scripted-model.md), then the
control plane exactly as ``hiclaw up`` does — embedded Synapse, the embedded gateway with the
scripted model as provider, local storage, real sandboxes — and an independent Matrix client
logged in as the admin (:class:`hiclaw.demo.admin.AdminClient`)::

    async def test_manager_answers(tmp_path):
        scenario = {"agents": {"manager": {"default": {"text": "hello"}}}}
        async with running_team(tmp_path / "home", scenario) as team:
            await team.tell_manager("@manager hi")
            await team.wait_for_message("hello")
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiclaw.config import HiclawConfig, Secrets, StorageConfig, save_config
from hiclaw.demo.team import PRICES as PRICES  # re-exported: the harness and the demo share one team
from hiclaw.demo.team import SERVER_NAME as SERVER_NAME
from hiclaw.demo.team import default_sandbox as default_sandbox
from hiclaw.demo.team import free_port as free_port
from hiclaw.demo.team import team_config as team_config
from hiclaw.waiting import wait_until as wait_until  # re-exported: tests wait with it

#: The secret holding the scripted model's key when a team is started with ``provider_key``.
PROVIDER_KEY_SECRET = "scripted_api_key"


@dataclass
class Team:
    home: Path
    plane: Any  # hiclaw.control.plane.ControlPlane
    admin: Any  # hiclaw.demo.admin.AdminClient
    model: Any  # hiclaw.scripted.server.ScriptedModelServer (or its unruly subclass)
    config: HiclawConfig

    def user_id(self, name: str) -> str:
        return self.plane.channel.user_id(name)

    async def tell_manager(self, text: str) -> str:
        return await self.admin.send(self.plane.chat.manager_room, text, mention=self.user_id("manager"))

    def said(self, sender: str, needle: str) -> Any:
        user = sender if sender.startswith("@") else self.user_id(sender)
        return next((m for m in self.admin.messages if m.sender == user and needle in m.body), None)

    async def wait_for_message(self, needle: str, *, sender: str = "manager", timeout: float = 60.0) -> Any:
        return await wait_until(lambda: self.said(sender, needle), timeout=timeout,
                                what=f"{sender} to say {needle!r}")

    def model_calls(self, agent: str) -> int:
        """Model calls of ``agent`` — on an unruly model every call, the misbehaving ones too."""
        stats = self.model.stats() if hasattr(self.model, "stats") else self.model.engine.stats()
        return int(stats["agents"].get(agent, {}).get("calls", 0))


async def start_plane(home: Path, config: HiclawConfig, *, progress: Callable[[str], None] | None = None) -> Any:
    from hiclaw.control.plane import ControlPlane

    home.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test helper: one local mkdir
    save_config(config, home)
    secrets = Secrets.load(home)
    plane = ControlPlane(home, config=config, secrets=secrets, progress=progress)
    try:
        await plane.start()
    except BaseException:
        await plane.stop()
        raise
    return plane


@asynccontextmanager
async def running_team(home: Path, scenario: Any, *, registry_url: str = "https://skills.sh",
                       sandbox: str | None = None, provider_key: str | None = None,
                       storage: StorageConfig | None = None, secrets: dict[str, str] | None = None,
                       gateway_settings: dict[str, Any] | None = None, unruly: Any = None,
                       provider: Any = None, egress: dict[str, Any] | None = None, **team: Any) -> AsyncIterator[Team]:
    """``provider_key``: the scripted model requires it (``Authorization: Bearer …``), and the team
    keeps it as a real provider key — the secret ``scripted_api_key`` in ``secrets.toml``, named by
    every model alias, sent upstream by the gateway only. ``storage`` and ``secrets`` (more entries
    of ``secrets.toml``, e.g. S3 root keys) run the team on other storage than the local default.
    ``gateway_settings``: more ``[gateway.settings]`` of the embedded gateway. ``unruly``: an
    unruly-model config (an UnrulyConfig, a dict or a file; docs/scripted-model.md) — the model
    plays ``scenario`` but misbehaves as it says; ``team.model.log(agent)`` shows how. ``provider``:
    an OpenAI-compatible provider already running — anything with ``base_url`` (and ``model_name``,
    the name every alias asks for), e.g. the real small model of :mod:`hiclaw.testing.smallmodel`
    — instead of a scripted one (``scenario`` is then ignored, and the provider is left running;
    ``provider_key`` must be the key it requires). ``egress``: ``[egress.<name>]`` routes (their
    secrets go in ``secrets``)."""
    from hiclaw.demo.admin import AdminClient
    from hiclaw.scripted import Scenario, parse_scenario
    from hiclaw.scripted.server import ScriptedModelServer

    if provider is not None:
        model = provider
    else:
        base = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario)
        if unruly is None:
            model = ScriptedModelServer(base, api_key=provider_key)
        else:
            from hiclaw.testing.unruly import unruly_server

            model = unruly_server(base, unruly, api_key=provider_key)
        await model.start()
    config = team_config(model.base_url, registry_url=registry_url, sandbox=sandbox,
                         key_secret=PROVIDER_KEY_SECRET if provider_key else None, storage=storage,
                         gateway_settings=gateway_settings,
                         model_name=getattr(provider, "model_name", None) or "scripted-{alias}", egress=egress, **team)
    extra = {**(secrets or {}), **({PROVIDER_KEY_SECRET: provider_key} if provider_key else {})}
    if extra:
        home.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test helper: one local mkdir
        stored = Secrets.load(home)
        for name, value in extra.items():
            stored.set(name, value)
        stored.save()
    plane = None
    admin = None
    try:
        plane = await start_plane(home, config)
        password = plane.secrets.get("matrix_admin_password")
        admin = AdminClient(plane.bridge_urls()["homeserver"], "admin", password.get_secret_value() if password else "")
        await admin.login()
        await admin.start()
        yield Team(home, plane, admin, model, config)
    finally:
        if admin is not None:
            await admin.stop()
        if plane is not None:
            await plane.stop()
        if provider is None:
            await model.stop()
