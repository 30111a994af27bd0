"""`hiclaw demo`: the full scenario through real Matrix messages, on real components.

Embedded Synapse, the embedded gateway with the scripted model as its provider, local storage,
bubblewrap workers and a private skill registry (`hiclaw registry serve`) — in a temporary home.
An independent Matrix client plays the admin; every message is printed as it arrives. The run
ends with checks of the final state and a table of tasks; exit 0 only if every check passes.
"""
from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from hiclaw.config import HiclawConfig, Secrets, save_config
from hiclaw.demo import REGISTRY_ROOT
from hiclaw.demo.admin import AdminClient, SeenMessage
from hiclaw.demo.scenario import LAUNCH_ISSUE, PLAN, PROJECT, SKILL, TRACKER_TOOL, WORKERS, demo_scenario
from hiclaw.demo.team import default_sandbox, team_config
from hiclaw.models import ProjectState, TaskState
from hiclaw.storage import layout
from hiclaw.waiting import wait_until

SERVER_NAME = "hiclaw.demo"
TRACKER_SECRET = "demo_tracker_token"  # noqa: S105 - the *name* of the tracker's credential in secrets.toml
ASK_WORKERS = ("@manager please create four workers: alex (product manager), sam (full-stack developer), "
               "taylor (content operations) and jordan (data analyst).")
ASK_PROJECT = (f'@manager start the project "{PROJECT}": a writing assistant that drafts and rewrites text and '
               "explains which model it used. Plan it with the team.")
CONFIRM = "@manager confirm"
#: taylor's tracker writes wait for the admin (docs/approvals.md); its reads go alone.
APPROVALS: dict[str, Any] = {"workers": {"taylor": "smart"}}
CARD = re.compile(r"approval \*\*(apr-\d+)\*\*")


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


