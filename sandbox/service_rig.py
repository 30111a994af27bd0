"""The rig of the service probes: sets the attacked components up around one check run, and judges.

How a run goes: :class:`ServiceRig` sets the components up before the sandbox starts (each probe
module's ``setup_*`` adds mounts, bridges and its part of the ``services`` probe plan); inside,
the probe program asks the host over a bridged coordinator port to act while each attack runs
(read, install, count its descriptors) — one JSON line each way, so nothing waits on a timer; the
host-only probes run meanwhile; :meth:`ServiceRig.results` judges, with each probe module's
``judge_*``. The probes themselves live in :mod:`~hiclaw.sandbox.service_storage`,
:mod:`~hiclaw.sandbox.service_gateway`, :mod:`~hiclaw.sandbox.service_fetch`,
:mod:`~hiclaw.sandbox.service_gate` and :mod:`~hiclaw.sandbox.service_flood`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from hiclaw.sandbox import service_fetch, service_flood, service_gate, service_gateway, service_storage
from hiclaw.sandbox.service_components import ServiceOptions, Verdict, outcome
from hiclaw.sandbox.spec import Bridge, Mount

#: Loggers the attacks make talk (refused fetches, refused connections, silenced turns): quiet here.
_NOISY = ("hiclaw.registry", "hiclaw.gateway", "hiclaw.sandbox.bridge", "hiclaw.wakeup", "aiohttp", "LiteLLM", "httpx")
#: The steps the in-sandbox program asks the host for, over the coordinator.
_STEPS: dict[str, Callable[[ServiceRig, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "link_swap": service_storage.link_swap, "skills": service_storage.install_skill,
    "flood_begin": service_flood.flood_begin, "flood_holding": service_flood.flood_holding,
    "gateway": service_gateway.gateway_ready}
#: The probes that run on the host only, in the order they run.
_HOST_ONLY: tuple[tuple[str, Callable[[ServiceRig], Awaitable[Verdict]]], ...] = (
    ("ssrf_address_forms", service_fetch.ssrf_address_forms), ("worker_wakes_worker", service_gate.worker_wakes_worker),
    ("turn_limit", service_gate.turn_limit))
#: Probe name → (its judge, the step its in-sandbox part reports under), for the probes with a sandbox part.
_JUDGES: dict[str, tuple[Callable[[ServiceRig, dict[str, Any]], Verdict], str]] = {
    "result_link_swap": (service_storage.judge_link_swap, "link_swap"),
    "skills_folder_link": (service_storage.judge_skills, "skills"),
    "gateway_parameters": (service_gateway.judge_gateway, "gateway"),
    "connection_flood": (service_flood.judge_flood, "flood")}


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
        self.verdicts: dict[str, Verdict] = {}  # host-only probes
        self.errors: dict[str, str] = {}
        #: Undone in reverse order by :meth:`close`.
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        self._coordinator: asyncio.Server | None = None
        self.gateway_task: asyncio.Task[Any] | None = None
        self.gateway_start: Callable[[], Coroutine[Any, Any, Any]] | None = None
        #: The ``services`` part of the in-sandbox probe plan, one entry per step.
        self.sandbox_plan: dict[str, Any] = {}
        self.flood: dict[str, Any] = {}
        self.gateway: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup

    async def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._coordinator = await asyncio.start_server(self._serve_step, "127.0.0.1", 0, limit=4 * 1024 * 1024)
        port = self._coordinator.sockets[0].getsockname()[1]
        self.bridges.append(Bridge(name="check", port=port))
        self.sandbox_plan["coordinator_port"] = port
        if self.options.wants("result_link_swap") or self.options.wants("skills_folder_link"):
            await service_storage.setup_storage(self)
        if self.options.wants("connection_flood"):
            await service_flood.setup_flood(self)
        if self.options.wants("gateway_parameters"):
            await service_gateway.setup_gateway(self)

    def plan(self) -> dict[str, Any]:
        return self.sandbox_plan

    def sandbox_started(self) -> None:
        """The sandbox runs: start the gateway now (litellm's import, ~3 s, overlaps the other
        attacks; the sandbox asks for the gateway last)."""
        if self.gateway_start is not None and self.gateway_task is None:
            self.gateway_task = asyncio.create_task(self.gateway_start())

    # ------------------------------------------------------------------ steps driven from inside

    async def _serve_step(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        step = "?"
        try:
            message = json.loads(await reader.readline())
            step = str(message.get("step"))
            action = _STEPS.get(step)
            if action is None:
                reply: dict[str, Any] = {"error": f"unknown step {step!r}"}
            else:
                reply = await action(self, message)
        except Exception as exc:  # noqa: BLE001 - reported as the probe's error: "unverified", never "isolated"
            self.errors[step] = f"{type(exc).__name__}: {exc}"
            reply = {"error": self.errors[step]}
        with contextlib.suppress(OSError):
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
        writer.close()

    # ------------------------------------------------------------------ host-only probes

    async def host_only(self) -> None:
        for name, probe in _HOST_ONLY:
            if not self.options.wants(name):
                continue
            try:
                self.verdicts[name] = await probe(self)
            except Exception as exc:  # noqa: BLE001 - unverified, with the reason
                self.errors[name] = f"{type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ verdicts

    def results(self, inside: dict[str, Any] | None) -> dict[str, Verdict]:
        """Probe name → (what got through, the negative control), for every probe that ran."""
        inside = inside or {}
        judged = dict(self.verdicts)
        for name, (judge, step_of) in _JUDGES.items():
            if not self.options.wants(name):
                continue
            seen = inside.get(step_of) or {}
            errors = [text for step, text in self.errors.items() if step == name or step.startswith(step_of)]
            error = "; ".join(errors) or seen.get("error")
            try:
                judged[name] = judge(self, seen)
            except (KeyError, TypeError, ValueError) as exc:
                judged[name] = (outcome(False, "not run"), outcome(False, f"not run: {error or exc}"))
            if error and not judged[name][0]["reached"]:
                judged[name] = (judged[name][0], outcome(False, f"the probe failed: {error}"))
        for name, _ in _HOST_ONLY:
            if self.options.wants(name) and name not in judged:
                judged[name] = (outcome(False, "not run"), outcome(False, f"the probe failed: {self.errors.get(name)}"))
        return judged

    async def close(self) -> None:
        if self._coordinator is not None:
            self._coordinator.close()
        for closer in reversed(self.closers):
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
