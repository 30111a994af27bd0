"""``hiclaw sandbox check``: prove a sandbox backend's isolation with probes run inside it."""
from __future__ import annotations

import asyncio
from typing import Any

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.errors import HiclawError


@click.group("sandbox")
def sandbox_group() -> None:
    """Verify how workers are isolated (bwrap, process, docker, kubernetes)."""


def _summary(report: Any) -> str:
    def counts(kind: str) -> str:
        found = [p.verdict for p in report.probes if p.kind == kind]
        return ", ".join(f"{found.count(v)} {v}" for v in ("isolated", "EXPOSED", "unverified"))

    controls = [p for p in report.probes if p.kind == "control"]
    working = sum(p.verdict == "works" for p in controls)
    services = f"; through services: {counts('service')}" if any(p.kind == "service" for p in report.probes) else ""
    result = "PASSED" if report.passed else "FAILED"
    return f"{report.backend}: {counts('isolation')}; {working}/{len(controls)} controls work{services} — {result}"


def _rows(probes: list[Any], verbose: bool) -> list[list[str]]:
    rows = []
    for probe in probes:
        inside = "reached" if probe.sandbox.get("reached") else "blocked"
        outside = "reached" if probe.baseline.get("reached") else "blocked"
        row = [probe.verdict, probe.name, probe.description, inside, outside]
        if verbose:
            row.append(f"{probe.sandbox.get('detail', '')} | host: {probe.baseline.get('detail', '')}")
        rows.append(row)
    return rows


@sandbox_group.command("check")
@click.option("--backend", "backend_name", metavar="NAME",
              help="Backend to check (default: [sandbox] plugin in config.toml, usually bwrap).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", is_flag=True, help="Show what each probe saw, inside and on the host.")
@click.option("--no-services", is_flag=True,
              help="Skip the probes through the services a worker reaches (storage, gateway, skill fetches, "
                   "wake-ups, bridges; they start the embedded gateway, which takes a few seconds).")
@pass_app
def check_command(app: App, backend_name: str | None, as_json: bool, verbose: bool, no_services: bool) -> None:
    """Start a sandbox and try to break out of it; exit 1 if any probe gets through.

    Every verdict comes from a probe program run inside a real sandbox of the backend, and the
    same program run on the host as a baseline: `isolated` means blocked inside but possible on
    the host, `EXPOSED` means it got through, `unverified` means the host could not do it
    either (so nothing is claimed). The `process` backend isolates nothing: it always fails.

    Then the same sandbox attacks the services a worker reaches — a link swapped under a
    control-plane read, its skills folder, the gateway's parameters, skill fetches aimed at
    internal addresses, worker-to-worker wake-ups, a connection flood — against real components
    the check starts; their baseline is a negative control (the attack would matter here).
    """
    from hiclaw.host import ComponentContext
    from hiclaw.sandbox.check import run_check

    configured = app.config.sandbox
    name = backend_name or configured.plugin
    settings = configured.settings if name == configured.plugin else {}
    host = app.host
    host.validate_settings("sandbox", name, settings, section="sandbox.settings")

    def make_backend(ctx: Any) -> Any:
        return host.create("sandbox", name, settings, ComponentContext(home=ctx.home, side="control", config=app.config))

    try:
        report = asyncio.run(run_check(name, make_backend, real_control_home=app.home, config=app.config,
                                       services=not no_services))
    except HiclawError:
        raise
    except (TimeoutError, OSError, RuntimeError) as exc:
        raise HiclawError(f"sandbox check with backend {name!r} could not run: {exc}",
                          hint="see the message above; `hiclaw sandbox check --backend process` needs no isolation support") from None
    if as_json:
        emit_json(report.as_dict())
    else:
        for warning in report.warnings:
            click.echo(warning, err=True)
        headers = ["verdict", "probe", "tries to", "in sandbox", "on host"] + (["details"] if verbose else [])
        table(_rows([p for p in report.probes if p.kind != "service"], verbose), headers)
        services = [p for p in report.probes if p.kind == "service"]
        if services:
            click.echo("\nthrough the services a worker reaches (on host: the negative control):")
            table(_rows(services, verbose), headers)
        if any(p.verdict == "unverified" for p in report.probes):
            click.echo("\nunverified: the host itself could not do this (or the control failed), so blocking it proves nothing.")
        if report.confinement:
            click.echo("\nlimits per worker:")
            for what, how in report.confinement.items():
                click.echo(f"  {what.replace('_', ' ')}: {how}")
        click.echo("\n" + _summary(report))
    if not report.passed:
        raise click.exceptions.Exit(1)