def read_issues(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


class Demo:
    def __init__(self, *, home: Path | None, keep: bool, sandbox: str | None, timeout: float,
                 echo: Callable[[str], None] = click.echo, real_model: str | None = None,
                 real_home: Path | None = None, admin_in_console: bool = False) -> None:
        self.real_model = real_model
        #: The admin confirms the plan and decides approvals elsewhere (the web console's buttons,
        #: tests/test_console_browser.py): the scripted admin only asks, then waits.
        self.admin_in_console = admin_in_console
        self.real_home = real_home
        self.home = home or Path(tempfile.mkdtemp(prefix="hiclaw-demo-"))
        self.keep = keep
        self.sandbox = sandbox or default_sandbox()
        self.timeout = timeout
        self.echo = echo
        self.checks: list[Check] = []
        self.model: Any = None
        self.started = time.monotonic()

    # ------------------------------------------------------------------ set-up

    async def start_services(self) -> None:
        from aiohttp import web

        from hiclaw.registry.server import RegistryApp
        from hiclaw.scripted import parse_scenario
        from hiclaw.scripted.server import ScriptedModelServer

        if self.real_model is None:
            self.model = ScriptedModelServer(parse_scenario(demo_scenario()))
            await self.model.start()
        self.registry_runner = web.AppRunner(RegistryApp(REGISTRY_ROOT).app, access_log=None)
        await self.registry_runner.setup()
        site = web.TCPSite(self.registry_runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001 - aiohttp: the bound port
        self.registry_url = f"http://127.0.0.1:{port}"

    def config(self) -> HiclawConfig:
        if self.real_model is not None:
            return self.real_config()
        return team_config(self.model.base_url, registry_url=self.registry_url, sandbox=self.sandbox,
                           server_name=SERVER_NAME, mcp=self.tracker(), approvals=APPROVALS)

    def tracker(self) -> dict[str, Any]:
        """The team's issue tracker, an MCP server the gateway runs (hiclaw.demo.tracker), granted to taylor."""
        return {"tracker": {"command": sys.executable, "args": ["-m", "hiclaw.demo.tracker"],
                            "secret_env": {"TRACKER_TOKEN": TRACKER_SECRET},
                            "env": {"TRACKER_FILE": str(self.home / "tracker" / "issues.jsonl")},
                            "workers": ["taylor"], "description": "the team's issue tracker"}}

    def real_config(self) -> HiclawConfig:
        """The demo's team on the models of your own configuration (``hiclaw init``)."""
        from hiclaw.config import load_config
        from hiclaw.errors import ConfigError

        mine = load_config(self.real_home)
        if self.real_model not in mine.models:
            known = ", ".join(sorted(mine.models)) or "none"
            raise ConfigError(f"--model {self.real_model!r} is not a model alias of {self.real_home}/config.toml "
                              f"(aliases: {known})", hint="run `hiclaw init` or pick one of those aliases")
        config = team_config("http://127.0.0.1:9/unused", registry_url=self.registry_url, sandbox=self.sandbox,
                             server_name=SERVER_NAME)
        config.models = mine.models
        config.team.manager_model = config.team.worker_model = self.real_model
        return config

    def real_secrets(self, config: HiclawConfig) -> Secrets:
        """Only the provider keys the models need, copied into the demo's own secrets file."""
        mine = Secrets.load(self.real_home)
        secrets = Secrets({}, self.home / "secrets.toml")
        for alias in config.models.values():
            if alias.api_key_secret:
                value = mine.get(alias.api_key_secret)
                if value is not None:
                    secrets.set(alias.api_key_secret, value.get_secret_value())
        secrets.save()
        return secrets

    # ------------------------------------------------------------------ transcript

    def show(self, message: SeenMessage) -> None:
        who = message.sender.split(":", 1)[0].lstrip("@")
        body = " ".join(message.body.split())
        if len(body) > 240:
            body = body[:237] + "..."
        elapsed = time.monotonic() - self.started
        self.echo(f"{elapsed:6.1f}s [{message.room_name}] {who}: {body}")

    def said(self, sender: str, needle: str) -> SeenMessage | None:
        for message in self.admin.messages:
            if message.sender == sender and needle in message.body:
                return message
        return None

    # ------------------------------------------------------------------ the scenario

    async def run(self) -> int:
        from hiclaw.control.plane import ControlPlane

        self.echo(f"hiclaw demo — home {self.home}, sandbox {self.sandbox}")
        await self.start_services()
        config = self.config()
        save_config(config, self.home)
        secrets = self.real_secrets(config) if self.real_model else Secrets({}, self.home / "secrets.toml")
        if config.mcp:  # the tracker's credential: the gateway hands it to the tracker, nobody else
            import secrets as random

            (self.home / "tracker").mkdir(parents=True, exist_ok=True)
            secrets.set(TRACKER_SECRET, "demo-tracker-" + random.token_hex(16))
            secrets.save()
        self.plane = ControlPlane(self.home, config=config, secrets=secrets,
                                  progress=lambda line: self.echo(f"  · {line}"))
        try:
            await self.plane.start()
            password = secrets.get("matrix_admin_password")
            homeserver = self.plane.bridge_urls()["homeserver"]
            self.admin = AdminClient(homeserver, "admin", password.get_secret_value() if password else "", self.show)
            await self.admin.login()
            await self.admin.start()
            try:
                await (self.play_real() if self.real_model else self.play())
            except TimeoutError as exc:
                self.check("the scenario ran to the end", False, str(exc))
            if self.real_model:
                self.report_real()
            else:
                self.verify()
                await self.report()
            if self.keep:
                self.echo(f"\n--keep: the team stays up. Element/FluffyChat: homeserver {homeserver}, "
                          f"user @admin:{SERVER_NAME}, password in {self.home / 'secrets.toml'}. Ctrl-C to stop.")
                if self.plane.console is not None:
                    self.echo(f"web console: {self.plane.console.url} — one-time login link: "
                              f"{self.plane.console.login_link()}")
                await self.plane.run_forever()
        finally:
            await self.stop()
        failed = [c for c in self.checks if not c.ok]
        return 1 if failed or not self.checks else 0

    async def play(self) -> None:
        plane, manager = self.plane, self.plane.channel.user_id("manager")
        manager_room = plane.chat.manager_room
        state = plane.state

        await self.admin.send(manager_room, ASK_WORKERS, mention=manager)
        await wait_until(lambda: self.said(manager, "Your team is ready"), timeout=self.timeout,
                         what="the Manager to create the workers")

        await self.admin.send(manager_room, ASK_PROJECT, mention=manager)
        await wait_until(lambda: self.said(manager, "Reply *confirm*") and any(
            p.state == ProjectState.AWAITING_CONFIRMATION for p in state.projects()), timeout=self.timeout,
            what="the Manager's plan")

        if self.admin_in_console:
            await wait_until(lambda: any(p.state is not ProjectState.AWAITING_CONFIRMATION for p in state.projects()),
                             timeout=self.timeout, what="the admin to confirm the plan in the console")
            approver: asyncio.Task[None] | None = None
        else:
            await self.admin.send(manager_room, CONFIRM, mention=manager)
            approver = asyncio.create_task(self.approve_cards(manager), name="demo-approver")
        try:
            await wait_until(lambda: any(p.state == ProjectState.DONE for p in state.projects())
                             and self.said(manager, "is complete"), timeout=self.timeout, what="the project to complete")
        finally:
            if approver is not None:
                approver.cancel()
        await wait_until(plane.manager_idle, timeout=self.timeout, what="the Manager to finish its last turn")

    async def approve_cards(self, manager: str) -> None:
        """The admin approves each approval card as it comes, replying in its room (as from a phone)."""
        done: set[str] = set()
        while True:
            cards = [(m.room_id, found.group(1)) for m in list(self.admin.messages) if m.sender == manager
                     for found in [CARD.search(m.body)] if found and found.group(1) not in done]
            for room, approval in cards:
                await self.admin.send(room, f"approve {approval} — go ahead")
                done.add(approval)
            try:
                await wait_until(lambda: any(m.sender == manager and (found := CARD.search(m.body))
                                             and found.group(1) not in done for m in self.admin.messages),
                                 timeout=self.timeout, what="an approval card")
            except TimeoutError:
                return  # no more cards: the project's own wait reports what did not happen

    async def play_real(self) -> None:
        """The same opening with a real model: workers, then a project plan (not confirmed)."""
        plane, manager = self.plane, self.plane.channel.user_id("manager")
        manager_room = plane.chat.manager_room
        await self.admin.send(manager_room, ASK_WORKERS, mention=manager)
        await wait_until(lambda: plane.state.workers() and self.said(manager, ""), timeout=self.timeout,
                         what="the Manager to answer and create workers")
        await wait_until(plane.manager_idle, timeout=self.timeout, what="the Manager to finish its turn")
        await self.admin.send(manager_room, ASK_PROJECT, mention=manager)
        await wait_until(lambda: any(p.state != ProjectState.PLANNING for p in plane.state.projects()), timeout=self.timeout,
                         what="the Manager to propose a plan")
        await wait_until(plane.manager_idle, timeout=self.timeout, what="the Manager to finish its turn")

    def report_real(self) -> None:
        state = self.plane.state
        workers = [w.name for w in state.workers()]
        self.check("the Manager answered", self.said(self.plane.channel.user_id("manager"), "") is not None)
        self.check("the Manager created workers", bool(workers), ", ".join(workers))
        self.check("the Manager proposed a plan", any(p.state != ProjectState.PLANNING for p in state.projects()))
        for check in self.checks:
            self.echo(f"  {'ok  ' if check.ok else 'FAIL'} {check.what}" + (f" — {check.detail}" if check.detail else ""))
        self.echo(f"\nopening with --model {self.real_model}: "
                  f"{'done' if all(c.ok for c in self.checks) else 'incomplete'} (the plan was not confirmed)")

    # ------------------------------------------------------------------ checks

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, bool(ok), detail))

    def verify(self) -> None:
        state = self.plane.state
        workers = {w.name: w for w in state.workers()}
        self.check("four workers exist", set(workers) == set(WORKERS), ", ".join(sorted(workers)))
        tasks = {t.id: t for t in state.tasks()}
        expected = [p["id"] for p in PLAN] + ["task-006"]
        self.check("six tasks (five planned + one revision)", sorted(tasks) == expected, ", ".join(sorted(tasks)))
        self.check("every task is done", all(t.state is TaskState.DONE for t in tasks.values()),
                   ", ".join(f"{t.id}={t.state.value}" for t in tasks.values()))
        revision = tasks.get("task-006")
        self.check("task-006 revises task-004 and went to sam",
                   revision is not None and revision.revision_of == "task-004" and revision.assignee == "sam")
        self.check("task-004 was re-checked after the revision",
                   "task-004" in tasks and tasks["task-004"].dispatch_count == 2)
        self.check("task-005 runs on the cheap model", "task-005" in tasks and tasks["task-005"].model == "cheap")
        projects = state.projects()
        self.check("the project is done", len(projects) == 1 and projects[0].state == ProjectState.DONE)

    async def verify_storage_and_rooms(self) -> None:
        storage, state = self.plane.storage, self.plane.state
        project = state.projects()[0] if state.projects() else None
        missing = []
        for task in state.tasks():
            for key in (layout.task_spec(task.id), layout.task_result(task.id)):
                if await storage.stat(key) is None:
                    missing.append(key)
        self.check("spec.md and result.md for every task", not missing, ", ".join(missing))
        if project is not None:
            plan = (await storage.get(layout.project_plan(project.id))).decode()
            lines = [line for line in plan.splitlines() if line.startswith("- [")]
            self.check("plan.md shows every task [x]", len(lines) == 6 and all(line.startswith("- [x]") for line in lines))
        self.check(f"sam installed {SKILL} from the registry",
                   await storage.stat(layout.agent_skill("sam", SKILL)) is not None)
        if project is not None and project.room_id:
            events = await self.admin.room_messages(project.room_id)
            assignments: dict[str, int] = {}
            pills = True
            for event in events:
                body = event.get("content", {}).get("body", "")
                for task in state.tasks():
                    if f"**{task.id}** is yours" in body:
                        assignments[task.id] = assignments.get(task.id, 0) + 1
                        content = event["content"]
                        mentioned = self.plane.channel.user_id(task.assignee)
                        pills &= mentioned in (content.get("m.mentions") or {}).get("user_ids", [])
                        pills &= f"https://matrix.to/#/{mentioned}" in content.get("formatted_body", "")
            wanted = {"task-001": 1, "task-002": 1, "task-003": 1, "task-004": 2, "task-005": 1, "task-006": 1}
            self.check("each assignment posted exactly once per attempt", assignments == wanted, str(assignments))
            self.check("assignments carry real mentions (pill + m.mentions)", pills)
        await self.verify_tracker()
        usage = {row["consumer"]: row for row in await self.plane.gateway.usage(by="consumer")}
        self.check("no LLM call for jordan (never mentioned)", "jordan" not in usage)
        self.check("the Manager reported completion to the admin",
                   self.said(self.plane.channel.user_id("manager"), "is complete") is not None)

    async def verify_tracker(self) -> None:
        """taylor filed the launch checklist through the gateway's MCP endpoint; the tracker's
        credential stayed in the gateway (not in taylor's files, its results or any room)."""
        issues = read_issues(self.home / "tracker" / "issues.jsonl")
        calls = [c for c in await self.plane.gateway.mcp_calls() if c["method"] == "tools/call"
                 and c["outcome"] != "pending_approval"]
        self.check(f"taylor filed {LAUNCH_ISSUE!r} in the tracker via MCP ({TRACKER_TOOL})",
                   [i["title"] for i in issues] == [LAUNCH_ISSUE]
                   and [(c["consumer"], c["tool"], c["outcome"], c["task"]) for c in calls]
                   == [("taylor", "create_issue", "ok", "task-005")], f"issues {issues}, calls {calls}")
        if self.real_model is None:
            approvals = [(a.worker, a.target, a.state, a.decided_by) for a in self.plane.state.approvals()]
            self.check("the tracker write waited for the admin's approval (a card in chat), then ran once",
                       approvals == [("taylor", "tracker/create_issue", "done", "admin")]
                       and len(self.plane.state.events(kind="approval.ran")) == 1, f"approvals {approvals}")
        secret = self.plane.secrets.get(TRACKER_SECRET)
        token = secret.get_secret_value() if secret is not None else "-"
        root = getattr(self.plane.storage, "root", None)  # local storage: every worker's files and the shared ones
        files = files_holding(Path(root), token) if root else []
        rooms = [m for m in self.admin.messages if token in json.dumps(m.content)]
        self.check("the tracker's credential reached no worker, file or room", secret is not None and not files and not rooms,
                   f"{len(files)} files, {len(rooms)} messages")

    async def report(self) -> None:
        await self.verify_storage_and_rooms()
        usage = await self.plane.gateway.usage(by="task,model")
        by_task: dict[str, dict[str, Any]] = {}
        for row in usage:
            entry = by_task.setdefault(row.get("task") or "-", {"models": set(), "tokens": 0, "cost": 0.0})
            entry["models"].add(row.get("model") or "?")
            entry["tokens"] += int(row["total_tokens"] or 0)
            entry["cost"] += float(row["cost_usd"] or 0)
        self.echo("\n" + f"{'TASK':<9} {'WORKER':<7} {'STATUS':<18} {'MODEL':<22} {'TOKENS':>7} {'COST $':>9}")
        for task in self.plane.state.tasks():
            entry = by_task.get(task.id, {"models": set(), "tokens": 0, "cost": 0.0})
            self.echo(f"{task.id:<9} {task.assignee:<7} {(task.result_status.value if task.result_status else '-'):<18} "
                      f"{','.join(sorted(entry['models'])) or '-':<22} {entry['tokens']:>7} {entry['cost']:>9.5f}")
        other = by_task.get("-", {"tokens": 0, "cost": 0.0})
        self.echo(f"{'(manager)':<9} {'':<7} {'':<18} {'':<22} {other['tokens']:>7} {other['cost']:>9.5f}")
        self.echo("")
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            self.echo(f"  {mark} {check.what}" + (f" — {check.detail}" if not check.ok and check.detail else ""))
        failed = [c for c in self.checks if not c.ok]
        self.echo(f"\ndemo {'PASSED' if not failed else 'FAILED'} in {time.monotonic() - self.started:.1f}s "
                  f"({len(self.checks) - len(failed)}/{len(self.checks)} checks)")

    async def stop(self) -> None:
        admin = getattr(self, "admin", None)
        if admin is not None:
            await admin.stop()
        plane = getattr(self, "plane", None)
        if plane is not None:
            await plane.stop()
        if hasattr(self, "registry_runner"):
            await self.registry_runner.cleanup()
        if getattr(self, "model", None) is not None:
            await self.model.stop()
