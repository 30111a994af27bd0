"""The console's writes: approve or deny a waiting call, confirm a plan, pause / resume / cancel /
complete a project, create and remove a worker — the same code as chat, the CLI and the control API (``plane.approvals.decide``,
``plane.admin_action``), behind the console's session and CSRF check (hiclaw.console.server).

A project's buttons carry the plan version the page showed: a change made on an older view is
refused with one line and nothing written (conflict-safe, as ``hiclaw project … --version``)."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from hiclaw.console.render import esc, page
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.models import ProjectState, WorkerState

#: The project buttons by state, and the admin action of each.
PROJECT_ACTIONS = {"confirm": "project-confirm", "pause": "project-pause", "resume": "project-resume",
                   "cancel": "project-cancel", "complete": "project-complete"}
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
        label = f"Confirm plan (version {project.version})" if action == "confirm" else action.capitalize()
        buttons.append(f'<form method="post" action="/projects/{esc(project.id)}/{action}" class="inline">'
                       f'{hidden("csrf", csrf)}{hidden("version", project.version)}'
                       f'<button class="{action}">{esc(label)}</button></form>')
    if not buttons:
        return ""
    return ('<div class="steer">' + " ".join(buttons)
            + ' <span class="muted">(confirm: the plan shown starts; pause: nothing new starts; complete: done now, '
              'the rest cancelled)</span></div>')


def worker_form(config: Any, csrf: str) -> str:
    """The new-worker form: the model a choice of the configured aliases (else free text)."""
    default = config.team.worker_model
    if config.models:
        options = "".join(f'<option{" selected" if alias == default else ""}>{esc(alias)}</option>'
                          for alias in sorted(config.models))
        model = f'<select name="model">{options}</select>'
    else:
        model = f'<input name="model" value="{esc(default)}" maxlength="100">'
    return (f'<form method="post" action="/workers" class="new-worker">{hidden("csrf", csrf)}'
            '<label>Name <input name="name" required maxlength="31" pattern="[a-z][a-z0-9-]*" '
            'placeholder="alex"></label>'
            '<label>Role <input name="role" required maxlength="300" placeholder="writer: drafts the copy"></label>'
            f'<label>Model {model}</label>'
            '<label>Skills <input name="skills" placeholder="comma-separated, optional"></label>'
            '<label>Budget USD <input name="budget_usd" inputmode="decimal" placeholder="default"></label>'
            '<label><input type="checkbox" name="network" value="1"> full network</label>'
            '<button>Create worker</button></form>')


def remove_form(name: str, csrf: str) -> str:
    """Remove a worker: its name typed again, so a slip of the finger removes nobody."""
    return (f'<form method="post" action="/workers/{esc(name)}/remove" class="inline">{hidden("csrf", csrf)}'
            f'<input name="confirm" required maxlength="31" placeholder="type {esc(name)} to remove" '
            f'aria-label="type {esc(name)} to remove"><button class="deny">Remove</button></form>')


def _budget(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInputError(f"budget {text!r} is not a number", hint="give US dollars, e.g. 5 or 2.50, or leave it empty") \
            from None
    if not 0 < value < float("inf"):
        raise InvalidInputError(f"budget {text!r} must be more than 0", hint="give US dollars, e.g. 5, or leave it empty")
    return value


def refused_page(error: HiclawError, csrf: str, back: str) -> str:
    """The "Not done" page: the one line of ``error`` (its hint included), and a way back."""
    return page("Not done", f'<p class="error">{esc(error)}</p><p><a href="{esc(back)}">Back</a></p>', csrf=csrf)


def _csrf(request: web.Request) -> str:
    from hiclaw.console.pages import _csrf

    return _csrf(request)


def _page(request: web.Request, title: str, body: str) -> web.Response:
    return web.Response(content_type="text/html", text=page(title, body, csrf=_csrf(request), active="/"))


class Actions:
    def __init__(self, plane: Any) -> None:
        self.plane = plane

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/approvals/{id}/{verb:approve|deny}", self.decide),
                web.post("/projects/{id}/{action:confirm|pause|resume|cancel|complete}", self.steer),
                web.get("/workers/new", self.new_worker_page), web.post("/workers", self.create_worker),
                web.get("/workers/{name}/remove", self.remove_worker_page),
                web.post("/workers/{name}/remove", self.remove_worker)]

    @staticmethod
    def refused(request: web.Request, error: HiclawError, back: str) -> web.Response:
        return web.Response(status=409, content_type="text/html", text=refused_page(error, _csrf(request), back))

    # The forms have pages of their own: the team page reloads itself, which would wipe a form half filled in.

    async def new_worker_page(self, request: web.Request) -> web.StreamResponse:
        return _page(request, "New worker", worker_form(self.plane.config, _csrf(request)))

    async def remove_worker_page(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        worker = self.plane.state.find_worker(name)
        if worker is None or worker.state == WorkerState.REMOVED:
            return self.refused(request, NotFoundError(f"no worker {name!r}"), "/#workers")
        body = (f"<p>Remove <b>{esc(name)}</b> ({esc(worker.role)})? Its process, tokens, storage grants and chat "
                "account are taken away; its files stay in storage.</p>" + remove_form(name, _csrf(request)))
        return _page(request, f"Remove {name}", body)

    async def create_worker(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = str(form.get("name") or "").strip()
        try:
            existing = self.plane.state.find_worker(name)
            if existing is not None and existing.state != WorkerState.REMOVED:
                raise InvalidInputError(f"worker {name!r} exists already",
                                  hint="pick another name, or remove it first (its row on this page)")
            await self.plane.admin_action("create-worker", {
                "name": name, "role": str(form.get("role") or ""), "model": str(form.get("model") or "").strip() or None,
                "skills": [s.strip() for s in str(form.get("skills") or "").split(",") if s.strip()],
                "budget_usd": _budget(str(form.get("budget_usd") or "")), "network": form.get("network") == "1"})
        except HiclawError as exc:
            return self.refused(request, exc, "/workers/new")
        raise web.HTTPSeeOther("/#workers")

    async def remove_worker(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name = request.match_info["name"]
        try:
            if str(form.get("confirm") or "").strip() != name:
                raise InvalidInputError(f"type {name} (the worker's name) to remove it: nothing was removed",
                                  hint="the name in the field must match exactly")
            await self.plane.admin_action("remove-worker", {"name": name})
        except HiclawError as exc:
            return self.refused(request, exc, f"/workers/{name}/remove")
        raise web.HTTPSeeOther("/#workers")

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
