"""The worker process: channel in, agent loop through the gateway, tools, report out."""
from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiclaw.agent import AgentLoop
from hiclaw.agent.prompt import system_prompt, user_turn
from hiclaw.host import ComponentContext, PluginHost, RuntimeContext
from hiclaw.models import ChatMessage, ModelRequest
from hiclaw.protocols import ResyncingChannel
from hiclaw.registry.errors import UnsafeSkillError
from hiclaw.registry.frontmatter import split_frontmatter
from hiclaw.storage import layout
from hiclaw.wakeup import Exempt, Handler, MentionGate, TurnLimiter
from hiclaw.worker.control import ControlClient
from hiclaw.worker.followup import TurnEnd
from hiclaw.worker.http import WorkerGatewayClient
from hiclaw.worker.mcp import WorkerMcp
from hiclaw.worker.spec import WorkerRuntimeSpec

log = logging.getLogger(__name__)

TASK_REF = re.compile(r"\btask-\d{3,}\b")
#: How long a model call or a control-API call (skills) waits for an unreachable control plane
#: (restarting after a crash: this worker kept running, and its turn goes on once it is back).
OUTAGE_GRACE_SECONDS = 120.0
#: The control plane's "I am back" signal (sent through the launcher to an adopted worker).
RECONNECT_SIGNAL = signal.SIGUSR1
#: The admin's agent name (the control plane's ``ADMIN``): mentions by it are never turn-limited.
ADMIN = "admin"


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a spec.md or SKILL.md (empty if none or invalid).

    Parsed with the registry's light parser, not the Manager's task engine: importing that (state
    DB and plan models) would cost every worker memory for code it never runs."""
    try:
        split = split_frontmatter(text)
    except UnsafeSkillError:
        return {}
    return split[0] if split else {}


def release_memory() -> None:
    """Hand freed heap back to the OS after start-up and after each turn (glibc only): an idle
    worker should hold what it uses, not what its busiest moment needed."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to trim


def worker_default_plugins(spec: WorkerRuntimeSpec) -> list[tuple[str, str]] | None:
    """Only the default plugins a worker uses: gateways and sandboxes stay out of its memory."""
    from hiclaw.host import DEFAULT_PLUGINS

    if spec.default_plugins is None:
        return None
    return [(name, module) for name, module in DEFAULT_PLUGINS if name in spec.default_plugins]


def worker_gate(spec: WorkerRuntimeSpec, user_id: Callable[[str], str], handler: Handler, *,
                state_path: Path | None = None, exempt: Exempt | None = None,
                on_limited: Handler | None = None) -> MentionGate:
    """The mention gate of worker ``spec`` (``user_id(name)``: the channel's id of an agent).

    Who may wake a worker is enforced here: only its trusted senders (the admin and the
    Manager), and others than the admin at most N times per room and minute (``exempt``: turns
    that never count, its own task assignments). ``hiclaw sandbox check`` attacks this same gate."""
    return MentionGate(user_id(spec.name), handler, state_path=state_path,
                       trusted={user_id(who) for who in spec.trusted},
                       limiter=TurnLimiter(spec.max_turns_per_room_per_minute),
                       unlimited={user_id(ADMIN)}, exempt=exempt, on_limited=on_limited)


class TaskContext:
    """The task a woken turn is about (from the assignment's spec.md front matter)."""

    def __init__(self, task_id: str, meta: dict[str, Any], room_id: str) -> None:
        self.task_id = task_id
        self.meta = meta
        self.room_id = room_id

    @property
    def project_id(self) -> str | None:
        return self.meta.get("project")

    @property
    def model(self) -> str | None:
        return self.meta.get("model")

    @property
    def attempt(self) -> int:
        return int(self.meta.get("attempt") or 1)


