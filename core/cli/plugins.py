"""``hiclaw plugins list|install|uninstall|enable|disable``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.config import update_config_file
from hiclaw.errors import PluginError


@click.group("plugins")
def plugins_group() -> None:
    """List, install and manage plugins (channels, gateways, storage, sandboxes, tools)."""


@plugins_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also show hooks and modules.")
@pass_app
def list_command(app: App, as_json: bool, show_all: bool) -> None:
    """Show every plugin, where it comes from and whether it works."""
    infos = app.host.plugins()
    if as_json:
        emit_json([info.as_dict() for info in infos])
        return
    rows = []
    for info in infos:
        kinds = ", ".join(info.capabilities) or ("(hooks only)" if info.hooks else "-")
        status = info.status if info.status != "broken" else f"broken: {info.error}"
        row = [info.name, info.version, info.source, kinds, status]
        if show_all:
            row.append(f"{info.module} [{', '.join(info.hooks)}]")
        rows.append(row)
    headers = ["name", "version", "source", "provides", "status"] + (["module"] if show_all else [])
    table(rows, headers)
    broken = [i for i in infos if i.status == "broken"]
    if broken:
        click.echo(f"\n{len(broken)} broken plugin(s); fix or uninstall them (`hiclaw plugins uninstall NAME`).", err=True)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False)


def _pip_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    return (errors[-1] if errors else (lines[-1] if lines else f"pip exited with {result.returncode}"))[:300]


def _fresh_plugin_list() -> list[dict[str, Any]]:
    """List plugins in a new interpreter, so newly installed entry points are seen."""
    result = subprocess.run(
        [sys.executable, "-m", "hiclaw", "plugins", "list", "--json"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PluginError(f"could not list plugins after installing: {result.stderr.strip()[:300]}")
    return json.loads(result.stdout)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@plugins_group.command("install")
@click.argument("targets", nargs=-1, required=True)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade if already installed.")
@click.option("-e", "--editable", is_flag=True, help="Install a local project in editable mode.")
@click.option("--json", "as_json", is_flag=True)
def install_command(targets: tuple[str, ...], upgrade: bool, editable: bool, as_json: bool) -> None:
    """Install plugin packages with pip into hiclaw's environment, then check they load.

    TARGETS is anything pip accepts: a name (`hiclaw-irc`), a path, a wheel or a URL.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        args = ["install", "--report", str(report)]
        if upgrade:
            args.append("--upgrade")
        for target in targets:
            args.extend(["-e", target] if editable else [target])
        result = _pip(*args)
        if result.returncode != 0:
            raise PluginError(
                f"pip could not install {' '.join(targets)}: {_pip_error(result)}",
                hint="check the name, path or package index",
            )
        installed = []
        if report.exists():
            data = json.loads(report.read_text())
            installed = [_canonical(item["metadata"]["name"]) for item in data.get("install", [])]
    plugins = _fresh_plugin_list()
    names_from_targets = {_canonical(Path(t).name if os.path.exists(t) else t.split("==")[0].split("[")[0]) for t in targets}
    wanted = set(installed) | names_from_targets
    mine = [p for p in plugins if p["source"] == "entry point" and _canonical(p.get("distribution") or "") in wanted]
    if as_json:
        emit_json({"installed": installed, "plugins": mine})
    else:
        for dist in installed:
            click.echo(f"installed {dist}")
        for plugin in mine:
            state = plugin["status"] if plugin["status"] != "broken" else f"BROKEN: {plugin['error']}"
            kinds = ", ".join(plugin["capabilities"]) or "hooks: " + ", ".join(plugin["hooks"])
            click.echo(f"plugin {plugin['name']} {plugin['version']} ({kinds}): {state}")
    if not mine:
        raise PluginError(
            f"{' '.join(targets)} installed but provides no hiclaw plugin",
            hint="a plugin declares `[project.entry-points.hiclaw]` in its pyproject.toml (see docs/plugins/tutorial.md)",
        )
    broken = [p for p in mine if p["status"] == "broken"]
    if broken:
        raise PluginError(
            f"plugin {broken[0]['name']} is installed but broken: {broken[0]['error']}",
            hint=f"fix it and reinstall, or `hiclaw plugins uninstall {broken[0]['name']}`",
        )


def _distribution_for(app: App, name: str) -> str:
    info = app.host.plugin(name)
    if info is not None:
        if info.source == "default":
            raise PluginError(f"plugin {name!r} is built into hiclaw", hint=f"use `hiclaw plugins disable {name}` instead")
        if info.distribution:
            return info.distribution
    return name  # a distribution name given directly


@plugins_group.command("uninstall")
@click.argument("names", nargs=-1, required=True)
@pass_app
def uninstall_command(app: App, names: tuple[str, ...]) -> None:
    """Uninstall plugin packages (by plugin or distribution name)."""
    dists = []
    for name in names:
        dist = _distribution_for(app, name)
        if _pip("show", dist).returncode != 0:
            raise PluginError(f"no installed plugin or package named {name!r}", hint="see `hiclaw plugins list`")
        dists.append(dist)
    result = _pip("uninstall", "-y", *dists)
    if result.returncode != 0:
        raise PluginError(f"pip could not uninstall {' '.join(dists)}: {_pip_error(result)}")
    for dist in dists:
        click.echo(f"uninstalled {dist}")


def _set_disabled(app: App, name: str, disabled: bool) -> None:
    known = {i.name for i in app.host.plugins()}
    if name not in known:
        raise PluginError(f"no plugin named {name!r}", hint="see `hiclaw plugins list` for names")

    def mutate(data: dict[str, Any]) -> None:
        section = data.setdefault("plugins", {})
        current = [n for n in section.get("disabled", []) if n != name]
        section["disabled"] = sorted([*current, name] if disabled else current)

    path = update_config_file(app.home, mutate)
    click.echo(f"{'disabled' if disabled else 'enabled'} {name} (in {path})")


@plugins_group.command("enable")
@click.argument("name")
@pass_app
def enable_command(app: App, name: str) -> None:
    """Enable a disabled plugin."""
    _set_disabled(app, name, False)


@plugins_group.command("disable")
@click.argument("name")
@pass_app
def disable_command(app: App, name: str) -> None:
    """Disable a plugin without uninstalling it."""
    _set_disabled(app, name, True)
