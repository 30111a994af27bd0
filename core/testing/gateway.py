"""Gateway fixtures: the scripted model server and the real embedded gateway on free ports.

Both run in a background thread with their own event loop, so sync and async tests (and
session-scoped fixtures) can use them over HTTP like any client would.

``scripted_model`` (session)
    A :class:`ScriptedModel` serving :data:`DEFAULT_SCENARIO` (every agent gets
    ``"[scripted] <agent> #<call>: <input>"``). ``scripted_model.hits(agent)`` counts requests.
``gateway`` (session)
    A :class:`GatewayHarness`: the embedded gateway in front of ``scripted_model`` with the
    aliases ``smart`` (falls back to ``fast``), ``fast`` and ``cheap`` (see :data:`TEST_PRICES`).
``gateway_token`` (function)
    A freshly minted consumer of ``gateway``: ``.name``, ``.token``, ``.base_url``.

For your own scenario or settings use the context managers :func:`running_scripted_model` and
:func:`running_gateway` directly; :func:`start_listening_process` runs ``hiclaw gateway serve`` or
``hiclaw model serve-scripted`` as a real process and returns the URL it printed.
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import selectors
import subprocess
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

T = TypeVar("T")

DEFAULT_SCENARIO: dict[str, Any] = {
    "name": "echo",
    "models": ["scripted-smart", "scripted-fast", "scripted-cheap"],
    "agents": {"*": {"default": {"text": "[scripted] {{agent}} #{{call}}: {{input}}"}}},
}
#: USD per million tokens (input, output) of the test aliases.
TEST_PRICES = {"smart": (3.0, 15.0), "fast": (0.5, 1.5), "cheap": (0.25, 0.25)}
SCRIPTED_KEY_SECRET = "scripted_api_key"


class LoopThread:
    """An event loop running in a daemon thread; :meth:`run` executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def start_listening_process(argv: Sequence[str], env: Mapping[str, str], log_path: Path, *,
                            timeout: float = 30) -> tuple[subprocess.Popen[str], str]:
    """Start a server command; return it and the URL from its ``… listening on URL`` line.

    Its stderr (the log) goes to ``log_path``. Raises with the log's tail if it does not start."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            line = proc.stdout.readline()
            if "listening on " in line:
                return proc, line.rsplit("listening on ", 1)[1].strip()
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise RuntimeError(f"{' '.join(argv[1:4])} did not start: {log_path.read_text()[-2000:]}")


@dataclass
class ScriptedModel:
    server: Any  # hiclaw.scripted.ScriptedModelServer
    thread: LoopThread

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def stats(self) -> dict[str, Any]:
        return self.thread.run(_value(self.server.engine.stats()))

    def hits(self, agent: str | None = None) -> int:
        """Requests answered so far (for one agent, or all)."""
        stats = self.stats()
        if agent is None:
            return int(stats["requests"])
        return int(stats["agents"].get(agent, {}).get("calls", 0))

    def requests(self, agent: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.thread.run(_value(list(self.server.recent))) if agent is None or r["agent"] == agent]

    def reset(self) -> None:
        self.thread.run(_value(self.server.engine.reset()))


async def _value(value: T) -> T:
    return value


@contextmanager
def running_scripted_model(scenario: Any = None, *, api_key: str | None = None) -> Iterator[ScriptedModel]:
    """Serve ``scenario`` (a Scenario, a dict, or a file path; default :data:`DEFAULT_SCENARIO`)."""
    from hiclaw.scripted import Scenario, load_scenario, parse_scenario
    from hiclaw.scripted.server import ScriptedModelServer

    if scenario is None:
        scenario = DEFAULT_SCENARIO
    if isinstance(scenario, str | Path):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        scenario = parse_scenario(scenario)
    thread = LoopThread("scripted-model")
    server = ScriptedModelServer(scenario, api_key=api_key)
    try:
        thread.run(server.start())
        yield ScriptedModel(server, thread)
    finally:
        thread.run(server.stop())
        thread.close()


def scripted_aliases(base_url: str, *, key_secret: str | None = SCRIPTED_KEY_SECRET) -> dict[str, dict[str, Any]]:
    """``[models]`` for ``smart`` → ``fast`` fallback and ``cheap``, all served by the scripted model."""
    return {
        alias: {"model": f"openai/scripted-{alias}", "api_base": base_url, "api_key_secret": key_secret,
                "input_cost_per_mtok": price[0], "output_cost_per_mtok": price[1],
                **({"fallback": "fast"} if alias == "smart" else {})}
        for alias, price in TEST_PRICES.items()
    }


@dataclass
class MintedToken:
    name: str
    token: str
    base_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class GatewayHarness:
    """A running embedded gateway, with helpers that go through its Python API."""

    _names = itertools.count(1)

    def __init__(self, gateway: Any, thread: LoopThread, home: Path) -> None:
        self.gateway = gateway
        self.thread = thread
        self.home = home

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    @property
    def db_path(self) -> Path:
        return self.gateway.store.path

    def mint(self, name: str | None = None, *, models: Sequence[str] | None = None,
             budget_usd: float | None = None) -> MintedToken:
        name = name or f"consumer-{next(self._names)}-{secrets.token_hex(3)}"
        token = self.thread.run(self.gateway.mint_token(name, models=models, budget_usd=budget_usd))
        return MintedToken(name, token, self.base_url)

    def revoke(self, name: str) -> None:
        self.thread.run(self.gateway.revoke_token(name))

    def set_budget(self, *, usd: float | None, consumer: str | None = None, project: str | None = None) -> None:
        self.thread.run(self.gateway.set_budget(consumer=consumer, project=project, usd=usd))

    def usage(self, by: str = "consumer", since: Any = None, until: Any = None) -> list[dict[str, Any]]:
        return self.thread.run(self.gateway.usage(by=by, since=since, until=until))

    def ledger(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.thread.run(self.gateway.ledger(limit))


@contextmanager
def running_gateway(home: Path, upstream_base_url: str | None = None, *, models: Mapping[str, Any] | None = None,
                    settings: Mapping[str, Any] | None = None, secrets_values: Mapping[str, str] | None = None,
                    plugins: Sequence[tuple[str, object]] = ()) -> Iterator[GatewayHarness]:
    """Start the embedded gateway (created through a real PluginHost) on a free port.

    ``models`` defaults to :func:`scripted_aliases` over ``upstream_base_url``; ``secrets_values``
    defaults to a random key for ``scripted_api_key``; ``plugins`` are extra ``(name, plugin)``
    pairs loaded into the host (e.g. one implementing ``hiclaw_budget_warning``).
    """
    from hiclaw.config import HiclawConfig
    from hiclaw.host import ComponentContext, PluginHost
    from hiclaw.plugins.gateways import embedded

    if models is None:
        if upstream_base_url is None:
            raise ValueError("running_gateway needs upstream_base_url or models")
        models = scripted_aliases(upstream_base_url)
    values = dict(secrets_values) if secrets_values is not None else {SCRIPTED_KEY_SECRET: "sk-test-" + secrets.token_hex(16)}
    config = HiclawConfig.model_validate({"models": dict(models), "gateway": {"plugin": "embedded-gateway"}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded), *plugins],
                      secret_source=lambda name: SecretStr(values[name]) if name in values else None)
    ctx = ComponentContext(home=home, side="control", config=config)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0, "retry_backoff_seconds": 0, **(settings or {})}, ctx)
    thread = LoopThread("gateway")
    try:
        thread.run(gateway.start())
        yield GatewayHarness(gateway, thread, home)
    finally:
        thread.run(gateway.stop())
        gateway.store.close()
        thread.close()


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def scripted_model() -> Iterator[ScriptedModel]:
    """The scripted model server with :data:`DEFAULT_SCENARIO`, for the whole session."""
    with running_scripted_model() as model:
        yield model


@pytest.fixture(scope="session")
def gateway(scripted_model: ScriptedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """The embedded gateway in front of ``scripted_model``, for the whole session."""
    with running_gateway(tmp_path_factory.mktemp("gateway-home"), scripted_model.base_url) as harness:
        yield harness


@pytest.fixture
def gateway_token(gateway: GatewayHarness) -> MintedToken:
    """A new consumer of ``gateway`` (all aliases, no budget)."""
    return gateway.mint()