class WorkerRuntime:
    def __init__(self, spec: WorkerRuntimeSpec, *, host: PluginHost | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = host or PluginHost(disabled=spec.disabled_plugins, default_plugins=worker_default_plugins(spec),
                                       entry_point_plugins=spec.entry_point_plugins)
        self.scratch = Path(spec.scratch_dir)
        self.channel: Any = None
        self.storage: Any = None
        self.gateway = WorkerGatewayClient(spec.gateway.base_url, spec.gateway.token.get_secret_value(),
                                           outage_grace=OUTAGE_GRACE_SECONDS)
        self.control = ControlClient(spec.control_url, spec.control_token.get_secret_value(),
                                     outage_grace=OUTAGE_GRACE_SECONDS)
        self.tasks: dict[str, TaskContext] = {}  # task id -> context, for tools
        # What the gateway grants it beyond its own tools, asked again at each new task: MCP
        # servers (hiclaw.worker.mcp) and egress routes (the http_request tool).
        self.mcp = WorkerMcp(self.gateway, list(spec.mcp))
        self.egress_grants: list[Any] = list(spec.egress)
        self._egress_for: tuple[str | None, float] | None = None
        self.current: TaskContext | None = None
        self.current_room: str | None = None
        self.reported: set[str] = set()
        self._turn_lock = asyncio.Lock()
        # Mentions are queued so a long turn never holds up the channel's sync loop; turns run
        # one at a time in arrival order. (A turn lost in a crash is re-notified by the control plane.)
        self._queue: asyncio.Queue[ChatMessage] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._notices: set[asyncio.Task[None]] = set()
        self.turns = 0
        self.turn_end = TurnEnd(self)

    # ------------------------------------------------------------------ lifecycle

    def _ctx(self, **extra: Any) -> ComponentContext:
        return ComponentContext(home=self.scratch, side="worker", agent=self.name, host=self.host, **extra)

    def runtime_context(self) -> RuntimeContext:
        return RuntimeContext(side="worker", home=self.scratch, agent=self.name,
                              components={"channel": self.channel, "storage": self.storage})

    async def start(self) -> None:
        started = time.perf_counter()
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.storage = self.host.create("storage", self.spec.storage.plugin, self.spec.storage.settings, self._ctx())
        self.channel = self.host.create("channel", self.spec.channel.plugin, self.spec.channel.settings, self._ctx())
        self.tools = self.host.tools(self._ctx(runtime=self))
        self.gate = worker_gate(self.spec, self.channel.user_id, self._enqueue,
                                state_path=self.scratch / "mention-gate.json", exempt=self._is_assignment,
                                on_limited=self._on_turn_limit)
        self.channel.on_message(self._on_message)
        self._consumer = asyncio.create_task(self._consume(), name=f"worker-{self.name}-turns")
        self._orphan_watch = asyncio.create_task(self._watch_control_plane(), name=f"worker-{self.name}-orphan")
        await self.channel.start()
        await self.host.startup(self.runtime_context())
        log.info("worker %s ready in %.2fs", self.name, time.perf_counter() - started)
        print(f"hiclaw worker {self.name}: ready", flush=True)
        await self.control.ready({"name": self.name, "startup_seconds": round(time.perf_counter() - started, 3)})
        if self.spec.mcp:  # its servers' catalogues, read once it is ready (the first task reads them again)
            self._mcp_listing: asyncio.Task[None] | None = asyncio.create_task(
                self._list_mcp_tools(), name=f"worker-{self.name}-mcp")
        release_memory()

    async def _list_mcp_tools(self) -> None:
        try:
            await self.mcp.refresh(None, force=True)
            log.info("worker %s: %d MCP tool(s) from %d server(s)", self.name, len(self.mcp.tools), len(self.mcp.servers))
        except Exception as exc:  # noqa: BLE001 - a turn asks again; the worker goes on without them meanwhile
            log.warning("worker %s: listing its MCP tools failed: %s", self.name, exc)
        release_memory()

    async def stop(self) -> None:
        for task in (getattr(self, "_consumer", None), getattr(self, "_orphan_watch", None),
                     getattr(self, "_mcp_listing", None)):
            if task is not None:
                task.cancel()
        await self.host.shutdown(self.runtime_context())
        if self.channel is not None:
            await self.channel.stop()
        await self.gateway.aclose()
        await self.control.aclose()

    async def _watch_control_plane(self) -> None:
        """Stop once the control plane has been unreachable for ``orphan_timeout_seconds``: it
        crashed and nobody started it again (a new one within that time adopts this worker)."""
        timeout = self.spec.orphan_timeout_seconds
        loop = asyncio.get_running_loop()
        gone_since: float | None = None
        while True:
            await asyncio.sleep(min(60.0, timeout / 4))  # a periodic check, not synchronisation
            if await self.control.reachable():
                gone_since = None
                continue
            gone_since = gone_since if gone_since is not None else loop.time()
            if loop.time() - gone_since >= timeout:
                log.warning("worker %s: the control plane has been unreachable for %.0fs; stopping",
                            self.name, loop.time() - gone_since)
                self._stop.set()
                return

    def _on_reconnect_signal(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self.reconnected(), name=f"worker-{self.name}-reconnect")

    async def reconnected(self) -> None:
        """A new control plane took this worker over after a crash (its bridges are back): retry
        what waits on them now, then report ready again — with whether a turn is still going on,
        so a task whose turn was lost meanwhile is handed out again."""
        log.info("worker %s: the control plane is back; reconnecting", self.name)
        self.gateway.wake()
        self.control.wake()
        if isinstance(self.channel, ResyncingChannel) and not await self.channel.resync():
            log.warning("worker %s: the channel is not syncing yet", self.name)
        try:
            await self.control.ready({"name": self.name, "reconnected": True, "busy": not await self.idle()})
            log.info("worker %s: reconnected to the control plane", self.name)
        except Exception as exc:  # noqa: BLE001 - the control plane's watchdog notices a silent worker
            log.warning("worker %s: reporting ready after a reconnect failed (%s)", self.name, exc)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(RECONNECT_SIGNAL, self._on_reconnect_signal)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ messages

    async def _on_message(self, message: ChatMessage) -> None:
        await self.host.on_message(message, self.runtime_context())
        await self.gate(message)

    async def _enqueue(self, message: ChatMessage) -> None:
        await self._queue.put(message)

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            await self._on_mention(message)

    async def _is_assignment(self, message: ChatMessage) -> bool:
        """Whether the message hands this worker one of its own tasks (by its spec.md): the
        engine posts each assignment once, so these never count toward the turn limit."""
        return await self.task_context(message) is not None

    async def _on_turn_limit(self, message: ChatMessage) -> None:
        """Over the turn limit in a room: the control plane tells the admin (without waiting:
        the channel's sync loop must go on)."""
        async def tell() -> None:
            try:
                await self.control.notice({"kind": "turn-limit", "room_id": message.room_id})
            except Exception as exc:  # noqa: BLE001 - the limit holds anyway; only the notice is lost
                log.warning("worker %s: could not report the turn limit: %s", self.name, exc)

        task = asyncio.create_task(tell(), name=f"worker-{self.name}-turn-limit")
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    def reply_mentions(self, sender: str, text: str = "") -> list[str]:
        """Whom a reply mentions: the admin if the admin woke the turn, the Manager only if the
        text addresses it (a question) — never a worker, so two workers' replies cannot keep
        waking each other."""
        return self.turn_end.mentions(sender, text)

    async def idle(self) -> bool:
        return self._queue.empty() and not self._turn_lock.locked()

    def display(self, user_id: str) -> str:
        """How a sender is named in prompts: the agent name for one of the team's own accounts,
        the full user id for anyone else (``@admin:elsewhere`` is not the admin)."""
        local = user_id.split(":", 1)[0].lstrip("@")
        try:
            return local if local and self.channel.user_id(local) == user_id else user_id
        except ValueError:
            return user_id

    async def task_context(self, message: ChatMessage) -> TaskContext | None:
        for task_id in dict.fromkeys(TASK_REF.findall(message.body)):
            try:
                raw = await self.storage.get(layout.task_spec(task_id))
            except Exception:  # noqa: BLE001, S112 - not granted to us or absent: not our task
                continue
            meta = front_matter(raw.decode("utf-8", errors="replace"))
            if meta.get("assignee") == self.name:
                context = TaskContext(task_id, meta, message.room_id)
                self.tasks[task_id] = context
                return context
        return None

    async def _read_text(self, key: str) -> str:
        try:
            return (await self.storage.get(key)).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 - optional files
            return ""

    async def skill_catalog(self) -> list[tuple[str, str]]:
        catalog = []
        prefix = layout.agent_skills_dir(self.name)
        for item in await self.storage.list(prefix):
            key = item["key"]
            if key.endswith("/SKILL.md") and key.count("/") == prefix.count("/") + 1:
                meta = front_matter(await self._read_text(key))
                catalog.append((str(meta.get("name") or key.split("/")[-2]), str(meta.get("description") or "")[:300]))
        return sorted(catalog)

    async def turn_tools(self, task: TaskContext | None) -> list[Any]:
        """Its tools for this turn: its own, ``http_request`` while it has an egress route, and the
        tools of its MCP servers — grants asked again at each new task (at most every minute)."""
        task_id = task.task_id if task else None
        await self.refresh_egress(task_id)
        await self.mcp.refresh(task_id)
        tools = [tool for tool in self.tools if tool.name != "http_request"]
        if self.egress_grants:
            from hiclaw.worker.tools import WorkerTools

            tools.append(WorkerTools(self).http_request_spec())
        taken = {tool.name for tool in tools}
        return tools + [tool for tool in self.mcp.specs(task_id) if tool.name not in taken]

    async def refresh_egress(self, task_id: str | None) -> None:
        from hiclaw.worker.mcp import REFRESH_SECONDS
        from hiclaw.worker.spec import EgressGrant

        last = self._egress_for
        if last is not None and last[0] == task_id and time.monotonic() - last[1] < REFRESH_SECONDS:
            return
        self._egress_for = (task_id, time.monotonic())
        try:
            self.egress_grants = [EgressGrant.model_validate(route) for route in await self.gateway.granted("egress")]
        except Exception as exc:  # noqa: BLE001 - keep what it had; the gateway checks every call anyway
            log.warning("egress routes unavailable: %s", exc)

    async def build_messages(self, message: ChatMessage, task: TaskContext | None) -> list[dict[str, Any]]:
        identity = await self._read_text(layout.agent_soul(self.name)) or f"You are {self.name}, a worker agent."
        rules = await self._read_text(layout.agent_rules(self.name))
        memory = await self._read_text(layout.agent_memory(self.name))
        facts = [f"Your name is {self.name}; your home is `{layout.agent_home(self.name)}` (paths without a "
                 "folder are relative to it)."]
        if task is not None:
            facts.append(f"This turn is about {task.task_id}: read `{layout.task_spec(task.task_id)}` first; "
                         f"work in `{layout.task_workspace(task.task_id)}`; finish with report_result.")
        system = system_prompt(identity=identity, rules=rules, skills=await self.skill_catalog(), memory=memory,
                               facts=facts)
        return [{"role": "system", "content": system},
                {"role": "user", "content": user_turn(message, display=self.display)}]

    async def before_call(self, request: ModelRequest) -> None:
        await self.host.before_model_call(request, self.runtime_context())

    async def _on_mention(self, message: ChatMessage) -> None:
        async with self._turn_lock:  # one turn at a time: tasks are worked on in order
            self.turns += 1
            task = await self.task_context(message)
            self.current, self.current_room = task, message.room_id
            model = (task.model if task and task.model else None) or self.spec.model
            try:
                await self.channel.set_typing(message.room_id, True)
            except Exception:  # noqa: BLE001, S110 - typing is cosmetic
                pass
            try:
                loop = AgentLoop(self.gateway, await self.turn_tools(task), agent=self.name, max_steps=self.spec.max_steps,
                                 before_call=self.before_call)
                turn = await loop.run(await self.build_messages(message, task), model=model,
                                      task_id=task.task_id if task else None,
                                      project_id=task.project_id if task else None)
                # The reply, or — a task the Manager handed over and the model did not report — a
                # nudge, then a report on its behalf (hiclaw.worker.followup).
                await self.turn_end.settle(message, turn, task, model=model)
            except Exception as exc:
                log.exception("worker %s: turn failed", self.name)
                text = f"I could not finish this turn: {exc}"
                await self.channel.send(message.room_id, text, mentions=self.reply_mentions(message.sender, text),
                                        idempotency_key=f"error:{self.name}:{message.event_id}")
            finally:
                try:
                    await self.channel.set_typing(message.room_id, False)
                except Exception:  # noqa: BLE001, S110 - typing is cosmetic
                    pass
                self.current = None
                release_memory()
