"""The Matrix channel (default): agents and the admin talk in Matrix rooms, via matrix-nio.

Configure it in ``config.toml`` (every key: ``docs/matrix.md``)::

    [channel]
    plugin = "matrix"
    [channel.settings]
    embedded = true            # Synapse under $HICLAW_HOME/homeserver, on 127.0.0.1:18008
    server_name = "hiclaw.local"

or point it at any homeserver (``embedded = false``, ``homeserver_url = "https://…"``) and give
one of the secrets ``matrix_registration_token``, ``matrix_admin_token`` or
``matrix_registration_shared_secret`` so hiclaw can create the agents' accounts.

Python API (what the control plane and workers use)::

    from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver
    server = EmbeddedHomeserver(home, settings); server.start(); server.url; server.stop()

    channel = host.create("channel", "matrix", settings, ctx)   # control side: logged in as manager
    await channel.start_services()                              # embedded Synapse as a child (hiclaw up)
    await channel.start()                                       # first sync done, rooms reconciled
    creds = await channel.ensure_account("alice", display_name="Alice")
    room = await channel.ensure_room("worker-alice", name="Worker: alice",
                                     members=["admin", "alice"], admins=["admin"])
    await channel.send(room, "Please start **task-001**", mentions=["alice"], idempotency_key="t1")
    channel.on_message(MentionGate(channel.me, handler))        # hiclaw.wakeup
    worker_side = channel.worker_settings("alice")              # → HICLAW_WORKER_SPEC
    channel.service_urls()                                      # {"homeserver": url} to bridge into sandboxes
    await channel.stop(); await channel.stop_services()

This module stays import-light (pydantic only): matrix-nio is imported by the factory.
"""
from __future__ import annotations

from typing import Any

from hiclaw import hookimpl
from hiclaw.errors import ConfigError
from hiclaw.plugins.channels.matrix.settings import SECRET_NAMES, MatrixSettings
from hiclaw.protocols import RegisterChannel

__all__ = ["MatrixSettings", "make_channel"]


def make_channel(settings: MatrixSettings, ctx: Any) -> Any:
    """Control side: a :class:`~.control.ControlMatrixChannel` logged in as ``manager``.
    Worker side: a :class:`~.channel.MatrixChannel` with the worker's own token."""
    if ctx.side == "worker":
        from hiclaw.plugins.channels.matrix.channel import MatrixChannel

        if not settings.user_id or settings.access_token is None or not ctx.agent:
            raise ConfigError("the worker's [channel.settings] lack user_id/access_token",
                              hint="workers get them from the control plane (HICLAW_WORKER_SPEC)")
        return MatrixChannel(
            settings, agent=ctx.agent, store_dir=settings.store_dir or ctx.home / "channel",
            user_id=settings.user_id, access_token=settings.access_token.get_secret_value(),
            device_id=settings.device_id,
        )
    from hiclaw.plugins.channels.matrix.control import ControlMatrixChannel

    return ControlMatrixChannel(settings, home=ctx.home, secrets=ctx.secrets)


@hookimpl
def hiclaw_register_channels(register: RegisterChannel) -> None:
    register("matrix", make_channel, settings_model=MatrixSettings, secrets=SECRET_NAMES,
             description="Matrix rooms via matrix-nio; embedded Synapse or any homeserver")
