"""The web console over HTTP, on a live team: login (one-time links, the admin's password),
sessions, CSRF and Origin checks, security headers, escaping of agents' words, /files paths.

The browser test (Chromium driving the demo through the console) is tests/test_console_browser.py.
"""
from __future__ import annotations

import html
import re
import time

import aiohttp
import pytest

from hiclaw.console.auth import ConsoleAuth
from hiclaw.console.render import markdown_html, safe_url
from hiclaw.state import Approval, Task
from hiclaw.storage import layout
from hiclaw.testing.team import running_team

QUIET = {"agents": {"manager": {"default": {"text": "ok"}}}}
HOSTILE_TITLE = '<script>alert("title")</script><img src=x onerror=alert(1)>'
HOSTILE_RESULT = ("# Result\n\n<script>alert('result')</script>\n\n[click me](javascript:alert('md'))\n\n"
                  "[entity](jav&#x61;script:alert(2)) <b onmouseover=alert(3)>bold</b>\n\n"
                  "![img](data:text/html;base64,PHNjcmlwdD4=)\n\n[fine](https://example.org/ok)\n")


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def client(base: str) -> aiohttp.ClientSession:
    # unsafe=True: keep cookies of an IP-address host (the console is on 127.0.0.1)
    return aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def log_in(http: aiohttp.ClientSession, console) -> str:
    path = console.login_link().removeprefix(console.url)
    async with http.get(path, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with http.get("/") as response:
        assert response.status == 200
        return csrf_of(await response.text())


async def test_console_login_sessions_and_csrf(tmp_path):
    async with running_team(tmp_path / "home", QUIET) as team:
        console = team.plane.console
        assert console is not None and console.url.startswith("http://127.0.0.1:")
        origin = {"Origin": console.url}
        async with client(console.url) as http:
            # Nothing but the login page (and its stylesheet) without a session.
            for path in ("/", "/projects", "/usage", "/files?path=shared/", "/tasks/task-001"):
                async with http.get(path, allow_redirects=False) as response:
                    assert response.status == 303 and response.headers["Location"] == "/login", path
            async with http.post("/logout", data={"csrf": "x"}, headers=origin, allow_redirects=False) as response:
                assert response.status == 401
            async with http.get("/login") as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
                assert response.headers["X-Frame-Options"] == "DENY"
                assert response.headers["Referrer-Policy"] == "same-origin"
            # A bad, a reused and an expired one-time token: one line, no session.
            async with http.get("/login?token=not-a-token") as response:
                assert response.status == 403 and "invalid, already used or expired" in await response.text()
            link = console.login_link().removeprefix(console.url)
            async with http.get(link, allow_redirects=False) as response:
                assert response.status == 303
            http.cookie_jar.clear()
            async with http.get(link, allow_redirects=False) as response:
                assert response.status == 403
            clock = Clock()
            console.auth.clock = clock
            late = console.login_link().removeprefix(console.url)
            clock.now += 601
            async with http.get(late, allow_redirects=False) as response:
                assert response.status == 403
            async with http.get("/", allow_redirects=False) as response:
                assert response.status == 303
            # The admin's password: a wrong one is one line; the right one logs in.
            async with http.post("/login", data={"password": "wrong"}, headers=origin) as response:
                assert response.status == 401 and "Wrong password." in await response.text()
            password = team.plane.secrets.get("matrix_admin_password").get_secret_value()
            async with http.post("/login", data={"password": password}, headers={"Origin": "http://evil.example"},
                                 allow_redirects=False) as response:
                assert response.status == 403  # another site's form cannot log you in
            async with http.post("/login", data={"password": password}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            async with http.get("/") as response:
                assert response.status == 200 and "Team" in await response.text()
                csrf = csrf_of(await response.text())
            # CSRF: missing or wrong token, or a foreign Origin → 403 and the session lives on.
            for data, headers in (({}, origin), ({"csrf": "wrong"}, origin), ({"csrf": csrf}, {}),
                                  ({"csrf": csrf}, {"Origin": "http://127.0.0.1:1"})):
                async with http.post("/logout", data=data, headers=headers, allow_redirects=False) as response:
                    assert response.status == 403, (data, headers)
                async with http.get("/", allow_redirects=False) as response:
                    assert response.status == 200
            # A DNS name that points here (DNS rebinding) is not the console's host.
            async with http.get("/", headers={"Host": "attacker.example"}, allow_redirects=False) as response:
                assert response.status == 421
            # Sessions expire when idle; logging out ends one at once.
            clock.now += 12 * 3600 + 1
            async with http.get("/", allow_redirects=False) as response:
                assert response.status == 303
            csrf = await log_in(http, console)
            async with http.post("/logout", data={"csrf": csrf}, headers=origin, allow_redirects=False) as response:
                assert response.status == 303
            async with http.get("/", allow_redirects=False) as response:
                assert response.status == 303


async def test_console_escapes_agents_words_and_refuses_traversal(tmp_path):
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        project = plane.state.create_project(HOSTILE_TITLE, goal=HOSTILE_TITLE)
        plane.state.add_tasks(project.id, [Task(id="task-001", title=HOSTILE_TITLE, assignee="alex", spec="x")])
        await plane.storage.put(layout.task_result("task-001"), HOSTILE_RESULT.encode())
        await plane.storage.put(layout.task_spec("task-001"), HOSTILE_TITLE.encode())
        plane.state.add_approval(Approval(seq=0, worker="alex", call_id="c1", kind="mcp", target=HOSTILE_TITLE,
                                          arguments="{}", reason=HOSTILE_TITLE, task_id="task-001"))
        async with client(console.url) as http:
            await log_in(http, console)
            pages = {}
            for path in ("/", "/projects", f"/projects/{project.id}", "/tasks/task-001",
                         "/files?path=shared/tasks/task-001/", "/files?path=shared/tasks/task-001/result.md",
                         "/files?path=shared/tasks/task-001/spec.md"):
                async with http.get(path) as response:
                    assert response.status == 200, path
                    pages[path] = await response.text()
            for path, html in pages.items():
                for raw in ("<script>alert", "<img src=x", "onerror=alert(1)>", "javascript:", "<b onmouseover",
                            "data:text/html"):
                    assert raw not in html, (path, raw)
            assert "&lt;script&gt;alert(&quot;title&quot;)&lt;/script&gt;" in pages["/tasks/task-001"]
            assert 'id="approvals"' in pages["/"] and "1 approval(s) wait for you" in pages["/"]
            assert "<code>mcp &lt;script&gt;" in pages["/"]
            assert '<a href="https://example.org/ok" rel="noopener noreferrer nofollow">fine</a>' in pages["/tasks/task-001"]
            assert "<svg" in pages[f"/projects/{project.id}"] and 'data-task="task-001"' in pages[f"/projects/{project.id}"]
            async with http.get("/files?path=shared/tasks", allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/files?path=shared/tasks/"
            for missing in ("/projects/proj-999", "/tasks/<script>", "/files?path=shared/nothing.md"):
                async with http.get(missing) as response:
                    assert response.status == 404 and "<script>" not in await response.text(), missing
            # /files reads only under agents/ and shared/, by the storage's own key rules.
            for bad in ("../secrets.toml", "shared/../../secrets.toml", "/etc/passwd", "shared/tasks/../../x",
                        "secrets.toml", "run/control.json", "shared//x", "agents/../shared/x"):
                async with http.get("/files", params={"path": bad}) as response:
                    text = await response.text()
                    assert response.status == 400, bad
                    assert "matrix_admin_password" not in text and "token" not in text.lower(), bad


def test_markdown_of_agents_is_made_safe():
    html = markdown_html(HOSTILE_RESULT)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "javascript" not in html.lower() and "data:" not in html
    assert not safe_url(" JaVa\tscript:alert(1)") and not safe_url("vbscript:x") and safe_url("/files?path=a")
    assert safe_url("https://x.org") and safe_url("#top") and safe_url("notes/a.md")
    # A storage path in code links to the file viewer; a YAML header becomes a table, without aliases.
    linked = markdown_html("see `shared/tasks/task-001/result.md`, not `shared/../x`")
    assert '<a href="/files?path=shared/tasks/task-001/result.md"' in linked and 'path=shared/..' not in linked
    assert '<dl class="front"><dt>task</dt><dd>task-001</dd>' in markdown_html("---\ntask: task-001\n---\nbody")
    bomb = "---\na: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n---\nbody"
    assert '<dl class="front">' not in markdown_html(bomb)


@pytest.mark.parametrize("late", [False, True])
def test_one_time_links_work_once_and_expire(late):
    clock = Clock()
    auth = ConsoleAuth(lambda: "pw", clock=clock)
    token = auth.new_link_token()
    if late:
        clock.now += 600
        assert auth.redeem_link(token) is None
        return
    session = auth.redeem_link(token)
    assert session and auth.session(session) is not None
    assert auth.redeem_link(token) is None


def test_wrong_passwords_are_throttled():
    auth = ConsoleAuth(lambda: "right", clock=Clock())
    for _ in range(10):
        assert auth.login_password("wrong") is None
    assert auth.throttled()
    assert ConsoleAuth(lambda: None).login_password("") is None  # no password set: no login by password


async def test_hiclaw_up_prints_the_console_and_a_login_link_and_hiclaw_console_a_new_one(tmp_path):
    """The real `hiclaw up` (a child process): the console's URL and a one-time link in its
    output; `hiclaw console` asks the running team for a new link; each works once."""
    from hiclaw.config import save_config
    from hiclaw.scripted import parse_scenario
    from hiclaw.testing.gateway import running_scripted_model
    from hiclaw.testing.team import team_config
    from hiclaw.testing.up import UpProcess

    home = tmp_path / "home"
    home.mkdir()
    up = UpProcess(home)
    with running_scripted_model(parse_scenario(QUIET)) as model:
        try:
            save_config(team_config(model.base_url), home)
            await up.start_and_wait_async()
            printed = re.search(r"web console: (http://127\.0\.0\.1:\d+) .*\n\s+(\S+/login\?token=\S+)", up.log.read_text())
            assert printed, up.log.read_text()[-2000:]
            base, first = printed.groups()
            again = up.cli("console")
            assert again.returncode == 0, again.stderr
            second = re.search(r"one-time login link: (\S+)", again.stdout).group(1)
            assert second.startswith(base + "/login?token=") and second != first
            async with client(base) as http:
                for link in (first, second):
                    async with http.get(link.removeprefix(base), allow_redirects=False) as response:
                        assert response.status == 303
                    async with http.get(link.removeprefix(base), allow_redirects=False) as response:
                        assert response.status == 403  # used
                async with http.get("/") as response:
                    assert response.status == 200 and "<h1>Team</h1>" in await response.text()
        finally:
            up.stop()


def test_console_host_names_on_loopback_and_on_the_lan():
    from hiclaw.console import ConsoleServer

    loopback = ConsoleServer(None)
    assert loopback.host_ok("127.0.0.1:7420") and loopback.host_ok("localhost:7420") and loopback.host_ok("[::1]:7420")
    assert not loopback.host_ok("192.168.1.20:7420") and not loopback.host_ok("evil.example:7420")
    lan = ConsoleServer(None, host="0.0.0.0")
    assert lan.host_ok("192.168.1.20:7420") and lan.host_ok("[fe80::1]:7420") and not lan.host_ok("evil.example:7420")


def test_console_config_is_checked_with_one_line_errors(tmp_path):
    from hiclaw.config import load_config
    from hiclaw.errors import ConfigError

    for text, key in (("[console]\nport = 70000\n", "console.port"), ('[console]\nhost = "my-laptop"\n', "console.host"),
                      ("[console]\nopen = true\n", "console.open"),
                      ("[console]\nmax_upload_mb = 0\n", "console.max_upload_mb"),
                      ('[console]\nmax_upload_mb = "lots"\n', "console.max_upload_mb")):
        (tmp_path / "config.toml").write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, environ={})
        assert key in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


async def test_a_console_port_in_use_gives_way_to_a_free_one():
    import socket

    from hiclaw.console import ConsoleServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        console = ConsoleServer(None, port=busy)
        await console.start()
        try:
            assert console.moved_from == busy and console.port not in (0, busy)
            async with client(console.url) as http, http.get("/login") as response:
                assert response.status == 200
        finally:
            await console.stop()


def test_bar_charts_draw_budget_lines_at_80_and_100_percent():
    from hiclaw.console.charts import Bar, bar_chart

    svg = bar_chart([Bar("sam", 4.0, budget=5.0), Bar("manager", 1.0), Bar("<b>x</b>", 0.5)], name="per-worker")
    lines = dict(re.findall(r'<line class="(budget\d+)" x1="([\d.]+)"', svg))
    # 150 px of labels, 420 px of bar for the largest of values and budgets (5.0)
    assert lines == {"budget80": f"{150 + 420 * 0.8:.1f}", "budget100": f"{150 + 420:.1f}"}
    assert svg.count("<line") == 2 and "<b>x</b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg


async def test_console_buttons_approve_deny_and_steer_with_the_version_shown(tmp_path):
    """Approve / deny a waiting call and pause / resume a project from the console: CSRF-checked,
    decided once, and a button of a page showing an older plan version writes nothing."""
    from hiclaw.demo.scenario import generic_worker_rules

    scenario = {"agents": {"alex": {"rules": generic_worker_rules("alex")},
                           "manager": {"default": {"text": "noted"}}}}
    async with running_team(tmp_path / "home", scenario, yolo=True, approvals={"level": "strict", "hold_seconds": 0.2}) as team:
        plane, console = team.plane, team.plane.console
        origin = {"Origin": console.url}
        ran: list[int] = []

        async def run() -> dict[str, object]:
            ran.append(1)
            return {"ok": True}

        call = {"kind": "mcp", "worker": "alex", "call_id": "c1", "target": "tracker/create_issue",
                "arguments": {"title": "<b>x</b>"}}
        assert (await plane.approvals.review(call, run))["state"] == "pending"
        denied = {**call, "call_id": "c2"}
        assert (await plane.approvals.review(denied, run))["state"] == "pending"
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            async with http.get("/") as response:
                text = await response.text()
                assert 'action="/approvals/apr-1/approve"' in text and "&lt;b&gt;" not in text  # target only
            async with http.post("/approvals/apr-1/approve", data={}, headers=origin, allow_redirects=False) as response:
                assert response.status == 403  # no CSRF token: nothing decided
            assert plane.state.approval("apr-1").state == "pending"
            async with http.post("/approvals/apr-1/approve", data={"csrf": csrf}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            assert (await plane.approvals.review(call, run))["state"] == "done" and ran == [1]
            async with http.post("/approvals/apr-1/deny", data={"csrf": csrf, "note": "late"}, headers=origin) as response:
                assert response.status == 409 and "apr-1 is already" in await response.text()
            async with http.post("/approvals/apr-2/deny", data={"csrf": csrf, "note": "not today"}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            verdict = await plane.approvals.review(denied, run)
            assert verdict["state"] == "denied" and verdict["reason"] == "not today" and ran == [1]

            await plane.provisioner.create_worker("alex", role="writer")
            project = await plane.engine.create_project("Launch")
            await plane.engine.propose_plan(project.id, [{"id": "task-001", "title": "Draft", "assignee": "alex"},
                                                         {"id": "task-002", "title": "Polish", "assignee": "alex",
                                                          "depends_on": ["task-001"]}])
            async with http.get(f"/projects/{project.id}") as response:
                text = await response.text()
                assert f'action="/projects/{project.id}/pause"' in text
                version = int(re.search(r'name="version" value="(\d+)"', text).group(1))
            async with http.post(f"/projects/{project.id}/pause", data={"csrf": csrf, "version": version + 1},
                                 headers=origin) as response:
                assert response.status == 409 and "nothing was changed" in await response.text()
            assert plane.state.project(project.id).state.value == "running"
            async with http.post(f"/projects/{project.id}/pause", data={"csrf": csrf, "version": version},
                                 headers=origin, allow_redirects=False) as response:
                assert response.status == 303
            assert plane.state.project(project.id).state.value == "paused"
            async with http.get(f"/projects/{project.id}") as response:
                assert f'action="/projects/{project.id}/resume"' in await response.text()
            async with http.post(f"/projects/{project.id}/resume", data={"csrf": csrf, "version": version},
                                 headers=origin, allow_redirects=False) as response:
                assert response.status == 303
            assert plane.state.project(project.id).state.value == "running"
            assert [e["data"]["by"] for e in plane.state.events(kind="project.paused", subject=project.id)] == ["admin"]


async def test_console_creates_and_removes_workers_and_confirms_a_plan(tmp_path):
    """A worker created through the console's form (bad input refused with one line, nothing
    made), a proposed plan confirmed with the version shown (the Manager told once, the CLI's
    confirm after it a no-op), and the worker removed once its name is typed."""
    from test_steering_team import cli, snapshot

    from hiclaw.demo.scenario import generic_worker_rules
    from hiclaw.models import ProjectState, TaskState, WorkerState
    from hiclaw.waiting import wait_until

    scenario = {"agents": {"alex": {"rules": generic_worker_rules("alex")},
                           "manager": {"default": {"text": "noted"}}}}
    async with running_team(tmp_path / "home", scenario) as team:
        plane, console = team.plane, team.plane.console
        origin = {"Origin": console.url}
        good = {"name": "alex", "role": "writer: drafts the copy", "model": "fast", "skills": "", "budget_usd": "5",
                "network": "1"}
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            async with http.post("/workers", data=good, headers=origin) as response:
                assert response.status == 403  # no CSRF token
            assert plane.state.find_worker("alex") is None
            async with http.get("/") as response:
                assert 'href="/workers/new"' in await response.text()
            async with http.get("/workers/new") as response:
                text = await response.text()
                assert '<select name="model">' in text and "<option selected>smart</option>" in text
                assert "http-equiv" not in text  # a form page does not reload itself
            for change, line in (({"name": "Bad Name"}, "Bad Name"), ({"model": "nope"}, "unknown model &#x27;nope&#x27; — use one of cheap"),
                                 ({"role": " "}, "a worker needs a role"), ({"budget_usd": "lots"}, "not a number"),
                                 ({"budget_usd": "-1"}, "more than 0"), ({"name": "manager"}, "reserved")):
                async with http.post("/workers", data={**good, **change, "csrf": csrf}, headers=origin) as response:
                    text = await response.text()
                    assert response.status == 409 and line in text, (change, text)
                    assert len(re.findall(r'<p class="error">', text)) == 1 and text.count(" — ") <= 1
            assert plane.state.workers(include_removed=True) == []
            async with http.post("/workers", data={**good, "csrf": csrf}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/#workers"
            alex = plane.state.worker("alex")
            assert (alex.role, alex.model, alex.budget_usd, alex.network) == ("writer: drafts the copy", "fast", 5.0, True)
            assert [w["name"] for w in (await plane.status())["workers"]] == ["alex"]
            async with http.get("/") as response:
                text = await response.text()
                assert "<b>alex</b>" in text and 'href="/workers/alex/remove"' in text
            async with http.post("/workers", data={**good, "role": "other", "csrf": csrf}, headers=origin) as response:
                assert response.status == 409 and "worker &#x27;alex&#x27; exists already" in await response.text()
            assert plane.state.worker("alex").role == "writer: drafts the copy"

            # Confirm a proposed plan, with the version the page showed.
            project = await plane.engine.create_project("Launch")
            await plane.engine.propose_plan(project.id, [{"id": "task-001", "title": "Draft", "assignee": "alex"}])
            async with http.get(f"/projects/{project.id}") as response:
                text = await response.text()
                assert f'action="/projects/{project.id}/confirm"' in text and "Confirm plan (version 1)" in text
            before = snapshot(plane, project.id)
            async with http.post(f"/projects/{project.id}/confirm", data={"csrf": csrf, "version": 2},
                                 headers=origin) as response:
                assert response.status == 409 and "not 2 (the version you saw): nothing was changed" in await response.text()
            assert snapshot(plane, project.id) == before
            async with http.post(f"/projects/{project.id}/confirm", data={"csrf": csrf, "version": 1}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            assert plane.state.project(project.id).state == ProjectState.RUNNING
            assert plane.state.task("task-001").state in (TaskState.IN_PROGRESS, TaskState.REVIEW, TaskState.DONE)
            notice = f"The admin confirmed {project.id}'s plan (version 1) outside chat (from the console)"
            await wait_until(lambda: [m for m in team.admin.messages if notice in m.body], what="the Manager's notice")
            code, out, err = await cli(team.home, "project", "confirm", project.id, "--version", "1")
            assert code == 0 and f"{project.id} is running (plan version 1" in out, (out, err)
            await plane.chat.flush()
            assert len([m for m in team.admin.messages if "outside chat" in m.body]) == 1
            assert len(plane.state.events(kind="plan.confirmed", subject=project.id)) == 1

            # Remove: only with the worker's name typed again.
            async with http.get("/workers/alex/remove") as response:
                assert 'name="confirm"' in await response.text()
            async with http.post("/workers/alex/remove", data={"csrf": csrf, "confirm": "alx"},
                                 headers=origin) as response:
                assert response.status == 409 and "type alex (the worker&#x27;s name) to remove it: nothing was removed" in await response.text()
            assert plane.state.worker("alex").state != WorkerState.REMOVED
            async with http.post("/workers/alex/remove", data={"csrf": csrf, "confirm": "alex"}, headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            assert plane.state.find_worker("alex").state == WorkerState.REMOVED
            async with http.get("/") as response:
                assert "<b>alex</b>" not in await response.text()


async def test_console_uploads_into_shared_storage_only(tmp_path):
    """Uploads go under shared/ by the storage's key rules, never over a file unless asked, within
    [console] max_upload_mb; without a session the body is not even read."""
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        origin = {"Origin": console.url}

        def upload(csrf: str | None, data: bytes, folder: str = "shared/uploads/", **fields: str) -> aiohttp.FormData:
            form = aiohttp.FormData()
            if csrf is not None:
                form.add_field("csrf", csrf)
            form.add_field("folder", folder)
            for name, value in fields.items():
                form.add_field(name, value)
            form.add_field("file", data, filename="notes.txt", content_type="text/plain")
            return form

        async with client(console.url) as http:
            console.uploads.max_bytes = 1024  # as [console] max_upload_mb = 0.0009765625 would
            # Without a session: 401 before the body is read (this one is larger than any upload taken).
            async with http.post("/files/upload", data=upload("x", b"x" * 200_000), headers=origin) as response:
                assert response.status == 401
            async with http.post("/login", data={"password": "x" * 300_000}, headers=origin) as response:
                assert response.status == 413  # the login form takes no upload-sized body either
            csrf = await log_in(http, console)
            async with http.post("/files/upload", data=upload(None, b"hello"), headers=origin) as response:
                assert response.status == 403
            assert await plane.storage.stat("shared/uploads/notes.txt") is None
            async with http.get("/files?path=shared/") as response:
                text = await response.text()
                assert 'action="/files/upload"' in text and 'enctype="multipart/form-data"' in text
            async with http.get("/files?path=agents/") as response:
                assert 'action="/files/upload"' not in await response.text()
            async with http.post("/files/upload", data=upload(csrf, b"hello"), headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/files?path=shared/uploads/"
            assert await plane.storage.get("shared/uploads/notes.txt") == b"hello"
            async with http.get("/files?path=shared/uploads/notes.txt") as response:
                assert "<pre>hello</pre>" in await response.text()
            assert [(e["data"]["bytes"], e["data"]["by"]) for e in plane.state.events(kind="file.uploaded")] == [(5, "admin")]
            async with http.post("/files/upload", data=upload(csrf, b"other"), headers=origin) as response:
                assert response.status == 409 and "shared/uploads/notes.txt exists already" in await response.text()
            assert await plane.storage.get("shared/uploads/notes.txt") == b"hello"
            async with http.post("/files/upload", data=upload(csrf, b"other", replace="1"), headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            assert await plane.storage.get("shared/uploads/notes.txt") == b"other"
            async with http.post("/files/upload", data=upload(csrf, b"mine", name="report.md"), headers=origin,
                                 allow_redirects=False) as response:
                assert response.status == 303
            assert await plane.storage.get("shared/uploads/report.md") == b"mine"
            # Outside shared/, or a name that climbs out: one line, nothing written.
            for folder, name, line in (("agents/alex/", "", "not 'agents/alex/'"), ("shared/../", "", "folder"),
                                       ("../", "", "folder"), ("shared/uploads/", "../x.md", "not a file name"),
                                       ("shared/uploads/", "..", "upload")):
                async with http.post("/files/upload", data=upload(csrf, b"bad", folder, name=name),
                                     headers=origin) as response:
                    text = html.unescape(await response.text())
                    assert response.status == 409 and line in text, (folder, name, text)
            assert await plane.storage.list("agents/alex/") == []
            # Too large: one line naming the limit and its setting, whether found reading or announced.
            for size, status in ((2000, 409), (200_000, 413)):
                async with http.post("/files/upload", data=upload(csrf, b"y" * size, name="big.bin"),
                                     headers=origin) as response:
                    text = await response.text()
                    assert response.status == status and "upload limit" in text and "max_upload_mb" in text, text
            assert await plane.storage.stat("shared/uploads/big.bin") is None
            assert len(plane.state.events(kind="file.uploaded")) == 3
