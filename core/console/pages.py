"""The console's pages: team, projects, tasks, usage, files — read from the running control plane.

Each page is rendered on the server from the state DB, the gateway's usage ledger and shared
storage; the writes (approve, deny, steer, workers) are :mod:`hiclaw.console.actions`, uploads
:mod:`hiclaw.console.uploads`. Every value an agent wrote is escaped (:mod:`hiclaw.console.render`).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from hiclaw.console.actions import approval_forms, project_forms
from hiclaw.console.charts import Bar, bar_chart, plan_svg
from hiclaw.console.chat import replan_form
from hiclaw.console.render import badge, esc, link, markdown_html, money, page, table
from hiclaw.console.uploads import upload_form
from hiclaw.errors import HiclawError, NotFoundError
from hiclaw.models import ProjectState, TaskState
from hiclaw.storage import layout

DAYS = 14
MAX_VIEW_BYTES = 1024 * 1024
ROOTS = (layout.AGENTS, layout.SHARED)
BUSY = (TaskState.IN_PROGRESS, TaskState.REVIEW)
#: A project whose plan the Manager can still revise (revise_plan).
REPLANNABLE = (ProjectState.AWAITING_CONFIRMATION, ProjectState.RUNNING, ProjectState.PAUSED)
T = TypeVar("T")


def _csrf(request: web.Request) -> str:
    from hiclaw.console.server import SESSION_KEY

    return request[SESSION_KEY].csrf


def _html(request: web.Request, title: str, body: str, *, active: str, refresh: int | None = None,
          status: int = 200, script: bool = False) -> web.Response:
    return web.Response(status=status, content_type="text/html",
                        text=page(title, body, csrf=_csrf(request), active=active, refresh=refresh, script=script))


def _find(request: web.Request, what: str, lookup: Callable[[str], T]) -> T | web.Response:
    """The project or task the URL names, or its 404 page."""
    try:
        return lookup(request.match_info["id"])
    except NotFoundError as exc:
        return _html(request, f"{what} not found", f"<p class=error>{esc(exc)}</p>", active="/projects", status=404)


def _when(stamp: str | None) -> str:
    return esc(stamp.replace("T", " ")[:19]) if stamp else "–"


def _cost(row: dict[str, Any]) -> float:
    return float(row.get("cost_usd") or 0)


class Pages:
    def __init__(self, plane: Any) -> None:
        self.plane = plane

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.team), web.get("/projects", self.projects),
                web.get("/projects/{id}", self.project), web.get("/tasks/{id}", self.task),
                web.get("/usage", self.usage), web.get("/files", self.files)]

    # ------------------------------------------------------------------ team

    async def team(self, request: web.Request) -> web.Response:
        plane, state = self.plane, self.plane.state
        status = await plane.status()
        seen_of = {w["name"]: w for w in status["workers"]}
        tasks = state.tasks()
        rows = []
        for worker in state.workers():
            mine = [t for t in tasks if t.assignee == worker.name]
            current = next((t for t in mine if t.state in BUSY), None)
            stamps = [s for t in mine for s in (t.last_progress_at, t.updated_at) if s] + [worker.updated_at]
            seen = seen_of.get(worker.name, {})
            rows.append([
                f"<b>{esc(worker.name)}</b><br><span class=muted>{esc(worker.role)}</span>",
                badge(worker.state.value), esc(worker.model),
                link(f"/tasks/{current.id}", f"{current.id}: {current.title}") if current else "–",
                _when(max(stamps) if stamps else None),
                esc(f"{int(seen.get('tokens', 0)):,}"), esc(money(float(seen.get("cost_usd", 0) or 0))),
                esc(f"{plane.config.sandbox.plugin} · {seen.get('process', 'absent')}"),
                "full network" if worker.network else "bridges only", link(f"/workers/{worker.name}/remove", "Remove…")])
        body = '<div id="workers">' + table(
            ["worker", "state", "model", "current task", "last activity", "tokens", "cost", "sandbox", "network", ""],
            rows, empty="no workers yet: create one (New worker…), or ask the Manager to") + "</div>"
        stalled = [t for t in tasks if t.stalled_at and t.state is TaskState.IN_PROGRESS]
        if stalled:
            body += "<p class=error>stalled: " + ", ".join(link(f"/tasks/{t.id}", t.id) for t in stalled) + "</p>"
        approvals = status.get("approvals") or []
        if approvals:
            body += ('<div id="approvals"><p class="error">' + esc(f"{len(approvals)} approval(s) wait for you")
                     + " — here, in the room of the card, or with <code>hiclaw approvals</code>:</p>"
                     + table(["approval", "worker", "task", "call", "why", ""],
                             [[esc(a["id"]), esc(a["worker"]), esc(a.get("task_id") or "–"),
                               f"<code>{esc(a['kind'])} {esc(str(a['target'])[:200])}</code>", esc(a["reason"]),
                               approval_forms(a, _csrf(request))] for a in approvals]) + "</div>")
        body += '<p>' + link("/workers/new", "New worker…") + "</p>"
        return _html(request, "Team", body, active="/", refresh=10)

    # ------------------------------------------------------------------ projects and tasks

    async def projects(self, request: web.Request) -> web.Response:
        state = self.plane.state
        rows = []
        for project in state.projects():
            tasks = state.tasks(project_id=project.id)
            done = sum(1 for t in tasks if t.state is TaskState.DONE)
            rows.append([link(f"/projects/{project.id}", project.id), esc(project.title), badge(project.state.value),
                         esc(f"{done}/{len(tasks)}"), _when(project.updated_at)])
        body = table(["project", "title", "state", "tasks done", "updated"], rows,
                     empty="no projects yet: ask the Manager to start one")
        return _html(request, "Projects", body, active="/projects")

    async def project(self, request: web.Request) -> web.Response:
        state = self.plane.state
        project = _find(request, "Project", state.project)
        if isinstance(project, web.Response):
            return project
        tasks = state.tasks(project_id=project.id)
        usage = {row.get("task"): row for row in await self.plane.usage(by="task")}
        rows = [[link(f"/tasks/{t.id}", t.id), esc(t.title), esc(t.assignee), esc(t.model or "–"), badge(t.state.value),
                 esc(t.result_status.value if t.result_status else "–"), esc(", ".join(t.depends_on) or "–"),
                 esc(money(_cost(usage.get(t.id, {}))))] for t in tasks]
        body = (f"<p><b>{esc(project.title)}</b> {badge(project.state.value)} · plan version {project.version}</p>"
                + project_forms(project, _csrf(request))
                + (replan_form(project, _csrf(request)) if project.state in REPLANNABLE else "")
                + (f"<p>{esc(project.goal)}</p>" if project.goal else "")
                + (f'<div class="graph">{plan_svg(tasks)}</div>')
                + table(["task", "title", "assignee", "model", "state", "result", "after", "cost"], rows))
        live = project.state not in (ProjectState.DONE, ProjectState.CANCELLED)  # tasks finish while paused too
        return _html(request, f"Project {project.id}", body, active="/projects", refresh=5 if live else None)

    async def _markdown_of(self, key: str) -> str:
        try:
            data = await self.plane.storage.get(key)
        except NotFoundError:
            return '<p class="muted">not written yet</p>'
        return f'<div class="md">{markdown_html(data.decode("utf-8", "replace"))}</div>'

    async def task(self, request: web.Request) -> web.Response:
        state = self.plane.state
        task = _find(request, "Task", state.task)
        if isinstance(task, web.Response):
            return task
        revisions = [t for t in state.tasks(project_id=task.project_id) if t.revision_of == task.id] \
            if task.project_id else []
        facts = [("state", badge(task.state.value)), ("assignee", esc(task.assignee)), ("model", esc(task.model or "–")),
                 ("result", esc(task.result_status.value if task.result_status else "–")),
                 ("attempts", esc(task.dispatch_count)),
                 ("project", link(f"/projects/{task.project_id}", task.project_id) if task.project_id else "–"),
                 ("after", ", ".join(link(f"/tasks/{d}", d) for d in task.depends_on) or "–"),
                 ("revision of", link(f"/tasks/{task.revision_of}", task.revision_of) if task.revision_of else "–"),
                 ("revised by", ", ".join(link(f"/tasks/{t.id}", t.id) for t in revisions) or "–")]
        events = [[_when(e["ts"]), esc(e["kind"]), esc(", ".join(f"{k}={v}" for k, v in sorted(e["data"].items())))]
                  for e in state.events(subject=task.id)]
        body = (f"<p><b>{esc(task.title)}</b></p><dl>"
                + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
                + '<h2>result.md</h2><section id="result">' + await self._markdown_of(layout.task_result(task.id))
                + '</section><h2>spec.md</h2><section id="spec">' + await self._markdown_of(layout.task_spec(task.id))
                + "</section><h2>History</h2>" + table(["when", "event", "details"], events, empty="no events"))
        refresh = 5 if task.state in (TaskState.PENDING, *BUSY) else None
        return _html(request, f"Task {task.id}", body, active="/projects", refresh=refresh)

    # ------------------------------------------------------------------ usage

    async def _per_day(self) -> list[Bar]:
        zone = self.plane.team_zone()
        today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        bars = []
        for back in range(DAYS - 1, -1, -1):
            start = today - timedelta(days=back)
            rows = await self.plane.usage(by="consumer", since=start, until=start + timedelta(days=1))
            bars.append(Bar(start.strftime("%a %d %b"), sum(_cost(r) for r in rows)))
        return bars

    def _budget(self, name: str) -> float | None:
        try:
            worker = self.plane.state.worker(name)
        except NotFoundError:
            return None  # the Manager, or a removed worker
        return self.plane.provisioner.budget_of(worker)

    async def usage(self, request: web.Request) -> web.Response:
        workers = [Bar(str(r.get("consumer") or "?"), _cost(r), self._budget(str(r.get("consumer") or "")))
                   for r in await self.plane.usage(by="consumer")]
        models = [Bar(str(r.get("model") or "?"), _cost(r)) for r in await self.plane.usage(by="model")]
        tasks = [Bar(str(r.get("task") or "(no task)"), _cost(r)) for r in await self.plane.usage(by="task")]
        total = sum(b.value for b in workers)
        body = (f"<p>Total spend: <b>{esc(money(total))}</b> (from the gateway's ledger). Budget lines: "
                '<span class="k80">80 %</span> and <span class="k100">100 %</span> of each worker\'s budget.</p>'
                f"<h2>Per day (last {DAYS} days)</h2>" + bar_chart(await self._per_day(), name="per-day")
                + "<h2>Per worker</h2>" + bar_chart(workers, name="per-worker")
                + "<h2>Per model</h2>" + bar_chart(models, name="per-model")
                + "<h2>Per task</h2>" + bar_chart(tasks, name="per-task"))
        return _html(request, "Usage", body, active="/usage")

    # ------------------------------------------------------------------ files

    async def files(self, request: web.Request) -> web.Response:
        path = request.query.get("path", "")
        try:
            path = check_path(path)
        except HiclawError as exc:
            return _html(request, "Files", f"<p class=error>{esc(exc)}</p>", active="/files", status=400)
        crumbs = link("/files", "storage")
        so_far = ""
        for part in [p for p in path.split("/") if p]:
            so_far += part + "/"
            crumbs += " / " + link(f"/files?path={quote(so_far)}", part)
        if path == "" or path.endswith("/"):
            entries: list[dict[str, Any]] = [{"key": r, "is_dir": True, "size": 0, "mtime": None} for r in ROOTS] \
                if path == "" else await self.plane.storage.list(path, recursive=False)
            rows = [[link(f"/files?path={quote(e['key'])}", e["key"][len(path):]),
                     "folder" if e.get("is_dir") else esc(f"{int(e.get('size') or 0):,} bytes"),
                     _when(datetime.fromtimestamp(e["mtime"], self.plane.team_zone()).isoformat())
                     if e.get("mtime") else "–"] for e in entries]
            body = (f"<p>{crumbs}</p>" + table(["name", "size", "modified"], rows, empty="empty folder")
                    + upload_form(path, _csrf(request)))
            return _html(request, "Files", body, active="/files")
        try:
            data = await self.plane.storage.get(path)
        except NotFoundError as exc:
            if await self.plane.storage.list(path + "/", recursive=False):  # a folder named without its '/'
                raise web.HTTPSeeOther(f"/files?path={quote(path + '/')}") from None
            return _html(request, "Files", f"<p>{crumbs}</p><p class=error>{esc(exc)}</p>", active="/files", status=404)
        body = f"<p>{crumbs} · {len(data):,} bytes</p>"
        try:
            text = data[:MAX_VIEW_BYTES].decode("utf-8")
        except UnicodeDecodeError:
            return _html(request, "Files", body + '<p class="muted">a binary file</p>', active="/files")
        more = '<p class="muted">(the first 1 MiB)</p>' if len(data) > MAX_VIEW_BYTES else ""
        shown = f'<div class="md">{markdown_html(text)}</div>' if path.endswith(".md") else f"<pre>{esc(text)}</pre>"
        return _html(request, "Files", body + shown + more, active="/files")


def check_path(path: str) -> str:
    """A storage path the browser may read: empty (the roots), or a key or folder under
    ``agents/`` or ``shared/``, valid by the storage rules (no ``..``, no absolute paths…)."""
    if path == "":
        return path
    if not path.startswith(ROOTS):
        raise HiclawError(f"{path!r} is not under {' or '.join(ROOTS)}", hint="browse from /files")
    return layout.validate_prefix(path) if path.endswith("/") else layout.validate_key(path)
