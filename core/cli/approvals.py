"""``hiclaw approvals list|show|approve|deny``: the calls of workers' tools that wait for the admin
(docs/approvals.md). Live through the control API while the team runs; on a stopped team's state
DB otherwise — a call approved then runs when its worker asks again after the next ``hiclaw up``."""
from __future__ import annotations

import json
from typing import Any

import click

from hiclaw.cli.app import App, echo_safe, emit_json, offline_state, pass_app, table
from hiclaw.cli.up import control_request, running_control


@click.group("approvals")
def approvals_group() -> None:
    """Calls of workers' tools that wait for you: list, approve, deny."""


def _rows(app: App, every: bool) -> list[dict[str, Any]]:
    from hiclaw.control.approvals import listing

    if running_control(app) is not None:
        return list(control_request(app, "POST", "/v1/admin/approvals-list", {"all": every}))
    if not (app.home / "state.db").exists():
        return []
    with offline_state(app, readonly=True) as state:
        return listing(state, every=every)


def _decide(app: App, approval_id: str, approve: bool, note: str) -> dict[str, Any]:
    from hiclaw.control.approvals import decide

    action = "approval-approve" if approve else "approval-deny"
    if running_control(app) is not None:
        return dict(control_request(app, "POST", f"/v1/admin/{action}", {"id": approval_id, "note": note}))
    with offline_state(app) as state:
        return decide(state, approval_id, approve=approve, by="admin", note=note).view()


@approvals_group.command("list")
@click.option("--all", "every", is_flag=True, help="Also the decided ones.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def approvals_list(app: App, every: bool, as_json: bool) -> None:
    """The approvals waiting for you (with --all: every one, newest last)."""
    rows = _rows(app, every)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no approval waits for you" if not every else "no approvals yet")
        return
    table([[r["id"], r["state"], r["worker"], r["task_id"] or "-", f"{r['kind']} {r['target']}", r["created_at"],
            r["note"] or r["reason"]] for r in rows],
          ["ID", "STATE", "WORKER", "TASK", "CALL", "ASKED", "REASON / NOTE"])


@approvals_group.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def approvals_show(app: App, approval_id: str, as_json: bool) -> None:
    """One approval with the call's arguments."""
    found = next((r for r in _rows(app, True) if r["id"] == approval_id.strip()), None)
    if found is None:
        from hiclaw.errors import NotFoundError

        raise NotFoundError(f"no approval {approval_id!r}", hint="see `hiclaw approvals list --all` for the ids")
    if as_json:
        emit_json(found)
        return
    for key in ("id", "state", "worker", "task_id", "project_id", "kind", "target", "reason", "created_at",
                "decided_by", "decided_at", "note", "finished_at"):
        if found.get(key) is not None:
            echo_safe(f"{key:11} {found[key]}")
    try:
        arguments = json.dumps(json.loads(found["arguments"]), indent=2, ensure_ascii=False)
    except ValueError:
        arguments = found["arguments"]
    echo_safe("arguments:\n" + arguments)


@approvals_group.command("approve")
@click.argument("approval_id")
@click.option("--note", default="", help="A note kept with the decision.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def approvals_approve(app: App, approval_id: str, note: str, as_json: bool) -> None:
    """Let the call run (once)."""
    _say(_decide(app, approval_id, True, note), as_json)


@approvals_group.command("deny")
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why — the worker's model reads it.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def approvals_deny(app: App, approval_id: str, reason: str, as_json: bool) -> None:
    """Refuse the call; the worker is told the reason."""
    _say(_decide(app, approval_id, False, reason), as_json)


def _say(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(result)
    elif result["state"] == "approved":
        echo_safe(f"{result['id']} approved: {result['worker']}'s {result['kind']} call {result['target']} runs "
                  "when it asks again (at once while the team runs)")
    else:
        echo_safe(f"{result['id']} denied: {result['worker']} is told ({result['note']})")
