"""``hiclaw worker run|create|list|remove`` (``logs`` lives in :mod:`hiclaw.cli.worker`)."""
from __future__ import annotations

import click

from hiclaw.cli.app import App, emit_json, pass_app, table
from hiclaw.cli.up import control_request, offline_status, running_control
from hiclaw.cli.worker import worker_group


@worker_group.command("run")
def run_command() -> None:
    """Run a worker (inside its sandbox; started by the control plane, not by hand)."""
    from hiclaw.worker.__main__ import main

    raise SystemExit(main())


@worker_group.command("create")
@click.argument("name")
@click.option("--role", required=True, help="Role and responsibilities (becomes its SOUL.md).")
@click.option("--model", help="Default model alias (e.g. smart, fast, cheap).")
@click.option("--skill", "skills", multiple=True,
              help="A skill: bundled, a registry skill's name, or a source such as owner/repo@skill (repeatable); "
                   "one that cannot be installed refuses the creation.")
@click.option("--budget", "budget_usd", type=float, help="Spending limit in USD for its token.")
@click.option("--network", is_flag=True, help="Give it full network access (default: none but its bridges).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def create_command(app: App, name: str, role: str, model: str | None, skills: tuple[str, ...],
                   budget_usd: float | None, network: bool, as_json: bool) -> None:
    """Create (or update) a worker in the running team: account, room, token, home, sandbox."""
    worker = control_request(app, "POST", "/v1/admin/create-worker", {
        "name": name, "role": role, "model": model, "skills": list(skills), "budget_usd": budget_usd,
        "network": network})
    if as_json:
        emit_json(worker)
    else:
        click.echo(f"worker {worker['name']} is ready (model {worker['model']}); its room: Worker: {worker['name']}")


@worker_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """Workers with their role, model, state and usage."""
    data = control_request(app, "GET", "/v1/status") if running_control(app) else offline_status(app)
    if as_json:
        emit_json(data["workers"])
        return
    table([[w["name"], w["model"], w["state"], w.get("process", "stopped"), w.get("cost_usd", "-"), w["role"]]
           for w in data["workers"]], ["name", "model", "state", "process", "cost_usd", "role"])


@worker_group.command("remove")
@click.argument("name")
@pass_app
def remove_command(app: App, name: str) -> None:
    """Stop a worker; revoke its gateway token, storage access and chat account (deactivated)."""
    control_request(app, "POST", "/v1/admin/remove-worker", {"name": name})
    click.echo(f"removed {name}")
