"""The console's writes: approve or deny a waiting call, confirm / pause / resume / cancel /
complete a project — the same code as chat, the CLI and the control API (``plane.approvals.decide``,
``plane.admin_action``), behind the console's session and CSRF check (hiclaw.console.server).

A project's buttons carry the plan version the page showed: a change made on an older view is
refused with one line and nothing written (conflict-safe, as ``hiclaw project … --version``)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from hiclaw.console.render import esc, page
from hiclaw.errors import HiclawError
from hiclaw.models import ProjectState

#: The project buttons by state, and the admin action of each.
PROJECT_ACTIONS = {"confirm": "project-confirm", "pause": "project-pause", "resume": "project-resume", "cancel": "project-cancel",
                   "complete": "project-complete"}
LABELS = {"confirm": "Confirm plan"}
OFFERED = {ProjectState.RUNNING: ("pause", "complete", "cancel"), ProjectState.PAUSED: ("resume", "complete", "cancel"),
           ProjectState.AWAITING_CONFIRMATION: ("confirm", "cancel"), ProjectState.PLANNING: ("cancel",)}


def hidden(name: str, value: Any) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def approval_forms(approval: dict[str, Any], csrf: str) -> str:
    """Approve / deny buttons for one waiting approval (a reason is needed to deny)."""
    target = f"/approvals/{approval['id']}"
    return (f'<form method="post" action="{esc(target)}/approve" class="inline">{hidden("csrf", csrf)}'
            f'<button class="approve">Approve {esc(approval["id"])}</button></form> '
            f'<form method="post" action="{esc(target)}/deny" class="inline">{hidden("csrf", csrf)}'
            '<input name="note" placeholder="why not (the worker reads it)" required maxlength="300">'
            f'<button class="deny">Deny</button></form>')


def project_forms(project: Any, csrf: str) -> str:
    """The steering buttons a project in its state offers, each with the version shown."""
    buttons = []
    for action in OFFERED.get(project.state, ()):
        buttons.append(f'<form method="post" action="/projects/{esc(project.id)}/{action}" class="inline">'
                       f'{hidden("csrf", csrf)}{hidden("version", project.version)}'
                       f'<button class="{action}">{LABELS.get(action, action.capitalize())}</button></form>')
    if not buttons:
        return ""
    return ('<div class="steer">' + " ".join(buttons)
            + ' <span class="muted">(confirm: the plan shown starts; pause: nothing new starts; complete: done now, '
              'the rest cancelled)</span></div>')


class Actions:
    def __init__(self, plane: Any) -> None:
        self.plane = plane

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/approvals/{id}/{verb:approve|deny}", self.decide),
                web.post("/projects/{id}/{action:confirm|pause|resume|cancel|complete}", self.steer)]

    @staticmethod
    def refused(request: web.Request, error: HiclawError, back: str) -> web.Response:
        from hiclaw.console.pages import _csrf

        hint = f" — {error.hint}" if getattr(error, "hint", None) else ""
        body = f'<p class="error">{esc(error)}{esc(hint)}</p><p><a href="{esc(back)}">Back</a></p>'
        return web.Response(status=409, content_type="text/html", text=page("Not done", body, csrf=_csrf(request)))

    async def decide(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        approval_id, verb = request.match_info["id"], request.match_info["verb"]
        try:
            await self.plane.approvals.decide(approval_id, approve=verb == "approve", by="admin",
                                              note=str(form.get("note") or ""))
        except HiclawError as exc:
            return self.refused(request, exc, "/")
        raise web.HTTPSeeOther("/#approvals")

    async def steer(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        project_id, action = request.match_info["id"], request.match_info["action"]
        back = f"/projects/{project_id}"
        try:
            version = int(str(form.get("version") or ""))
        except ValueError:
            return self.refused(request, HiclawError("the form lost the plan version it showed",
                                                      hint="reload the page and try again"), back)
        try:
            await self.plane.admin_action(PROJECT_ACTIONS[action], {"project": project_id, "expected_version": version,
                                                                    "reason": "from the console"})
        except HiclawError as exc:
            return self.refused(request, exc, back)
        raise web.HTTPSeeOther(back)
