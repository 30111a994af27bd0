"""Create, start, refresh and remove workers — one code path for the Manager's tool, the CLI and
reconciliation at boot.

create = Matrix account + ``Worker: <name>`` room + consumer token (model allow-list, budget) +
storage home (SOUL.md, AGENTS.md, seeded skills) + sandboxed process; remove = the reverse.
Every step is idempotent, so running it again after a crash (or at every boot) converges.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hiclaw.errors import HiclawError, InvalidInputError
from hiclaw.models import TaskState
from hiclaw.state import Worker
from hiclaw.storage import layout

log = logging.getLogger(__name__)

RESERVED = {"manager", "admin"}
BUSY = (TaskState.IN_PROGRESS, TaskState.REVIEW)

RULES = """# Rules (written by hiclaw; edits are overwritten)

- You are woken only when someone @mentions you; unmentioned messages reach you as context.
- Your assignment names a task id and its spec file. Read the spec first (`read_file`).
- Work in the task's workspace folder; keep chat short and put real content into files.
- Record progress with `progress_note` on long tasks, so the watchdog knows you are alive.
- Finish every task with `report_result` (SUCCESS, SUCCESS_WITH_NOTES, REVISION_NEEDED or BLOCKED).
  It writes result.md and tells the Manager; you do not need to post anything else.
- If you lack a capability, look for a skill (`skills_find`, then `skills_add`) and read it
  (`skills_read`) before using it.
