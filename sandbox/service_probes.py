"""The service-level probes of ``hiclaw sandbox check``: the boundary *through* what a worker reaches.

Direct isolation (no host files, processes or ports) is not the whole boundary: a worker also
reaches services that run with the control plane's rights — its storage, the gateway, the skill
fetcher, its peers' wake-ups, its bridges. Each probe here attacks one real component the check
starts in-process, from a probe program inside the real sandbox where the attack needs one
(:func:`hiclaw.sandbox.probes.run_services`), and judges the **outcome** on the host:

``result_link_swap``
    A local storage on the check's scratch root; the task folder bound in as a real grant is
    (:meth:`LocalStorage.grant`, by descriptor). Inside, ``result.md`` is swapped between a file
    and a link to the scratch ``secrets.toml`` while the host reads it through the storage API
    2000 times. EXPOSED if one read returned the canary.
``skills_folder_link``
    Inside, every way to turn the (read-only bound) skills folder into a link to another
    worker's home or to write into it; then the host installs a bundled skill the way the
    control plane does (:func:`hiclaw.control.skills.in_worker_skills`). EXPOSED if the folder
    changed, or anything landed outside the worker's skills.
``gateway_parameters``
    The embedded gateway, bridged in, with a direct and a litellm route to a loopback provider
    whose key is a canary. Inside, chat completions with ``api_base``/``base_url``/
    ``extra_headers``… aimed at a second (attacker's) recorder. EXPOSED if that recorder got
    anything, or the canary came back.
``ssrf_address_forms``
    The worker-facing fetch policy (built by :class:`SkillService` for your ``[skills]``) on
    ``127.1``, ``2130706433``, ``[::ffff:127.0.0.1]``, ``0x7f.1``, ``localhost.`` forms of a
    loopback "internal service". EXPOSED if that service saw a connection.
``worker_wakes_worker`` / ``turn_limit``
    A worker's real mention gate (:func:`hiclaw.worker.runtime.worker_gate`). EXPOSED if
    another worker's mention starts a turn, or if more turns than the limit start in one room.
``connection_flood``
    Inside, ~500 connections to a bridge (its socket, bypassing the in-sandbox forwarder), each
    with a request never finished, held. EXPOSED if the check's open descriptors grow past
    what the per-worker cap allows, or another worker's fresh connection gets no answer.

Every probe has a negative control as its baseline (the link target really is readable by a
plain ``open``, the installer really installs, the provider really gets the key, the address
forms really reach the service unguarded, the gate really wakes for the Manager, the flood really
outnumbers the cap…): without it a probe says ``unverified``, never ``isolated``.
``ssrf_address_forms``, ``worker_wakes_worker`` and ``turn_limit`` need no sandbox (the boundary
is in the control plane's code; a worker only chooses the input) and say so.

How a run goes: :class:`ServiceRig` sets the components up before the sandbox starts (they add
mounts, bridges and the ``services`` part of the probe plan); inside, the probe program asks the
host over a bridged coordinator port to act while each attack runs (read, install, count its
descriptors) — one JSON line each way, so nothing waits on a timer; the host-only probes run
meanwhile; :meth:`ServiceRig.results` judges. :class:`ServiceComponents` makes each attacked
component replaceable, so a test can show that a probe says EXPOSED against a weakened one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from hiclaw.sandbox.spec import Bridge, Mount

#: (probe name, what it tries) — the service probes, in display order.
SERVICE_PROBES = [
    ("result_link_swap", "make a control-plane read of its result.md follow a link to secrets.toml"),
    ("skills_folder_link", "swap its read-only skills folder for a link, so a skill install writes elsewhere"),
    ("gateway_parameters", "make the gateway send the provider key elsewhere (api_base, base_url, extra_headers)"),
    ("ssrf_address_forms", "make a skill fetch reach an internal port (127.1, 2130706433, [::ffff:127.0.0.1], …)"),
    ("worker_wakes_worker", "start another worker's turn with a mention (a worker-to-worker loop)"),
    ("turn_limit", "start more turns in one room than the per-room turn limit"),
    ("connection_flood", "hold ~500 bridge connections to exhaust the control plane's descriptors"),
]
#: Probes whose attack runs inside the sandbox (the others run on the host only).
IN_SANDBOX = frozenset({"result_link_swap", "skills_folder_link", "gateway_parameters", "connection_flood"})
TASK = "task-check"
OTHER = "other-worker"
SKILL = "find-skills"
READS = 2000
FLOOD_CONNECTIONS = 500
SSRF_FORMS = ("127.1", "2130706433", "[::ffff:127.0.0.1]", "0x7f.1", "localhost.")
RESULT_CONTENT = "# done\n"
#: Where the bwrap and docker backends show a worker its bridges' sockets.
SOCKETS_INSIDE = "/run/hiclaw"
NO_SANDBOX = "needs no sandbox: the boundary is the control plane's code, a worker only picks the input"
#: Loggers the attacks make talk (refused fetches, refused connections, silenced turns): quiet here.
_NOISY = ("hiclaw.registry", "hiclaw.gateway", "hiclaw.sandbox.bridge", "hiclaw.wakeup", "aiohttp", "LiteLLM", "httpx")


# --------------------------------------------------------------------------- the components attacked


def local_storage(control_home: Path) -> Any:
    """The default local storage on ``control_home/data`` (as ``hiclaw up`` makes it)."""
    from hiclaw.host import ComponentContext
    from hiclaw.plugins.storage.local import make_local_storage
    from hiclaw.plugins.storage.local.settings import LocalStorageSettings

    return make_local_storage(LocalStorageSettings(), ComponentContext(home=control_home, side="control"))


def skill_service(config: Any) -> Any:
    """The control plane's skill service for ``[skills]`` (its ``policy`` guards workers' fetches)."""
    from hiclaw.registry.service import SkillService

    return SkillService(config)


def mention_gate(spec: Any, user_id: Callable[[str], str], handler: Any, **kwargs: Any) -> Any:
    from hiclaw.worker.runtime import worker_gate

    return worker_gate(spec, user_id, handler, **kwargs)


@dataclass
class ServiceComponents:
    """Factories of the components the probes attack; a test swaps one for a deliberately
    weakened one to show the probe can say EXPOSED."""

    storage: Callable[[Path], Any] = local_storage
    skills: Callable[[Any], Any] = skill_service
    gate: Callable[..., Any] = mention_gate


@dataclass
class ServiceOptions:
    components: ServiceComponents = field(default_factory=ServiceComponents)
    #: Run only these probes (``None``: all).
    only: frozenset[str] | None = None

    def wants(self, name: str) -> bool:
        return self.only is None or name in self.only


def fd_count() -> int | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return None


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The attacks are refused with warnings on purpose; keep them out of the check's output."""
    handler = logging.NullHandler()
    loggers = [logging.getLogger(name) for name in _NOISY]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _result(reached: bool, detail: str) -> dict[str, Any]:
    return {"reached": bool(reached), "detail": detail}


