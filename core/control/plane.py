"""The control plane: one asyncio process that runs the team (`hiclaw up`).

Start order: state DB → channel services (embedded homeserver) → gateway → storage → sandbox
supervisor → control API → Manager account, token and room → channel sync → the messages a crash
left in the outbox (before anything else posts) → reconcile workers → pick up results reported
while it was down. Ctrl-C (or SIGTERM) stops everything it started, workers included.
Restart = reconcile: nothing is recreated that exists, nothing posted twice, nothing lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets as pysecrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from hiclaw.agent import GatewayClient
from hiclaw.config import HiclawConfig, Secrets
from hiclaw.control.access import AccessBook, LiveAccess, check_access
from hiclaw.control.api import ControlAPI
from hiclaw.control.approvals import ApprovalDesk, listing, may_ask
from hiclaw.control.chat import ControlChat
from hiclaw.control.cron import check_timezone
from hiclaw.control.idle import IdlePolicy
from hiclaw.control.incoming import Incoming
from hiclaw.control.outbox import Outbox, crash_hook_for_tests
from hiclaw.control.parts import NotStartedError, Part
from hiclaw.control.provisioner import Provisioner
from hiclaw.control.questions import WorkerQuestions
from hiclaw.control.schedule_tools import schedule_tools
from hiclaw.control.scheduler import Scheduler
from hiclaw.control.skills import TeamSkills, team_registry
from hiclaw.control.turns import ManagerTurns, TurnProbe
from hiclaw.control.watchdog import Watchdog
from hiclaw.errors import HiclawError, InvalidInputError
from hiclaw.host import ComponentContext, PluginHost, RuntimeContext
from hiclaw.manager.agent import ManagerAgent
from hiclaw.manager.desk import ManagerDesk
from hiclaw.manager.engine import TaskEngine
from hiclaw.manager.history import manager_history
from hiclaw.manager.origin import Origin
from hiclaw.manager.report import ReportSources
from hiclaw.manager.steer import ACTIONS as STEER_ACTIONS
from hiclaw.manager.steer import admin_steer
from hiclaw.models import ChatMessage, ModelRequest, TaskRecord, TaskResult, TaskState, ToolSpec, WorkerState
from hiclaw.protocols import ApprovalGate, ChannelServices, Lifecycle, Stoppable, StorageEndpoint, TeamChannel, missing_members
from hiclaw.state import StateDB
from hiclaw.storage import layout

if TYPE_CHECKING:
    from hiclaw.console import ConsoleServer
    from hiclaw.sandbox.supervisor import Supervisor

log = logging.getLogger(__name__)

ADMIN = "admin"
MANAGER = "manager"


def ensure_bytecode() -> None:
    """Compile hiclaw's modules to bytecode where it is missing or stale.

    Workers run with the installation mounted read-only, so they cannot cache bytecode
    themselves: without this, every worker start would compile hiclaw from source (slower, and
    more memory). Cheap when everything is up to date; silently skipped where not writable."""
    import compileall
    import importlib

    for name in ("hiclaw", "hiclaw.plugins", "hiclaw.registry", "hiclaw.sandbox"):
        module = importlib.import_module(name)
        for folder in getattr(module, "__path__", []):
            compileall.compile_dir(folder, quiet=2, workers=1)


class ControlPlane:
    """The team's composition root: :meth:`start` builds every component and gives each
    collaborator what it uses (:meth:`_wire`); :meth:`stop` undoes start-up in reverse."""

    state: Part[StateDB] = Part()
    channel: Part[Any] = Part()  # a hiclaw.protocols.TeamChannel
    gateway: Part[Any] = Part()  # a hiclaw.protocols.Gateway
    storage: Part[Any] = Part()  # a hiclaw.protocols.Storage
    access: Part[LiveAccess] = Part()  # who may use which MCP server and egress route
    supervisor: Part[Supervisor] = Part()
    api: Part[ControlAPI] = Part()
    chat: Part[ControlChat] = Part()
    outbox: Part[Outbox] = Part()
    skills: Part[TeamSkills] = Part()
    provisioner: Part[Provisioner] = Part()
    engine: Part[TaskEngine] = Part()
    scheduler: Part[Scheduler] = Part()
    idle: Part[IdlePolicy] = Part()
    watchdog: Part[Watchdog] = Part()
    questions: Part[WorkerQuestions] = Part()
    incoming: Part[Incoming] = Part()
    manager_client: Part[GatewayClient] = Part()
    turns: Part[ManagerTurns] = Part()
    manager: Part[ManagerAgent] = Part()
    desk: Part[ManagerDesk] = Part()
    gate: Part[Any] = Part()  # a hiclaw.wakeup.MentionGate
    approvals: Part[ApprovalDesk] = Part()

    def __init__(self, home: Path, *, config: HiclawConfig, secrets: Secrets, host: PluginHost | None = None,
                 progress: Callable[[str], None] | None = None, worker_ready_timeout: float = 60.0,
                 control_port: int = 0) -> None:
        self.home = home
        self.config = config
        self.secrets = secrets
        self.host = host or PluginHost(disabled=config.plugins.disabled, secret_source=secrets.get)
        self.progress = progress or (lambda text: None)
        self.worker_ready_timeout = worker_ready_timeout
        self.admin = ADMIN
        self.control_port = control_port
        self.components: dict[str, Any] = {}
        self._stopping = asyncio.Event()
        self._inbox_wakeup = asyncio.Event()
        self._inbox_task: asyncio.Task[None] | None = None
        self._extra_manager_tools: list[Callable[[], list[ToolSpec]]] = []
        self._extra_bridges: dict[str, str] = {}
        self._exits = contextlib.AsyncExitStack()
        self.boot: str | None = None
        self.started_at = 0.0
        self.admin_password_created = False
        self.console: ConsoleServer | None = None  # the web console, when [console] enabled

    # ------------------------------------------------------------------ component access

    def _ctx(self, **extra: Any) -> ComponentContext:
        return ComponentContext(home=self.home, side="control", config=self.config, host=self.host, **extra)

    def runtime_context(self) -> RuntimeContext:
        return RuntimeContext(side="control", home=self.home, config=self.config, components=dict(self.components))

    def bridge_urls(self) -> dict[str, str]:
        """Every service a worker must reach from its sandbox, by name."""
        urls = {"gateway": self.gateway.base_url, "control": self.api.url}
        if isinstance(self.channel, ChannelServices):
            urls.update(self.channel.service_urls())
        urls.update(self._extra_bridges)
        return urls

    def extra_manager_tools(self) -> list[ToolSpec]:
        return [tool for factory in self._extra_manager_tools for tool in factory()]

    def add_manager_tools(self, factory: Callable[[], list[ToolSpec]]) -> None:
        self._extra_manager_tools.append(factory)

    # ------------------------------------------------------------------ start / stop

    def check_config(self) -> None:
        """Refuse to start a team that could not think: every model the team uses must exist and
        have its key."""
        from hiclaw.errors import ConfigError

        models = self.config.models
        if not models:
            raise ConfigError("no model aliases are configured",
                              hint="run `hiclaw init` (or add [models.smart] with a litellm model string to config.toml)")
        for role, alias in (("team.manager_model", self.config.team.manager_model),
                            ("team.worker_model", self.config.team.worker_model)):
            if alias not in models:
                raise ConfigError(f"[{role.split('.')[0]}] {role.split('.')[1]} = {alias!r} is not a model alias",
                                  hint=f"use one of {', '.join(sorted(models))}")
        summary = self.config.team.summary_model
        if summary is not None and summary.lower() != "none" and summary not in models:
            raise ConfigError(f"[team] summary_model = {summary!r} is not a model alias",
                              hint=f"use one of {', '.join(sorted(models))}, or \"none\" for summaries made by code")
        for alias, spec in models.items():
            if spec.api_key_secret and self.secrets.get(spec.api_key_secret) is None:
                raise ConfigError(f"model alias {alias!r} needs the secret {spec.api_key_secret!r}, which is not set",
                                  hint=f"add `{spec.api_key_secret} = \"…\"` to {self.secrets.path} or export "
                                       f"{spec.api_key_secret.upper()}")
        check_access(self.config, self.secrets)

    async def start(self) -> None:
        started = time.perf_counter()
        self.started_at = time.time()
        from hiclaw.config import secure_home

        secure_home(self.home)  # umask 077 from here on (and in what it starts); the home 0700, secrets 0600
        self.check_config()
        from hiclaw.sandbox.limits import raise_fd_limit

        raise_fd_limit()  # it holds every worker's bridged connections: the soft default (1024) is too few
        await asyncio.to_thread(ensure_bytecode)
        self.progress("state: opening the state database")
        state = self.state = StateDB(self.home / "state.db")
        self._on_stop("state", state.close)

        self.progress(f"channel: {self.config.channel.plugin}")
        channel = self.channel = self.host.create("channel", self.config.channel.plugin, self.config.channel.settings,
                                                  self._ctx(agent=MANAGER), section="channel.settings")
        lacking = missing_members(channel, TeamChannel)
        if lacking:
            from hiclaw.errors import PluginError

            plugin = self.host.registration("channel", self.config.channel.plugin).plugin
            raise PluginError(f"channel {self.config.channel.plugin!r} (plugin {plugin}) cannot run a team: it lacks "
                              f"{', '.join(lacking)}",
                              hint="implement hiclaw.protocols.TeamChannel (docs/plugins/hooks.md#hiclaw_register_channels)")
        # The homeserver boots in the background while the rest starts (it is the slowest part).
        services = None
        if isinstance(channel, ChannelServices):
            services = asyncio.create_task(channel.start_services())
            booting, serving = services, channel

            async def stop_services() -> None:
                # A start that failed later while the homeserver was still booting: let the boot
                # finish first, or what it starts would be left running with nobody to stop it.
                with contextlib.suppress(Exception):
                    await booting
                await serving.stop_services()

            self._on_stop("channel services", stop_services)
        self.components["channel"] = channel

        self.progress(f"gateway: {self.config.gateway.plugin}")
        gateway = self.gateway = self.host.create("gateway", self.config.gateway.plugin, self.config.gateway.settings,
                                                  self._ctx(), section="gateway.settings")
        self._on_stop("gateway", gateway.stop)
        self.access = LiveAccess(AccessBook(self.config, state), gateway=gateway,
                                 plugin=self.host.registration("gateway", self.config.gateway.plugin).plugin)
        await self.access.apply()
        if may_ask(self.config.approvals) and not isinstance(gateway, ApprovalGate):
            from hiclaw.errors import PluginError

            raise PluginError(f"gateway {self.config.gateway.plugin!r} cannot hold calls for approval, and [approvals] "
                              "asks for some", hint="use the embedded gateway, or set [approvals] level = \"auto\" "
                              "with no rules (docs/approvals.md)")
        await gateway.start()
        self.components["gateway"] = gateway
        self.progress(f"gateway: {gateway.base_url}")

        storage = self.storage = self.host.create("storage", self.config.storage.plugin, self.config.storage.settings,
                                                  self._ctx(), section="storage.settings")
        if isinstance(storage, Stoppable):
            self._on_stop("storage", storage.stop)
        if isinstance(storage, Lifecycle):
            await storage.start()
        if isinstance(storage, StorageEndpoint) and storage.endpoint_url:
            self._extra_bridges["storage"] = storage.endpoint_url
        self.components["storage"] = storage
        self.progress(f"storage: {self.config.storage.plugin}")

        api = self.api = ControlAPI(self, self.home, port=self.control_port)
        self._on_stop("control API", api.stop)
        await api.start()
        self.progress(f"control API: {api.url}")

        from hiclaw.sandbox.supervisor import Supervisor

        backend = self.host.create("sandbox", self.config.sandbox.plugin, self.config.sandbox.settings,
                                   self._ctx(), section="sandbox.settings")
        supervisor = self.supervisor = Supervisor(backend, on_crash_loop=self._on_crash_loop)
        self.components["sandbox"] = backend
        self.progress(f"sandbox: {self.config.sandbox.plugin}")

        self._wire(state, channel, gateway, storage, api, supervisor)

        if services is not None:
            for line in await services:
                self.progress(line)
        await self._ensure_admin()
        manager_token = await gateway.mint_token(MANAGER, models=sorted(self.config.models) or None)
        self.manager_client = GatewayClient(gateway.base_url, manager_token)
        self._on_stop("the Manager's model client", self.manager_client.aclose)
        self._wire_manager(self.manager_client)
        await self.desk.seed_home()

        from hiclaw.wakeup import MentionGate

        # Only the admin's mentions start Manager turns; anyone else's (a worker reporting, asking,
        # or attacking) is handled by code (hiclaw.control.incoming) and kept as context.
        self.gate = MentionGate(channel.user_id(MANAGER), self._on_mention,
                                state_path=self.home / "channel" / "manager-gate.json",
                                trusted={channel.user_id(ADMIN)}, on_refused=self.incoming.untrusted_mention)
        channel.on_message(self._on_message)
        self.progress("channel: connecting as the Manager")
        self._on_stop("channel", channel.stop)
        await channel.start()
        await self.chat.ensure_manager_room()
        delivered = await self.outbox.deliver_pending()  # what a crash left between a state change and its post
        if delivered:
            self.progress(f"outbox: delivered {delivered} message(s) a crash had left pending")
        self._on_stop("outbox", self.outbox.stop)
        self.outbox.start()
        self._inbox_task = asyncio.create_task(self._inbox_loop(), name="manager-inbox")

        workers = [w for w in state.workers() if w.state == WorkerState.ACTIVE]
        if workers:
            self.progress(f"workers: reconciling {len(workers)}")
        self.boot = self.count_boot()
        self._on_stop("workers", supervisor.close)  # the workers start here, and stop before what they reach
        failed = await self.provisioner.reconcile()
        if self.provisioner.adopted:
            self.progress(f"workers: {len(self.provisioner.adopted)} kept running through the crash (adopted)")
        for name in failed:
            self.progress(f"workers: {name} failed to start (see `hiclaw worker logs {name}`)")
        await self.collect_pending_results()
        await self.resume_interrupted_tasks()
        await self.engine.reconcile()
        self._on_stop("scheduler", self.scheduler.stop)
        await self.scheduler.start()
        self._on_stop("approvals", self.approvals.stop)
        self.approvals.start(self.config.team.heartbeat_seconds)
        self._on_stop("watchdog", self.watchdog.stop)  # stopped first: it would restart stopping workers
        self.watchdog.start()
        self._on_stop("plugins", lambda: self.host.shutdown(self.runtime_context()))
        await self.host.startup(self.runtime_context())
        await self._start_console()
        self.progress(f"ready in {time.perf_counter() - started:.1f}s")

    async def _start_console(self) -> None:
        settings = self.config.console
        if not settings.enabled:
            return
        from hiclaw.console import ConsoleServer

        console = ConsoleServer(self, host=settings.host, port=settings.port, idle_hours=settings.session_idle_hours,
                                max_upload_mb=settings.max_upload_mb)
        self._on_stop("console", console.stop)
        await console.start()
        self.console = console
        moved = f" (port {console.moved_from} is in use)" if console.moved_from else ""
        self.progress(f"console: {console.url}{moved}")

    def _wire(self, state: StateDB, channel: Any, gateway: Any, storage: Any, api: ControlAPI,
              supervisor: Any) -> None:
        """Build the team's collaborators, each given what it uses (this is the one place they meet)."""
        config, team = self.config, self.config.team
        chat = self.chat = ControlChat(channel, state, admin=ADMIN)
        self.outbox = chat.outbox = Outbox(state, chat, admin=ADMIN)
        approvals = self.approvals = ApprovalDesk(state=state, policy=config.approvals, admin=ADMIN, flush=chat.flush,
                                                  admin_user=channel.user_id(ADMIN))
        approvals.reconcile()  # a call that ran when the plane stopped is never run again
        if isinstance(self.gateway, ApprovalGate):
            self.gateway.set_approvals(approvals.review)
        state.on_message_committed = crash_hook_for_tests(self.home)
        skills = self.skills = TeamSkills(config.skills, registry=team_registry(self.host, config, self.home),
                                          storage=storage, state=state, chat=chat, admin=ADMIN)
        self._on_stop("skills", skills.aclose)
        provisioner = self.provisioner = Provisioner(
            home=self.home, config=config, host=self.host, state=state, channel=channel, chat=chat, gateway=gateway,
            storage=storage, supervisor=supervisor, api=api, skills=skills, bridge_urls=self.bridge_urls,
            ready_timeout=self.worker_ready_timeout, wake=self._wake_worker, on_reconnect=self._worker_reconnected)
        engine = self.engine = TaskEngine(
            state=state, storage=storage, chat=chat, access=provisioner, wake_manager=self.wake_manager,
            yolo=team.yolo, admin=ADMIN, after_task=self._after_task, max_revision_rounds=team.max_revision_rounds)
        scheduler = self.scheduler = Scheduler(
            state=state, storage=storage, chat=chat, admin=ADMIN, timezone=str(team.timezone), progress=self.progress,
            reports=ReportSources(state=state, storage=storage, chat=chat, usage=self.usage,
                                  wake_manager=self.wake_manager))
        self.add_manager_tools(lambda: schedule_tools(scheduler))
        idle = self.idle = IdlePolicy(state=state, supervisor=supervisor, provisioner=provisioner, display=self.display,
                                      idle_seconds=team.idle_sleep_seconds)
        chat.wake_mentioned = idle.wake_mentioned  # a sleeping worker is ready before it is mentioned
        # heartbeat, restarts, re-notices, stalls, the other waiting states; idle sleep
        self.watchdog = Watchdog(state=state, chat=chat, supervisor=supervisor, provisioner=provisioner,
                                 gateway=gateway, storage=storage, engine=engine, idle=idle,
                                 wake_manager=self.wake_manager, display=self.display,
                                 interval=team.heartbeat_seconds, admin=ADMIN)
        self.watchdog.awaiting_approval = approvals.awaiting
        questions = self.questions = WorkerQuestions(state=state, chat=chat, wake_manager=self.wake_manager,
                                                     admin=ADMIN)
        self.incoming = Incoming(state=state, chat=chat, channel=channel, questions=questions,
                                 collect_results_of=self.collect_results_of, display=self.display,
                                 turn_limit=team.max_turns_per_room_per_minute, admin=ADMIN)

    def _wire_manager(self, client: GatewayClient) -> None:
        """The Manager agent and its turns, on its own model client."""
        # Watched, so a judgement turn whose model failed is retried, then reported (hiclaw.control.turns).
        probe = TurnProbe(client)
        self.turns = ManagerTurns(state=self.state, chat=self.chat, engine=self.engine, probe=probe,
                                  wakeup=self._inbox_wakeup, handle=self._handle_message, wake=self._judge,
                                  interval=self.config.team.heartbeat_seconds, admin=ADMIN)
        desk = self.desk = ManagerDesk(self.config, state=self.state, storage=self.storage, now=self.now,
                                       zone=self.team_zone)
        history = manager_history(self.config, channel=self.channel, storage=self.storage, chat=self.chat,
                                  state=self.state, client=client, display=self.speaker, before_call=self._before_call)
        self.manager = ManagerAgent(
            client=probe, tools=self._manager_tools, send=self._manager_send,
            model=self.config.team.manager_model, read_text=desk.read_file, facts=desk.facts,
            skills=desk.skills, display=self.speaker, admin=ADMIN, before_call=self._before_call,
            history=history, fallback_for=desk.fallback)

    def _on_stop(self, what: str, closer: Callable[[], Any]) -> None:
        """Register what undoes a step of start-up: :meth:`stop` runs them in reverse order, each
        even if another one failed."""
        async def close() -> None:
            try:
                result = closer()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - stop everything else even if one part fails
                log.warning("stopping %s: %s", what, exc)

        self._exits.push_async_callback(close)

    async def stop(self) -> None:
        """Stop whatever was started (also after a failed start): the reverse of start-up."""
        self._stopping.set()
        if self._inbox_task is not None:
            self._inbox_task.cancel()  # no Manager turn begins anything while the rest stops
        await self._exits.aclose()

    async def run_forever(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ accounts and files

    async def _ensure_admin(self) -> None:
        password = self.secrets.get("matrix_admin_password")
        if password is None:
            new = pysecrets.token_urlsafe(18)
            self.secrets.set("matrix_admin_password", new)
            self.secrets.save()
            self.admin_password_created = True
            password_text = new
        else:
            password_text = password.get_secret_value()
        await self.channel.ensure_account(ADMIN, display_name="Admin", password=password_text, admin=True)

    def team_zone(self) -> ZoneInfo:
        return check_timezone(self.config.team.timezone)

    def now(self) -> datetime:
        """Now, by the scheduler's clock (which tests move)."""
        try:
            return self.scheduler.clock.now()
        except NotStartedError:
            return datetime.now(UTC)

    def display(self, user_id: str) -> str:
        local = user_id.split(":", 1)[0].lstrip("@")
        return local or user_id

    def speaker(self, user_id: str) -> str:
        """How a sender is named in the Manager's prompts: the agent name for one of the team's
        own accounts, the full user id for anyone else (``@admin:elsewhere`` is not the admin)."""
        name = self.display(user_id)
        try:
            return name if self.channel.user_id(name) == user_id else user_id
        except ValueError:
            return user_id

    def _manager_tools(self) -> list[ToolSpec]:
        return self.host.tools(self._ctx(agent=MANAGER, runtime=self))

    async def _before_call(self, request: ModelRequest) -> None:
        await self.host.before_model_call(request, self.runtime_context())

    async def _manager_send(self, room_id: str, text: str, mentions: Sequence[str], key: str) -> Any:
        if self.turns.swallow(key, text):
            return None  # the account of a failed judgement turn: it is retried, or reported once
        text, mentions = self.questions.route_answer(key, text, mentions)  # an answer goes to who asked
        return await self.chat.post(room_id, text, mentions=[self.display(m) if m.startswith("@") else m for m in mentions],
                                    key=key)

    async def _after_task(self, task: TaskRecord, result: TaskResult) -> None:
        await self.host.after_task(task, result, self.runtime_context())

    # ------------------------------------------------------------------ incoming messages

    async def _on_message(self, message: ChatMessage) -> None:
        self.watchdog.observe(message)  # workers' messages are heartbeat signals; mentions wake sleepers
        await self.approvals.on_admin_message(message.sender, message.body)  # "approve apr-3" in any room
        await self.host.on_message(message, self.runtime_context())
        await self.gate(message)

    async def _on_mention(self, message: ChatMessage) -> None:
        """The admin mentioned the Manager (the gate lets no one else through): queue a turn."""
        self.state.inbox_add(f"message:{message.event_id}", "message", message.model_dump(mode="json"))
        self._inbox_wakeup.set()

    async def worker_notice(self, worker: str, body: dict[str, Any]) -> None:
        await self.incoming.worker_notice(worker, body)

    async def worker_approval(self, worker: str, body: dict[str, Any]) -> dict[str, Any]:
        """May ``worker`` run this command now (docs/approvals.md)? Its task is taken from the
        state DB (a task id it names counts only if the task is its own)."""
        return await self.approvals.command(worker, body)

    async def wake_manager(self, room_id: str, text: str, key: str, *, origin: Origin | None = None) -> None:
        """Queue a Manager turn for a judgement; the same key is queued once, ever. ``origin``:
        who caused it (never the admin: the admin's turns come from their messages)."""
        payload = {"room_id": room_id, "text": text, "key": key,
                   "origin": (origin or Origin.code("control plane")).to_dict()}
        if self.state.inbox_add(f"wake:{key}", "wake", payload):
            self.state.log_event("manager.wake", key, room=room_id)
        self._inbox_wakeup.set()

    def message_origin(self, message: ChatMessage) -> Origin:
        return self.incoming.message_origin(message)

    async def _handle_message(self, message: ChatMessage) -> None:
        """A queued chat turn (the admin's message), with its origin from its real sender."""
        await self.manager.handle(message, origin=self.message_origin(message))

    async def _judge(self, room_id: str, text: str, *, key: str, origin: Origin) -> None:
        """A queued judgement turn (a wake-up of code's)."""
        await self.manager.wake(room_id, text, key=key, origin=origin)

    async def _wake_worker(self, name: str, reason: str) -> None:
        await self.idle.wake(name, reason=reason)

    async def _worker_reconnected(self, name: str) -> None:
        """A worker reconnected after a crash with no turn going on: what it reported while nobody
        listened is collected, and its interrupted task handed out again."""
        await self.collect_results_of(name)
        await self.resume_interrupted_tasks(assignee=name)

    # ------------------------------------------------------------------ the control API (ControlService)

    async def worker_ready(self, worker: str, info: dict[str, Any]) -> None:
        await self.provisioner.mark_ready(worker, info)

    async def skills_find(self, worker: str, query: str, limit: int) -> list[dict[str, Any]]:
        return await self.skills.find(worker, query, limit)

    async def skills_add(self, worker: str, source: str, skill: str | None) -> dict[str, Any]:
        return await self.skills.add(worker, source, skill)

    async def _inbox_loop(self) -> None:
        """The Manager's turns, one at a time, from a durable queue (nothing lost on a crash; a
        failed judgement turn is retried with back-off, then reported: hiclaw.control.turns)."""
        await self.turns.run()

    async def manager_idle(self) -> bool:
        """True when the Manager has nothing queued (for tests and the demo)."""
        return not self.state.inbox_pending()

    # ------------------------------------------------------------------ results

    async def collect_results_of(self, worker: str) -> int:
        """Pick up the worker's reported results; how many there were."""
        collected = 0
        for task in self.state.tasks(assignee=worker, states=[TaskState.IN_PROGRESS]):
            collected += bool(await self.engine.collect_result(task.id))
        return collected

    async def collect_pending_results(self) -> None:
        for task in self.state.tasks(states=[TaskState.IN_PROGRESS]):
            await self.engine.collect_result(task.id)

    def count_boot(self) -> str:
        """Number this start of the control plane (keys of the messages a restart posts)."""
        boot = self.state.get_meta("boots") or "0"
        self.state.set_meta("boots", str(int(boot) + 1))
        return boot

    async def resume_interrupted_tasks(self, *, assignee: str | None = None) -> list[str]:
        """After a restart, workers' turns in flight were lost with their processes: ask each
        worker to resume its in-progress task (a result already written was collected first).
        A worker adopted from before the crash kept its turn; it is asked only if it reports that
        it has none going on (``assignee``: just its tasks)."""
        boot = self.boot or self.count_boot()
        resumed = []
        for task in self.state.tasks(assignee=assignee, states=[TaskState.IN_PROGRESS]):
            if task.dispatch_count == 0 or (assignee is None and task.assignee in self.provisioner.adopted):
                continue
            project = self.state.project(task.project_id) if task.project_id else None
            room = project.room_id if project and project.room_id else await self.chat.worker_room(task.assignee)
            await self.chat.post(room, f"@{task.assignee} please resume **{task.id}** ({task.title}) — the team "
                                       f"restarted while you worked on it. Spec: `{layout.task_spec(task.id)}`",
                                 mentions=[task.assignee], key=f"resume:{task.id}:{task.dispatch_count}:{boot}")
            self.state.log_event("task.resumed", task.id, boot=boot)
            resumed.append(task.id)
        return resumed

    async def _on_crash_loop(self, name: str, *args: Any) -> None:
        self.state.log_event("worker.crash_loop", name)
        await self.chat.post(self.chat.manager_room,
                             f"@{ADMIN} worker **{name}** keeps crashing and was stopped. "
                             f"See `hiclaw worker logs {name}`.", mentions=[ADMIN],
                             key=f"crash-loop:{name}:{int(time.time() // 3600)}")

    # ------------------------------------------------------------------ services for tools and the CLI

    async def send_to_room(self, room: str, text: str, *, mentions: Sequence[str] = ()) -> str:
        if room.lower() == "manager":
            room_id = self.chat.manager_room
        elif room.lower().startswith("worker:"):
            room_id = await self.chat.worker_room(room.split(":", 1)[1].strip())
        elif room.startswith("proj-"):
            project = self.state.project(room)
            if not project.room_id:
                raise InvalidInputError(f"{room} has no room yet", hint="it is created when the plan is confirmed")
            room_id = project.room_id
        elif room.startswith("!"):
            room_id = room
        else:
            raise InvalidInputError(f"unknown room {room!r}", hint="use 'Manager', 'Worker: <name>' or a project id")
        return await self.chat.post(room_id, text, mentions=list(mentions))

    async def usage(self, by: str = "consumer", since: Any = None, until: Any = None) -> Any:
        """The gateway's ledger (``until`` passed only when given: older gateways lack it)."""
        return await self.gateway.usage(by=by, since=since, **({"until": until} if until is not None else {}))

    async def status(self) -> dict[str, Any]:
        usage = {row.get("consumer"): row for row in await self.gateway.usage(by="consumer")}
        workers = []
        for worker in self.state.workers():
            running = self.supervisor.status(worker.name)
            row = usage.get(worker.name, {})
            workers.append(worker.view() | {
                            "process": running.get("state", "absent"),
                            "tokens": int(row.get("prompt_tokens", 0) or 0) + int(row.get("completion_tokens", 0) or 0),
                            "cost_usd": round(float(row.get("cost_usd", 0) or 0), 6)})
        return {
            "components": {"channel": self.config.channel.plugin, "services": self.bridge_urls(),
                           "gateway": self.gateway.base_url, "storage": self.config.storage.plugin,
                           "sandbox": self.config.sandbox.plugin, "control_api": self.api.url},
            "workers": workers,
            "projects": [p.model_dump() for p in self.state.projects()],
            "tasks": [t.view() for t in self.state.tasks()],
            "approvals": listing(self.state),
        }

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any:
        if action == "create-worker":
            worker = await self.provisioner.create_worker(
                body["name"], role=body["role"], model=body.get("model"), skills=body.get("skills") or [],
                budget_usd=body.get("budget_usd"), network=bool(body.get("network")))
            return worker.model_dump()
        if action == "remove-worker":
            await self.provisioner.remove_worker(body["name"])
            return {"removed": body["name"]}
        if action == "assign-task":  # what the Manager's assign_task does, for the admin (`hiclaw task assign`)
            task = await self.engine.assign_adhoc(str(body["assignee"]), str(body["title"]), str(body.get("spec") or ""),
                                                  body.get("model") or None)
            return task.view()
        if action in STEER_ACTIONS:  # confirm, pause, resume, cancel, complete a project (`hiclaw project pause` …)
            return await admin_steer(self.engine, action, body)
        if action == "console-link":  # `hiclaw console`: a new one-time login link
            if self.console is None:
                raise HiclawError("the web console is off", hint="set [console] enabled = true in config.toml")
            return {"url": self.console.url, "link": self.console.login_link()}
        if action.startswith("approval"):
            return await self.approvals.admin_action(action, body)
        if action.startswith("access-"):
            return await self.access.admin_action(action, body)
        if action.startswith("schedule-"):
            try:
                scheduler = self.scheduler
            except NotStartedError:
                raise HiclawError("the team is still starting", hint="retry in a few seconds") from None
            return await scheduler.admin_action(action, body)
        raise HiclawError(f"unknown admin action {action!r}")