- Remember durable lessons with `memory_append`; your memory is yours alone.
"""


def soul_for(name: str, role: str) -> str:
    return (f"# {name}\n\nYou are **{name}**, a worker on a small AI team. Your role: {role.strip()}.\n\n"
            "The Manager assigns you tasks and judges your results; the human admin can talk to you too.\n")


def port_of(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "127.0.0.1", port


class Provisioner:
    """Owns workers' desired state and drives channel, gateway, storage and sandbox to it."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.ready: dict[str, asyncio.Event] = {}
        self.mounts: dict[str, list[Any]] = {}  # mounts each running worker was started with
        self.start_times: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}  # epoch seconds of each worker's latest "ready" (watchdog)
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # ------------------------------------------------------------------ create / remove

    async def create_worker(self, name: str, *, role: str, model: str | None = None, skills: list[str] | None = None,
                            budget_usd: float | None = None, network: bool = False) -> Worker:
        layout.check_agent(name)
        if name in RESERVED:
            raise InvalidInputError(f"{name!r} is reserved", hint="pick another worker name")
        if not role.strip():
            raise InvalidInputError("a worker needs a role", hint="e.g. 'data analyst: collects and charts metrics'")
        model = model or self.plane.config.team.worker_model
        self.check_model(model)
        state = self.plane.state
        existing = state.find_worker(name)
        worker = state.upsert_worker(Worker(
            name=name, role=role.strip(), model=model, skills=sorted(set(skills or (existing.skills if existing else []))),
            state="active", network=network,
            budget_usd=budget_usd if budget_usd is not None else self.plane.config.team.worker_budget_usd,
        ))
        state.log_event("worker.created" if existing is None or existing.state == "removed" else "worker.updated", name)
        await self.ensure(worker, restart=existing is not None and existing.model != model)
        return state.worker(name)

    def check_model(self, model: str) -> None:
        aliases = self.plane.config.models
        if aliases and model not in aliases:
            raise InvalidInputError(f"unknown model {model!r}", hint=f"use one of {', '.join(sorted(aliases))}")

    async def set_model(self, name: str, model: str) -> Worker:
        self.check_model(model)
        self.plane.state.set_worker_model(name, model)
        await self.start_process(self.plane.state.worker(name), restart=True)
        return self.plane.state.worker(name)

    async def remove_worker(self, name: str) -> None:
        worker = self.plane.state.worker(name)
        async with self._lock(name):
            await self.plane.supervisor.stop(name)
            await self.plane.gateway.revoke_token(name)
            await self.plane.storage.revoke(name)
            self.plane.api.revoke(name)
            room = await self.plane.chat.worker_room(name)
            try:
                await self.plane.channel.remove_member(room, name)
            except Exception as exc:  # noqa: BLE001 - leaving the room is best effort; access is already gone
                log.warning("could not remove %s from its room: %s", name, exc)
            self.plane.state.set_worker_state(worker.name, "removed")
            self.plane.state.log_event("worker.removed", name)
            self.mounts.pop(name, None)

    # ------------------------------------------------------------------ converge

    async def ensure(self, worker: Worker, *, restart: bool = False) -> None:
        """Account, room, home and process — each idempotent."""
        plane = self.plane
        await plane.channel.ensure_account(worker.name, display_name=worker.name.title())
        await plane.chat.worker_room(worker.name)
        await self.seed_home(worker)
        await self.start_process(worker, restart=restart)

    async def seed_home(self, worker: Worker) -> None:
        storage = self.plane.storage
        await storage.put(layout.agent_soul(worker.name), soul_for(worker.name, worker.role).encode())
        await storage.put(layout.agent_rules(worker.name), RULES.encode())
        if await storage.stat(layout.agent_memory(worker.name)) is None:
            await storage.put(layout.agent_memory(worker.name), f"# Memory of {worker.name}\n".encode())
        await self.plane.skills.seed(worker.name, worker.skills)

    def desired_grants(self, name: str) -> tuple[list[str], list[str]]:
        """rw: its home and its tasks' folders; ro: the folders of the tasks its tasks build on."""
        state = self.plane.state
        mine = [t for t in state.tasks(assignee=name) if t.state is not TaskState.CANCELLED]
        own = {t.id for t in mine}
        rw = [layout.agent_home(name)] + [layout.task_dir(t.id) for t in mine]
        inputs = {d for t in mine for d in [*t.depends_on, *([t.revision_of] if t.revision_of else [])]} - own
        ro = [layout.task_dir(d) for d in sorted(inputs)]
        ro += sorted({layout.project_dir(t.project_id) for t in mine if t.project_id})
        return rw, ro

    def worker_plugins(self, storage_capability: str) -> list[str]:
        """Names of the default plugins a worker needs: its channel's, its storage's, the tools'."""
        host = self.plane.host
        needed = {host.registration("channel", self.plane.config.channel.plugin).plugin,
                  host.registration("storage", storage_capability).plugin}
        needed |= {reg.plugin for reg in host.registrations("tool").values()}
        return sorted(needed)

    def state_dir(self, name: str) -> Path:
        path = self.plane.home / "workers" / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def busy(self, name: str) -> bool:
        return bool(self.plane.state.tasks(assignee=name, states=list(BUSY)))

    async def refresh_access(self, name: str) -> None:
        """Re-grant; restart the sandbox only if its mounts must change and it is not mid-task."""
        worker = self.plane.state.worker(name)
        if worker.state == "sleeping":  # idle sleep: start it (with fresh grants) before work reaches it
            await self.plane.idle.wake(name, reason="assignment")
            return
        rw, ro = self.desired_grants(name)
        access = await self.plane.storage.grant(name, rw=rw, ro=ro)
        if name in self.mounts and access.mounts == self.mounts[name]:
            return
        if name in self.mounts and self.busy(name):
            return  # applied when its current task is done (the next dispatch calls us again)
        await self.start_process(worker, restart=True)

    def bridges(self) -> list[Any]:
        from hiclaw.sandbox.spec import Bridge

        bridges = []
        for name, url in self.plane.bridge_urls().items():
            host, port = port_of(url)
            if host in ("127.0.0.1", "localhost", "::1"):
                bridges.append(Bridge(name=name, port=port, target_host="127.0.0.1"))
        return bridges

    async def start_process(self, worker: Worker, *, restart: bool = False) -> None:
        from hiclaw.sandbox.spec import Mount, WorkerSpec
        from hiclaw.worker.spec import ComponentRef, GatewayRef, WorkerRuntimeSpec

        plane = self.plane
        async with self._lock(worker.name):
            running = plane.supervisor.status(worker.name).get("state") == "running"
            if running and not restart:
                return
            rw, ro = self.desired_grants(worker.name)
            access = await plane.storage.grant(worker.name, rw=rw, ro=ro)
            token = await plane.gateway.mint_token(worker.name, models=sorted(plane.config.models) or None,
                                                   budget_usd=worker.budget_usd)
            # The worker's own persistent state (sync token, seen events, mention buffers): it
            # survives restarts of the sandbox, so nothing is replayed and nothing is lost.
            state_dir = self.state_dir(worker.name)
            runtime = WorkerRuntimeSpec(
                name=worker.name, model=worker.model,
                channel=ComponentRef(plugin=plane.config.channel.plugin,
                                     settings=plane.channel.worker_settings(worker.name)),
                storage=ComponentRef(plugin=access.plugin, settings=access.settings),
                gateway=GatewayRef(base_url=plane.gateway.base_url, token=token),
                control_url=plane.api.url, control_token=plane.api.issue(worker.name),
                scratch_dir=str(state_dir), disabled_plugins=plane.config.plugins.disabled,
                default_plugins=self.worker_plugins(access.plugin),
            )
            mounts = [Mount(host_path=m.host_path, sandbox_path=m.sandbox_path, read_only=m.read_only)
                      for m in access.mounts]
            spec = WorkerSpec(
                name=worker.name, argv=[sys.executable, "-X", "no_debug_ranges", "-m", "hiclaw.worker"],
                env={"HICLAW_WORKER_SPEC": runtime.to_env(), "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"},
                home=state_dir, mounts=mounts, bridges=self.bridges(), network=worker.network,
                log_path=plane.home / "logs" / "workers" / f"{worker.name}.log",
            )
            event = self.ready[worker.name] = asyncio.Event()
            self.start_times[worker.name] = asyncio.get_running_loop().time()
            if running:
                await plane.supervisor.restart(worker.name, spec)
            else:
                await plane.supervisor.start(spec)
            self.mounts[worker.name] = access.mounts
            plane.state.log_event("worker.started", worker.name)
        await self.wait_ready(worker.name, event)

    async def wait_ready(self, name: str, event: asyncio.Event) -> None:
        """Until the worker reports ready; fail fast if its process exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plane.worker_ready_timeout
        while not event.is_set():
            status = self.plane.supervisor.status(name)
            if status.get("state") in ("exited", "backoff", "crash-loop", "stopped"):
                reason = status.get("error") or f"exit code {status.get('exit_code')}"
                raise HiclawError(f"worker {name} exited before it was ready ({reason})",
                                  hint=f"see its log: hiclaw worker logs {name}")
            if loop.time() > deadline:
                raise HiclawError(f"worker {name} did not become ready within {self.plane.worker_ready_timeout:.0f}s",
                                  hint=f"see its log: hiclaw worker logs {name}")
            try:
                await asyncio.wait_for(event.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                continue

    def mark_ready(self, name: str) -> None:
        self.ready_at[name] = time.time()
        event = self.ready.setdefault(name, asyncio.Event())
        event.set()

    async def is_running(self, name: str) -> bool:
        return self.plane.supervisor.status(name).get("state") == "running"

    async def reconcile(self) -> list[str]:
        """Bring every active worker to its desired state (after a restart or a crash)."""
        workers = [w for w in self.plane.state.workers() if w.state == "active"]
        results = await asyncio.gather(*(self.ensure(w) for w in workers), return_exceptions=True)
        failed = []
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("worker %s could not be reconciled: %s", worker.name, result)
                failed.append(worker.name)
        return failed