# --------------------------------------------------------------------------- small loopback servers


class _Loopback:
    """A small asyncio server on ``127.0.0.1``; :meth:`close` cuts every connection it holds."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        try:
            await self.serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        handlers = list(self._open.values())
        for writer in list(self._open):
            writer.transport.abort()
        await asyncio.gather(*handlers, return_exceptions=True)  # each ends on its aborted connection


class Recorder(_Loopback):
    """An OpenAI-compatible stand-in that records every request (a provider, or an attacker's server)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def text(self) -> str:
        return json.dumps(self.requests)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive, as providers do
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            self.requests.append({"request": lines[0], "headers": headers, "body": body.decode(errors="replace")})
            reply = json.dumps({"id": "check", "object": "chat.completion", "created": 0, "model": "recorded",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "recorded"}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(reply), reply))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return


class Answering(_Loopback):
    """A service that answers a finished HTTP request with a canary and counts every connection
    (the SSRF target, and the service behind the flooded bridge). Connections that never finish
    their request are held until :meth:`close`."""

    def __init__(self) -> None:
        super().__init__()
        self.canary = secrets.token_hex(16)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = self.canary.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


async def _ask_http(connect: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]], timeout: float = 5) -> bytes:
    """Send a finished request over a fresh connection; the whole answer (``b""`` if none)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await connect
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return b""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """``relative path → (mode, size, mtime)`` of everything under ``root`` but ``skip`` (no link followed)."""
    found: dict[str, tuple[int, int, int]] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in [*dirs, *files]:
            path = here / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def _skills_changed(home: Path, skills: Path) -> list[str]:
    """What the worker changed about its skills folder, as the host sees it (no link followed)."""
    changed = []
    try:
        if not stat.S_ISDIR(skills.lstat().st_mode):
            changed.append(f"{skills.name}/ is no longer a folder")
    except FileNotFoundError:
        changed.append(f"{skills.name}/ is gone")
    for name, what in (("skills.moved", "moved away"), ("skills/planted.md", "a file written into it"),
                       ("skills/planted-link", "a link made in it")):
        if os.path.lexists(home / name):
            changed.append(what)
    return changed


# --------------------------------------------------------------------------- the rig


class ServiceRig:
    """The services the probes attack, set up around one check run (see the module doc).

    ``setup`` before the sandbox starts (it contributes mounts, bridges and the ``services``
    part of the in-sandbox plan); the in-sandbox program then drives the attacks step by step
    through the coordinator; ``host_only`` runs the host-side probes meanwhile; ``results``
    judges everything."""

    def __init__(self, canaries: Any, config: Any, options: ServiceOptions, backend: Any, worker: str) -> None:
        from hiclaw.config import HiclawConfig

        self.canaries = canaries
        self.config = config if config is not None else HiclawConfig()
        self.options = options
        self.backend = backend
        self.worker = worker
        self.work = canaries.scratch / "services"
        self.storage: Any = None
        self.inside_root: Path | None = None
        self.mounts: list[Mount] = []
        self.bridges: list[Bridge] = []
        self.found: dict[str, dict[str, Any]] = {}  # what the host saw, per step
        self.verdicts: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # host-only probes
        self.errors: dict[str, str] = {}
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        self._coordinator: asyncio.Server | None = None
        self._gateway_task: asyncio.Task[Any] | None = None
        self._gateway_start: Callable[[], Coroutine[Any, Any, Any]] | None = None
        self._plan: dict[str, Any] = {}
        self.flood: dict[str, Any] = {}
        self.gateway: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup

    async def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._coordinator = await asyncio.start_server(self._serve_step, "127.0.0.1", 0, limit=4 * 1024 * 1024)
        port = self._coordinator.sockets[0].getsockname()[1]
        self.bridges.append(Bridge(name="check", port=port))
        self._plan["coordinator_port"] = port
        if self.options.wants("result_link_swap") or self.options.wants("skills_folder_link"):
            await self._setup_storage()
        if self.options.wants("connection_flood"):
            await self._setup_flood()
        if self.options.wants("gateway_parameters"):
            await self._setup_gateway()

    async def _setup_storage(self) -> None:
        from hiclaw.protocols import NeutralPaths
        from hiclaw.storage import layout

        storage = self.storage = self.options.components.storage(self.canaries.control)
        self._closers.append(storage.stop)
        await storage.put(layout.task_spec(TASK), b"# the check's task\n")
        await storage.put(layout.task_result(TASK), RESULT_CONTENT.encode())
        access = await storage.grant(self.worker, rw=[layout.task_dir(TASK)], ro=[layout.task_spec(TASK)])
        inside = storage.root
        if isinstance(self.backend, NeutralPaths):  # as the provisioner shows it to a worker
            access, inside = access.relocated(self.backend.storage_root_inside), self.backend.storage_root_inside
        self.inside_root = Path(inside)
        self.mounts = [Mount(host_path=m.host_path, sandbox_path=m.sandbox_path, read_only=m.read_only, beneath=m.beneath)
                       for m in access.mounts]
        if self.options.wants("result_link_swap"):
            self._plan["link_swap"] = {"result": str(self.inside_root / layout.task_result(TASK)),
                                       "target": str(self.canaries.control / "secrets.toml"), "content": RESULT_CONTENT}
        if self.options.wants("skills_folder_link"):
            self._plan["skills"] = {"folder": str(self.inside_root / layout.agent_skills_dir(self.worker).rstrip("/")),
                                    "link_to": str(self.canaries.other_home)}

    async def _setup_flood(self) -> None:
        from hiclaw.sandbox.base import run_dir_for
        from hiclaw.sandbox.bridge import HostBridges, socket_name
        from hiclaw.sandbox.limits import raise_fd_limit

        raise_fd_limit()  # as the control plane does: the question is whether the cap holds, not the soft limit
        service = await Answering().start()
        self._closers.append(service.close)
        bridge = Bridge(name="flood", port=service.port)
        self.bridges.append(bridge)
        # Another worker's own bridge to the same service (what the flood must not starve),
        # with the backend's limits.
        run_dir = run_dir_for(self.canaries.control / "run" / "check-other", OTHER)
        settings = getattr(self.backend, "settings", None)
        other = HostBridges.from_settings(run_dir, [bridge], settings) if hasattr(settings, "bridge_max_connections") \
            else HostBridges(run_dir, [bridge])
        sockets = await other.start()
        self._closers.append(other.close)
        self.flood = {"service": service, "other": sockets["flood"], "cap": other.max_connections}
        self._plan["flood"] = {"socket": f"{SOCKETS_INSIDE}/{socket_name('flood')}", "port": service.port,
                               "count": FLOOD_CONNECTIONS}

    async def _setup_gateway(self) -> None:
        from pydantic import SecretStr

        from hiclaw.config import HiclawConfig
        from hiclaw.host import ComponentContext, PluginHost
        from hiclaw.plugins.gateways import embedded

        provider, attacker = await Recorder().start(), await Recorder().start()
        self._closers += [provider.close, attacker.close]
        key = f"sk-check-{secrets.token_hex(16)}"
        price = {"api_base": provider.url, "api_key_secret": "check_provider_key",
                 "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0}
        # One route the gateway calls itself, one through litellm (where the parameters leaked).
        models = {"check-direct": {"model": "openai/check-direct", **price},
                  "check-litellm": {"model": "hosted_vllm/check-litellm", **price}}
        config = HiclawConfig.model_validate({"models": models, "gateway": {"plugin": "embedded-gateway"}})
        host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                          secret_source=lambda name: SecretStr(key) if name == "check_provider_key" else None)
        port = _free_port()
        gateway = host.create("gateway", "embedded-gateway", {"port": port, "retries": 0, "retry_backoff_seconds": 0,
                                                      "upstream_timeout_seconds": 20, "connect_timeout_seconds": 5},
                              ComponentContext(home=self.work / "gateway", side="control", config=config))
        token = await gateway.mint_token(self.worker)

        async def stop() -> None:
            if self._gateway_task is not None:
                with contextlib.suppress(Exception):
                    await self._gateway_task
            await gateway.stop()
            gateway.store.close()

        self._closers.append(stop)
        self.bridges.append(Bridge(name="gateway", port=port))
        self._gateway_start = gateway.start
        await _ask_http(asyncio.open_connection("127.0.0.1", attacker.port))  # the recorder records?
        self.gateway = {"provider": provider, "attacker": attacker, "key": key, "recorder_works": bool(attacker.requests),
                        "aliases": sorted(models)}
        attacker.requests.clear()
        self._plan["gateway"] = {"base_url": f"http://127.0.0.1:{port}/v1", "token": token, "aliases": sorted(models),
                                 "attacker": attacker.url}

    def plan(self) -> dict[str, Any]:
        return self._plan

    def sandbox_started(self) -> None:
        """The sandbox runs: start the gateway now (litellm's import, ~3 s, overlaps the other
        attacks; the sandbox asks for the gateway last)."""
        if self._gateway_start is not None and self._gateway_task is None:
            self._gateway_task = asyncio.create_task(self._gateway_start())

    # ------------------------------------------------------------------ steps driven from inside

    async def _serve_step(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        step = "?"
        try:
            message = json.loads(await reader.readline())
            step = str(message.get("step"))
            action = {"link_swap": self._link_swap, "skills": self._skills, "flood_begin": self._flood_begin,
                      "flood_holding": self._flood_holding, "gateway": self._gateway_ready}.get(step)
            if action is None:
                reply: dict[str, Any] = {"error": f"unknown step {step!r}"}
            else:
                reply = await action(message)
        except Exception as exc:  # noqa: BLE001 - reported as the probe's error: "unverified", never "isolated"
            self.errors[step] = f"{type(exc).__name__}: {exc}"
            reply = {"error": self.errors[step]}
        with contextlib.suppress(OSError):
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        writer.close()

    async def _link_swap(self, message: dict[str, Any]) -> dict[str, Any]:
        from hiclaw.errors import HiclawError
        from hiclaw.storage import layout

        canary = self.canaries.values["secrets"].encode()
        outcomes: Counter[str] = Counter()
        for _ in range(READS):
            try:
                data = await self.storage.get(layout.task_result(TASK))
            except (HiclawError, OSError):
                outcomes["refused"] += 1
                continue
            outcomes["canary" if canary in data else "file" if data == RESULT_CONTENT.encode() else "other"] += 1
        self.found["result_link_swap"] = dict(outcomes)
        return {"reads": READS}

    async def _skills(self, message: dict[str, Any]) -> dict[str, Any]:
        from hiclaw.control.skills import in_worker_skills
        from hiclaw.storage import layout
        from hiclaw.storage.safefs import Beneath, LinkRefused

        root = Path(self.storage.root)
        home = root / layout.agent_home(self.worker).rstrip("/")
        skills = root / layout.agent_skills_dir(self.worker).rstrip("/")
        changed = _skills_changed(home, skills)
        before = _snapshot(root, skills)  # everything but the worker's skills: the install must touch nothing else
        service = self.options.components.skills(self.config.skills)
        install_error = ""
        try:
            await in_worker_skills(self.storage, self.worker, lambda target: service.seed(self.worker, [SKILL], target))
        except Exception as exc:  # noqa: BLE001 - refusing the install is a fine outcome; reported
            install_error = f"{type(exc).__name__}: {exc}"
        finally:
            await service.aclose()
        after = _snapshot(root, skills)
        landed = sorted(k for k in after if after[k] != before.get(k)) + sorted(set(before) - set(after))
        try:
            installed = Beneath(root).stat(f"{layout.agent_skills_dir(self.worker)}{SKILL}/SKILL.md") is not None
        except LinkRefused:
            installed = False
        self.found["skills_folder_link"] = {"changed": changed, "landed_outside": landed, "installed": installed,
                                            "install_error": install_error,
                                            "target_writable": os.access(self.canaries.other_home, os.W_OK)}
        return {"installed": installed}

    async def _flood_begin(self, message: dict[str, Any]) -> dict[str, Any]:
        other = await _ask_http(asyncio.open_unix_connection(str(self.flood["other"])))
        self.found["connection_flood"] = {"fds_before": fd_count(), "other_before": self.flood["service"].canary.encode() in other}
        return {"ok": True}

    async def _flood_holding(self, message: dict[str, Any]) -> dict[str, Any]:
        found = self.found.setdefault("connection_flood", {})
        opened, via = int(message.get("opened") or 0), str(message.get("via") or "")
        service: Answering = self.flood["service"]
        stats_of = getattr(self.backend, "bridge_stats", None)

        def handled() -> int:  # flood connections the host has dealt with (held or refused)
            stats = stats_of(self.worker) if callable(stats_of) else None
            if stats and "flood" in stats:
                return int(stats["flood"]["open"] + stats["flood"]["refused"])
            return service.connections

        loop = asyncio.get_running_loop()
        deadline, peak = loop.time() + 10, fd_count() or 0
        while handled() < opened and loop.time() < deadline:
            await asyncio.sleep(0.01)  # the host's own loop accepts them; sample its descriptors meanwhile
            peak = max(peak, fd_count() or 0)
        if via.startswith("bridge socket"):  # another worker: through its own bridge
            answer = await _ask_http(asyncio.open_unix_connection(str(self.flood["other"])))
        else:  # no bridges (process backend): another worker connects straight to the service
            answer = await _ask_http(asyncio.open_connection("127.0.0.1", service.port))
        peak = max(peak, fd_count() or 0)
        stats = stats_of(self.worker) if callable(stats_of) else None
        found.update(opened=opened, via=via, fds_peak=peak, fresh_answered=service.canary.encode() in answer,
                     stats=dict((stats or {}).get("flood") or {}) or None)
        return {"fresh_answered": found["fresh_answered"]}

    async def _gateway_ready(self, message: dict[str, Any]) -> dict[str, Any]:
        self.sandbox_started()  # (already, unless a caller drives the rig itself)
        assert self._gateway_task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._gateway_task), 60)
        except Exception as exc:  # noqa: BLE001 - the probe is then unverified, with the reason
            self.errors["gateway_parameters"] = f"the gateway did not start: {type(exc).__name__}: {exc}"
            return {"ready": False, "error": self.errors["gateway_parameters"]}
        return {"ready": True}

    # ------------------------------------------------------------------ host-only probes

    async def host_only(self) -> None:
        for name, probe in (("ssrf_address_forms", self._ssrf), ("worker_wakes_worker", self._wakes),
                            ("turn_limit", self._turn_limit)):
            if not self.options.wants(name):
                continue
            try:
                self.verdicts[name] = await probe()
            except Exception as exc:  # noqa: BLE001 - unverified, with the reason
                self.errors[name] = f"{type(exc).__name__}: {exc}"

    async def _ssrf(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from hiclaw.errors import HiclawError
        from hiclaw.registry.http import NOT_REACHABLE, HttpFetcher

        internal = await Answering().start()
        try:
            urls = [f"http://{form}:{internal.port}/" for form in SSRF_FORMS]
            reaching = []
            async with HttpFetcher(retries=1, timeout=3) as plain:  # unguarded: does each form get there at all?
                for url in urls:
                    before = internal.connections
                    with contextlib.suppress(HiclawError):
                        await plain.get(url, max_bytes=4096)
                    if internal.connections > before:
                        reaching.append(url)
            before, texts = internal.connections, []
            service = self.options.components.skills(self.config.skills)
            try:
                async with HttpFetcher(policy=service.policy, retries=1, timeout=3) as guarded:
                    for url in urls:  # what a worker's skills_add does, then the fetcher alone
                        try:
                            await service.add(self.worker, url, None, self.work / "ssrf-skills")
                            texts.append("fetched")
                        except HiclawError as exc:
                            texts.append(str(exc))
                        try:
                            await guarded.get(url, max_bytes=4096)
                            texts.append("fetched")
                        except HiclawError as exc:
                            texts.append(str(exc))
            finally:
                await service.aclose()
            reached = internal.connections - before
            leaked = [t for t in texts if internal.canary in t or t == "fetched"]
            same = all(NOT_REACHABLE in t for t in texts)
            sandbox = _result(bool(reached or leaked), (
                f"{len(urls)} address forms of 127.0.0.1:{internal.port}, through SkillService.add (a worker's "
                f"skills_add) and the worker-facing fetcher: {reached} connection(s) reached the internal service"
                + (f", {len(leaked)} answer(s) came back" if leaked else f"; all {len(texts)} attempts refused")
                + (f" as {NOT_REACHABLE!r}" if same else "") + f" — {NO_SANDBOX}"))
            unreached = [u for u in urls if u not in reaching]
            baseline = _result(bool(reaching), f"unguarded, {len(reaching)}/{len(urls)} forms reach the service"
                               + (f" ({', '.join(unreached)} not on this host)" if unreached else ""))
            return sandbox, baseline
        finally:
            await internal.close()

    def _gate(self, turns: list[Any]) -> tuple[Any, Callable[[str], str]]:
        from hiclaw.worker.spec import ComponentRef, GatewayRef, WorkerRuntimeSpec

        server = str((self.config.channel.settings or {}).get("server_name") or "hiclaw.local")

        def user_id(name: str) -> str:
            return f"@{name}:{server}"

        async def turn(message: Any) -> None:
            turns.append(message)

        async def no_assignment(message: Any) -> bool:
            return False  # none of these messages hands the worker one of its tasks

        spec = WorkerRuntimeSpec(  # what the provisioner hands a worker, but its secrets
            name=self.worker, channel=ComponentRef(plugin="check"), storage=ComponentRef(plugin="check"),
            gateway=GatewayRef(base_url="http://127.0.0.1:9/v1", token=secrets.token_urlsafe(8)),
            control_url="http://127.0.0.1:9", control_token=secrets.token_urlsafe(8),
            max_turns_per_room_per_minute=self.config.team.max_turns_per_room_per_minute)
        return self.options.components.gate(spec, user_id, turn, exempt=no_assignment), user_id

    @staticmethod
    def _mention(user_id: Callable[[str], str], sender: str, to: str, n: int, *, direct: bool = False) -> Any:
        from hiclaw.models import ChatMessage

        return ChatMessage(room_id="!check-room:check", event_id=f"$check-{sender}-{n}", sender=user_id(sender),
                           body=f"@{to} your turn ({n})", mentions=(user_id(to),), is_direct=direct)

    async def _wakes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        turns: list[Any] = []
        gate, uid = self._gate(turns)
        await gate(self._mention(uid, OTHER, self.worker, 1))
        await gate(self._mention(uid, OTHER, self.worker, 2, direct=True))
        by_worker = len(turns)
        await gate(self._mention(uid, "manager", self.worker, 3))
        sandbox = _result(by_worker > 0, f"{by_worker} of 2 mentions by {OTHER} (in a room, in a DM) started a turn "
                                         f"— {NO_SANDBOX}")
        baseline = _result(len(turns) > by_worker, "the same mention by the Manager starts a turn"
                           if len(turns) > by_worker else "the Manager's mention started no turn either")
        return sandbox, baseline

    async def _turn_limit(self) -> tuple[dict[str, Any], dict[str, Any]]:
        limit = self.config.team.max_turns_per_room_per_minute
        fed = limit + 5
        turns: list[Any] = []
        gate, uid = self._gate(turns)
        for n in range(fed):
            await gate(self._mention(uid, "manager", self.worker, n))
        limited = len(turns)
        admin_turns: list[Any] = []
        admin_gate, _ = self._gate(admin_turns)
        for n in range(fed):
            await admin_gate(self._mention(uid, "admin", self.worker, n))
        sandbox = _result(limited >= fed, f"{limited} of {fed} mentions in one room started a turn (limit {limit} per "
                                          f"room per minute, [team] max_turns_per_room_per_minute) — {NO_SANDBOX}")
        baseline = _result(len(admin_turns) == fed, f"{len(admin_turns)} of {fed} of the admin's (never limited) did")
        return sandbox, baseline

    # ------------------------------------------------------------------ verdicts

    def results(self, inside: dict[str, Any] | None) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Probe name → (what got through, the negative control), for every probe that ran."""
        inside = inside or {}
        judged = dict(self.verdicts)
        judges = {"result_link_swap": self._judge_link_swap, "skills_folder_link": self._judge_skills,
                  "gateway_parameters": self._judge_gateway, "connection_flood": self._judge_flood}
        step_of = {"result_link_swap": "link_swap", "skills_folder_link": "skills", "gateway_parameters": "gateway",
                   "connection_flood": "flood"}
        for name, judge in judges.items():
            if not self.options.wants(name):
                continue
            seen = inside.get(step_of[name]) or {}
            errors = [text for step, text in self.errors.items() if step == name or step.startswith(step_of[name])]
            error = "; ".join(errors) or seen.get("error")
            try:
                judged[name] = judge(seen)
            except (KeyError, TypeError, ValueError) as exc:
                judged[name] = (_result(False, "not run"), _result(False, f"not run: {error or exc}"))
            if error and not judged[name][0]["reached"]:
                judged[name] = (judged[name][0], _result(False, f"the probe failed: {error}"))
        for name in ("ssrf_address_forms", "worker_wakes_worker", "turn_limit"):
            if self.options.wants(name) and name not in judged:
                judged[name] = (_result(False, "not run"), _result(False, f"the probe failed: {self.errors.get(name)}"))
        return judged

    def _judge_link_swap(self, seen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        outcomes = self.found["result_link_swap"]
        swaps = int(seen.get("swaps") or 0)
        detail = (f"{READS} reads through the storage API while the worker swapped result.md {swaps} times: "
                  f"{outcomes.get('file', 0)} got the file, {outcomes.get('refused', 0)} refused the link, "
                  f"{outcomes.get('canary', 0)} returned secrets.toml")
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:  # does following the link really read it?
            link = Path(tmp) / "result.md"
            link.symlink_to(self.canaries.control / "secrets.toml")
            readable = self.canaries.values["secrets"].encode() in link.read_bytes()
        raced = outcomes.get("file", 0) > 0 and outcomes.get("refused", 0) + outcomes.get("canary", 0) > 0
        baseline = _result(readable and raced, ("a plain open() through the link reads the canary; " if readable else
                                                "the link target is not readable here; ")
                           + ("the reads met both the file and the link" if raced else
                              "the swaps never met the reads both ways (nothing raced)"))
        return _result(outcomes.get("canary", 0) > 0, detail), baseline

    def _judge_skills(self, seen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.found["skills_folder_link"]
        tried = ", ".join(f"{how}: {result}" for how, result in (seen.get("attempts") or {}).items())
        bad = [*found["changed"], *(f"the install wrote {p}" for p in found["landed_outside"][:5])]
        detail = (f"tried — {tried}; " if tried else "") + (
            "; ".join(bad) if bad else f"the skill was installed into agents/{self.worker}/skills/ only")
        if found["install_error"]:
            detail += f"; the install was refused ({found['install_error'][:160]})"
        baseline = _result(found["installed"] and found["target_writable"],
                           "the installer installs into the worker's skills, and the link target is writable by the host"
                           if found["installed"] else "the skill was not installed, so the install proved nothing")
        return _result(bool(bad), detail), baseline

    def _judge_gateway(self, seen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        gw = self.gateway
        if not seen.get("ready"):
            raise ValueError(seen.get("error") or "the gateway did not start")
        calls = seen["calls"]
        smuggled = [c for c in calls if c["case"] != "plain"]
        key, attacker, provider = gw["key"], gw["attacker"], gw["provider"]
        leaks = [f"{c['alias']} {c['case']}" for c in calls if key in c["text"]]
        at_provider = [r for r in provider.requests if any(mark in json.dumps(r).lower() for mark in
                                                          ("x-hiclaw-smuggled", "sk-attacker", attacker.url))]
        refused = sum(c["status"] == 400 and "unsupported_parameter" in c["text"] for c in smuggled)
        reached = bool(attacker.requests or leaks or at_provider)
        detail = (f"{len(smuggled)} smuggling calls on routes {', '.join(gw['aliases'])}: {refused} refused "
                  f"(400 unsupported_parameter); the attacker's server got {len(attacker.requests)} request(s)"
                  + ((", with the provider key" if key in attacker.text() else ", without the key") if attacker.requests else "")
                  + (f"; the key came back in: {', '.join(leaks)}" if leaks else "")
                  + (f"; {len(at_provider)} smuggled value(s) reached the provider" if at_provider else ""))
        plain = [c for c in calls if c["case"] == "plain"]
        keyed = sum(r["headers"].get("authorization") == f"Bearer {key}" for r in provider.requests)
        works = gw["recorder_works"] and len(plain) == len(gw["aliases"]) and all(c["status"] == 200 for c in plain) \
            and keyed >= len(gw["aliases"])
        baseline = _result(works, "a plain call on each route reaches the provider with the canary key, and the "
                                  "attacker's server records what reaches it" if works else
                           f"the control failed: plain calls {[c['status'] for c in plain]}, {keyed} keyed provider "
                           f"request(s), attacker recorder works: {gw['recorder_works']}")
        return _result(reached, detail), baseline

    def _judge_flood(self, seen: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        found = self.found["connection_flood"]
        cap = self.flood["cap"]
        # Each connection the host holds costs it three descriptors (the bridge's end, its relay,
        # the service's end); a cap that lets one worker hold half the flood bounds nothing.
        bound = 3 * min(cap, FLOOD_CONNECTIONS // 2) + 64
        before, peak = found.get("fds_before"), found.get("fds_peak")
        if before is None or not peak:
            raise ValueError("this system does not show a process's open descriptors")
        growth, opened = peak - before, int(found.get("opened") or 0)
        stats = found.get("stats")
        detail = (f"{opened} connections opened and held via {found.get('via')}: the check's open descriptors grew by {growth} "
                  f"(bound {bound}: 3 per held connection, at most {cap} held per bridge, + 64)"
                  + (f", the bridge held {stats['open']} and refused {stats['refused']}" if stats else "")
                  + f"; {seen.get('held', '?')} still open inside; another worker's fresh connection "
                  + ("was answered" if found.get("fresh_answered") else "got NO answer"))
        baseline = _result(opened > bound and bool(found.get("other_before")),
                           f"the flood outnumbers the bound ({opened} > {bound}) and the service answered before it"
                           if opened > bound else f"{opened} connections are too few to pass the bound ({bound}) "
                                                  "at one descriptor each")
        return _result(growth > bound or not found.get("fresh_answered"), detail), baseline

    async def close(self) -> None:
        if self._coordinator is not None:
            self._coordinator.close()
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()


@contextlib.asynccontextmanager
async def service_rig(canaries: Any, config: Any, options: ServiceOptions, backend: Any,
                      worker: str) -> AsyncIterator[ServiceRig]:
    rig = ServiceRig(canaries, config, options, backend, worker)
    try:
        with quiet_logs():
            await rig.setup()
            yield rig
    finally:
        await rig.close()
