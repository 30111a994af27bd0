"""A Worker's tools: files in its home and task folders, commands in its sandbox, skills through
the control plane, progress notes, the result report, its memory and — when granted an egress
route — ``http_request`` through the gateway.

Registered by the default plugin ``worker-tools`` (:mod:`hiclaw.worker.plugin`); the tools reach the worker through
``ctx.runtime`` (a :class:`hiclaw.worker.runtime.WorkerRuntime`). Bookkeeping is code:
``report_result`` writes result.md and posts the @manager mention itself.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml

from hiclaw.agent.functions import function_tool, schema_hint
from hiclaw.errors import InvalidInputError
from hiclaw.models import ResultStatus, ToolSpec
from hiclaw.protocols import APPROVAL_HEADER, CALL_ID_HEADER, LocalPaths
from hiclaw.storage import layout
from hiclaw.worker.approval import call_id, until_decided

MAX_OUTPUT_CHARS = 12000
MAX_FILE_CHARS = 60000
REPORTABLE = [s.value for s in ResultStatus if s is not ResultStatus.INTERRUPTED]


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _cap(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    head = limit // 4
    return text[:head] + f"\n… [{len(text) - limit} characters cut] …\n" + text[-(limit - head):]


class WorkerTools:
    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.name = runtime.name

    # ------------------------------------------------------------------ paths

    def key(self, path: str) -> str:
        """A tool path → a storage key: ``shared/…``/``agents/…`` as given, anything else in the home."""
        text = str(path).strip()
        while text.startswith("./"):
            text = text[2:]
        if text in ("", "."):
            raise InvalidInputError("empty path", hint="name a file, e.g. 'workspace/notes.md'")
        if not text.startswith((layout.AGENTS, layout.SHARED)):
            text = layout.agent_home(self.name) + text
        return layout.validate_key(text, what="path")

    def prefix(self, path: str) -> str:
        text = str(path or "").strip().strip("/")
        if not text or text == ".":
            return layout.agent_home(self.name)
        return self.key(text).rstrip("/") + "/"

    def writable(self, key: str) -> None:
        home = layout.agent_home(self.name)
        if key.startswith(home):
            return
        owner = layout.owner_of(key)
        if owner and owner[0] == "task" and owner[1] in self.rt.tasks:
            if key == layout.task_spec(owner[1]):
                raise InvalidInputError(f"{key} is the Manager's spec and is read-only", hint="write your result instead")
            return
        raise InvalidInputError(f"you may not write {key}",
                                hint=f"write in your home ({home}) or the folder of a task assigned to you")

    def local_dir(self) -> Path:
        """Where commands run: the current task's workspace (or the home's) when storage is a disk."""
        key = layout.task_workspace(self.rt.current.task_id) if self.rt.current else layout.agent_workspace(self.name)
        if isinstance(self.rt.storage, LocalPaths):
            try:
                path = Path(self.rt.storage.local_path(key.rstrip("/")))
                path.mkdir(parents=True, exist_ok=True)
                return path
            except OSError:
                pass
        self.rt.scratch.mkdir(parents=True, exist_ok=True)
        return self.rt.scratch

    # ------------------------------------------------------------------ tools

    async def list_files(self, path: str = "") -> Any:
        """List files under a folder (your home by default; or shared/tasks/<id>/)."""
        prefix = self.prefix(path)
        items = await self.rt.storage.list(prefix)
        return [{"path": i["key"], "size": i.get("size")} for i in items[:500]]

    async def read_file(self, path: str) -> Any:
        """Read a text file."""
        key = self.key(path)
        data = await self.rt.storage.get(key)
        return _cap(data.decode("utf-8", errors="replace"), MAX_FILE_CHARS)

    async def write_file(self, path: str, content: str) -> Any:
        """Write a text file in your home or in a folder of a task assigned to you."""
        key = self.key(path)
        self.writable(key)
        await self.rt.storage.put(key, content.encode())
        return {"written": key, "bytes": len(content.encode())}

    async def run_command(self, command: str, timeout_seconds: float | None = None) -> Any:
        """Run a shell command in your sandbox (cwd: the current task's workspace)."""
        timeout = min(float(timeout_seconds or self.rt.spec.command_timeout_seconds), 900.0)
        cwd = self.local_dir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8",
               "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
        proc = await asyncio.create_subprocess_shell(
            command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
            timed_out = False
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = await proc.communicate()
            timed_out = True
        return {"exit_code": proc.returncode, "timed_out": timed_out, "cwd": str(cwd),
                "output": _cap((output or b"").decode("utf-8", errors="replace"))}

    async def skills_find(self, query: str, limit: int | None = None) -> Any:
        """Search the skill registry."""
        return await self.rt.control.skills_find(query, int(limit or 10))

    async def skills_add(self, source: str, skill: str | None = None) -> Any:
        """Install a skill (source 'owner/repo', skill name) into your skills."""
        return await self.rt.control.skills_add(source, skill)

    async def skills_read(self, name: str) -> Any:
        """Read an installed skill's SKILL.md."""
        return (await self.rt.storage.get(layout.agent_skill(self.name, name))).decode("utf-8", errors="replace")

    async def progress_note(self, task_id: str, note: str) -> Any:
        """Record progress on a task (the watchdog sees you are alive)."""
        if task_id not in self.rt.tasks:
            raise InvalidInputError(f"{task_id} is not assigned to you", hint="use the task id from your assignment")
        key = layout.task_progress_dir(task_id) + f"{_stamp()}.md"
        await self.rt.storage.put(key, note.encode())
        return {"written": key}

    async def report_result(self, task_id: str, status: Annotated[str, schema_hint(enum=REPORTABLE)], summary: str,
                            result_markdown: str | None = None) -> Any:
        """Finish a task: writes result.md and tells the Manager."""
        context = self.rt.tasks.get(task_id)
        if context is None:
            raise InvalidInputError(f"{task_id} is not assigned to you", hint="report the task from your assignment")
        status = status.upper()
        if status not in REPORTABLE:
            raise InvalidInputError(f"unknown status {status!r}", hint=f"use one of {', '.join(REPORTABLE)}")
        summary = " ".join(summary.split())[:300]
        meta = {"task": task_id, "status": status, "summary": summary, "worker": self.name,
                "attempt": context.attempt, "reported_at": datetime.now(UTC).isoformat(timespec="seconds")}
        body = result_markdown or summary
        text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body.strip() + "\n"
        key = layout.task_result(task_id)
        await self.rt.storage.put(key, text.encode())
        manager = self.rt.spec.manager
        await self.rt.channel.send(
            context.room_id,
            f"@{manager} **{task_id}** {status} — {summary}\nResult: `{key}`",
            mentions=[manager], idempotency_key=f"report:{task_id}:{context.attempt}")
        self.rt.reported.add(task_id)
        return {"reported": task_id, "status": status, "result": key}

    async def memory_append(self, text: str) -> Any:
        """Remember something for later tasks (your MEMORY.md; never shared)."""
        key = layout.agent_memory(self.name)
        try:
            current = (await self.rt.storage.get(key)).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - first memory
            current = "# Memory\n"
        line = f"- {datetime.now(UTC).date().isoformat()}: {' '.join(text.split())}"
        await self.rt.storage.put(key, (current.rstrip("\n") + "\n" + line + "\n").encode())
        return {"remembered": line}

    async def http_request(self, route: str, method: str = "GET", path: str = "/", query: dict[str, str] | None = None,
                           body: str | None = None, headers: dict[str, str] | None = None) -> Any:
        """Call an HTTP API through the gateway, which adds the credential you never see.

        Args:
            route: the name of a route granted to you.
            method: the HTTP method (the route allows only some).
            path: the path under the route's base URL, starting with '/'.
            query: query parameters.
            body: the request body (text; e.g. JSON — set its Content-Type in headers).
            headers: extra request headers (Authorization and cookies are never passed on).
        """
        from hiclaw.agent.client import Unreachable

        granted = {grant.name for grant in self.egress_grants()}
        if route not in granted:
            raise InvalidInputError(f"route {route!r} is not granted to you",
                                    hint=f"use one of {', '.join(sorted(granted)) or 'none'}")
        path = path if path.startswith("/") else "/" + path
        task = self.rt.current.task_id if getattr(self.rt, "current", None) else None
        sent = {**{k: v for k, v in (headers or {}).items() if k.lower() != CALL_ID_HEADER.lower()},
                CALL_ID_HEADER: call_id()}

        async def send() -> tuple[int, bytes, dict[str, str]]:
            return await self.rt.gateway.egress(
                route, method.upper(), path, query=query, body=body.encode() if body is not None else None,
                headers=sent, task_id=task)

        def pending(answer: tuple[int, bytes, dict[str, str]]) -> str | None:
            waits = answer[0] == 202 and any(k.lower() == APPROVAL_HEADER.lower() and v == "pending"
                                             for k, v in answer[2].items())
            if not waits:
                return None
            try:
                return str(json.loads(answer[1])["approval"]["id"])
            except (ValueError, KeyError, TypeError):
                return "?"

        try:
            status, data, answer_headers = await until_decided(send, pending, away=(Unreachable,))
        except Unreachable as exc:
            raise InvalidInputError(f"the gateway did not answer ({exc})", hint="try again in a moment") from None
        shown = {k: v for k, v in answer_headers.items() if k.lower() in ("content-type", "location", "retry-after",
                                                                          "link", "etag", "last-modified")}
        return {"status": status, "headers": shown, "body": _cap(data.decode("utf-8", errors="replace"))}

    def egress_grants(self) -> list[Any]:
        """Its routes: as the gateway last said (the runtime asks at each task), else as its spec said."""
        current = getattr(self.rt, "egress_grants", None)
        if current is not None:
            return list(current)
        spec = getattr(self.rt, "spec", None)
        return list(getattr(spec, "egress", None) or [])

    def http_request_spec(self) -> ToolSpec:
        routes = "; ".join(f"{g.name} ({', '.join(g.methods)} under {', '.join(g.paths)})"
                           + (f": {g.description}" if g.description else "") for g in self.egress_grants())
        return function_tool(self.http_request, description="Call an HTTP API through the gateway, which adds the "
                             f"credential you never see. Your routes: {routes}.")

    def specs(self) -> list[ToolSpec]:
        tools = [function_tool(tool) for tool in (
            self.list_files, self.read_file, self.write_file, self.run_command, self.skills_find, self.skills_add,
            self.skills_read, self.progress_note, self.report_result, self.memory_append)]
        if self.egress_grants():  # only a worker granted a route is offered the tool
            tools.append(self.http_request_spec())
        return tools
