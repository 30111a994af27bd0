"""``hiclaw up`` (run the team) and ``hiclaw status``."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import click
import httpx

from hiclaw.cli.app import App, echo_safe, emit_json, pass_app, table, warn_if_root
from hiclaw.errors import HiclawError
from hiclaw.protocols import AdoptingSandbox


def running_control(app: App) -> dict[str, Any] | None:
    """The running control plane's URL and admin token, if one is up for this home."""
    from hiclaw.control.api import control_file

    path = control_file(app.home)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)
    except (ValueError, KeyError, ProcessLookupError, PermissionError, OSError):
        return None
    return data


def control_request(app: App, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> Any:
    info = running_control(app)
    if info is None:
        raise HiclawError("the team is not running", hint="start it with `hiclaw up` (in another terminal)")
    response = httpx.request(method, info["url"] + path, json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {info['token']}"})
    data = response.json()
    if response.status_code != 200:
        raise HiclawError(str(data.get("error") or f"control plane answered {response.status_code}"))
    return data


@click.command("up")
@click.option("--lan", is_flag=True, help="Listen beyond loopback so phones on your network can connect.")
@click.option("--yolo", is_flag=True, help="Start projects without asking you to confirm plans.")
@pass_app
def up_command(app: App, lan: bool, yolo: bool) -> None:
    """Start the team: homeserver, gateway, storage, Manager and workers. Ctrl-C stops it all."""
    from hiclaw.control.plane import ControlPlane

    if running_control(app) is not None:
        raise HiclawError(f"a control plane is already running for {app.home}", hint="use `hiclaw status`, or stop it first")
    config = app.config
    if yolo:
        config.team.yolo = True
    if lan:
        config.channel.settings = {**config.channel.settings, "host": "0.0.0.0"}  # noqa: S104 - --lan asks for all interfaces
        config.console.host = "0.0.0.0"  # noqa: S104 - --lan asks for all interfaces
        click.echo("warning: --lan: the homeserver and the web console listen on all interfaces; anyone on your "
                   "network can reach them", err=True)
    started = time.monotonic()
    plane = ControlPlane(app.home, config=config, secrets=app.secrets, host=app.host,
                         progress=lambda line: click.echo(f"  · {time.monotonic() - started:5.1f}s  {line}"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, plane.request_stop)
        click.echo("starting hiclaw …")
        try:
            await plane.start()
            warn_if_root()  # once the team runs (a start that fails says only why)
            print_login(plane, lan=lan)
            await plane.run_forever()
        finally:
            click.echo("stopping …")
            await plane.stop()
            click.echo("stopped")

    asyncio.run(main())


def lan_address() -> str | None:
    """This machine's address on its local network (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def print_login(plane: Any, *, lan: bool = False) -> None:
    urls = plane.bridge_urls()
    homeserver = urls.get("homeserver", "(see your channel plugin)")
    if lan and homeserver.startswith("http://127.0.0.1:"):
        address = lan_address()
        if address:
            homeserver = homeserver.replace("127.0.0.1", address, 1)
    user = plane.channel.user_id("admin")
    click.echo("")
    click.echo("hiclaw is up. Talk to your Manager:")
    click.echo(f"  Element / FluffyChat: homeserver {homeserver}, user {user}")
    if plane.admin_password_created:
        password = plane.secrets.get("matrix_admin_password")
        click.echo(f"  password (shown once; kept in secrets.toml): {password.get_secret_value() if password else '?'}")
    else:
        click.echo("  password: `matrix_admin_password` in secrets.toml")
    click.echo("  terminal: hiclaw chat")
    console = getattr(plane, "console", None)
    if console is not None:
        base = console.url
        address = lan_address() if lan else None
        if address:
            base = base.replace("127.0.0.1", address, 1)
        click.echo(f"  web console: {base} — one-time login link (valid 10 minutes, once; `hiclaw console` "
                   f"prints a new one):")
        click.echo(f"    {console.login_link(base)}")
    click.echo("Ctrl-C stops the team (workers included).")


@click.command("console")
@pass_app
def console_command(app: App) -> None:
    """Print the web console's address and a new one-time login link (valid 10 minutes, once)."""
    data = control_request(app, "POST", "/v1/admin/console-link", {})
    click.echo(f"web console: {data['url']}")
    click.echo(f"one-time login link: {data['link']}")


@click.command("down")
@pass_app
def down_command(app: App) -> None:
    """Stop what a crashed `hiclaw up` left running: workers' sandboxes and the team's homeserver.

    A crash of `hiclaw up` leaves workers and the homeserver running on purpose, so the next
    `hiclaw up` takes them over with nothing lost; `hiclaw down` is for when you do not want that.
    """
    from hiclaw.host import ComponentContext

    if running_control(app) is not None:
        raise HiclawError("the team is running", hint="stop `hiclaw up` with Ctrl-C: that stops everything")
    sandbox = app.config.sandbox
    backend = app.host.create("sandbox", sandbox.plugin, sandbox.settings,
                              ComponentContext(home=app.home, side="control", config=app.config), section="sandbox.settings")
    stopped = asyncio.run(backend.stop_leftovers()) if isinstance(backend, AdoptingSandbox) else []
    for name in stopped:
        click.echo(f"worker {name} stopped")
    if not stopped:
        click.echo("no workers were left running")
    from hiclaw.cli.homeserver import embedded_homeserver, matrix_settings

    if app.config.channel.plugin == "matrix" and matrix_settings(app).embedded:
        click.echo("homeserver stopped" if embedded_homeserver(app).stop(force=True) else "homeserver was not running")


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status_command(app: App, as_json: bool) -> None:
    """Components, workers (state, model, tokens, cost), projects and tasks."""
    if running_control(app) is not None:
        data = control_request(app, "GET", "/v1/status")
        data["running"] = True
    else:
        data = offline_status(app)
    if as_json:
        emit_json(data)
        return
    click.echo("team: " + ("running" if data["running"] else "stopped"))
    for name, value in data.get("components", {}).items():
        echo_safe(f"  {name}: {value}")
    click.echo("")
    table([[w["name"], w["model"], w["state"], w.get("process", "-"), w.get("tokens", "-"), w.get("cost_usd", "-")]
           for w in data["workers"]], ["worker", "model", "state", "process", "tokens", "cost_usd"])
    click.echo("")
    table([[p["id"], p["title"], p["state"]] for p in data["projects"]], ["project", "title", "state"])
    click.echo("")
    table([[t["id"], t["project"] or "-", t["assignee"], t["state"] + (" (stalled)" if t.get("stalled_at") else ""),
            t["result_status"] or "-", t["title"]]
           for t in data["tasks"]], ["task", "project", "assignee", "state", "result", "title"])
    waiting = data.get("approvals") or []
    if waiting:
        click.echo("")
        echo_safe(f"{len(waiting)} approval{'s wait' if len(waiting) != 1 else ' waits'} for you: "
                  + ", ".join(f"{a['id']} ({a['worker']}: {a['kind']} {a['target'][:60]})" for a in waiting)
                  + " — see `hiclaw approvals list`")


def offline_status(app: App) -> dict[str, Any]:
    from hiclaw.control.approvals import listing
    from hiclaw.state import StateDB

    path = app.home / "state.db"
    if not path.exists():
        return {"running": False, "components": {}, "workers": [], "projects": [], "tasks": [], "approvals": []}
    state = StateDB(path, readonly=True)
    try:
        return {
            "running": False,
            "components": {},
            "workers": [w.view() for w in state.workers()],
            "projects": [p.model_dump() for p in state.projects()],
            "tasks": [t.view() for t in state.tasks()],
            "approvals": listing(state),
        }
    finally:
        state.close()
