"""``hiclaw homeserver start|stop|status``: the embedded Synapse outside of ``hiclaw up``."""
from __future__ import annotations

import time
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, pass_app
from hiclaw.errors import ConfigError


def matrix_settings(app: App) -> Any:
    """The validated ``[channel.settings]`` of the Matrix channel (errors name the key)."""
    from hiclaw.plugins.channels.matrix.settings import MatrixSettings

    if app.config.channel.plugin != "matrix":
        raise ConfigError(f"the configured channel is {app.config.channel.plugin!r}, not 'matrix'",
                          hint="this command works with [channel] plugin = \"matrix\"")
    settings = app.host.validate_settings("channel", "matrix", app.config.channel.settings, section="channel.settings")
    assert isinstance(settings, MatrixSettings)
    return settings


def embedded_homeserver(app: App) -> Any:
    from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver

    settings = matrix_settings(app)
    if not settings.embedded:
        raise ConfigError(f"the channel uses the external homeserver {settings.homeserver_url}; there is nothing to run here",
                          hint="set [channel.settings] embedded = true to run the embedded Synapse")
    return EmbeddedHomeserver(app.home, settings)


@click.group("homeserver")
def homeserver_group() -> None:
    """Run the embedded Matrix homeserver (Synapse) on its own."""


@homeserver_group.command("start")
@click.option("--foreground", is_flag=True, help="Stay attached; Ctrl-C stops the server.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the server to answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def start_command(app: App, foreground: bool, timeout: float, as_json: bool) -> None:
    """Start Synapse in the background (or reuse the running one)."""
    server = embedded_homeserver(app)
    started = time.monotonic()
    status = server.start(detach=not foreground, timeout=timeout)
    status["ready_seconds"] = round(time.monotonic() - started, 2)
    if as_json:
        emit_json(status)
    else:
        click.echo(f"homeserver running at {status['url']} (server name {status['server_name']}, pid {status['pid']}, "
                   f"ready in {status['ready_seconds']:.1f}s)")
        click.echo(f"log: {status['log']}")
    if foreground:
        try:
            while server.status()["state"] != "stopped":
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop(force=True)
            click.echo("homeserver stopped")


@homeserver_group.command("stop")
@click.option("--force", is_flag=True, help="Also stop a server that a running `hiclaw up` started.")
@pass_app
def stop_command(app: App, force: bool) -> None:
    """Stop the background Synapse."""
    server = embedded_homeserver(app)
    click.echo("homeserver stopped" if server.stop(force=force) else "homeserver was not running")


@homeserver_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status_command(app: App, as_json: bool) -> None:
    """Show whether Synapse runs, where, and its files."""
    status = embedded_homeserver(app).status()
    if as_json:
        emit_json(status)
        return
    width = max(len(k) for k in status)
    for key, value in status.items():
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")
