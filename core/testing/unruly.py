"""The unruly model for tests: a misbehaving provider on a free port, in a background thread.

    from hiclaw.testing.unruly import running_unruly_model

    def test_worker_survives_rate_limits(tmp_path):
        mix = {"agents": {"sam": {"kinds": {"http_429": {"rate": 0.3, "retry_after": 0}}}}}
        with running_unruly_model(SCENARIO, mix, seed=7) as model:
            ...                                   # point a gateway at model.base_url
            assert model.calls("sam") <= 1.5 * clean_calls
            assert model.kinds("sam")["http_429"] >= 1

The fixture ``unruly_model`` is a factory with the same arguments, stopped at the end of the
test: ``model = unruly_model(SCENARIO, mix, seed=3)``. The config format (``mix``) is in
``docs/scripted-model.md`` ("The unruly model").
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hiclaw.testing.gateway import LoopThread


async def _on_loop(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)  # runs on the server's loop, never beside one of its requests


@dataclass
class UnrulyModel:
    """A running unruly model server; every helper reads its state on the server's own loop."""

    server: Any  # hiclaw.scripted.unruly.UnrulyModelServer
    thread: LoopThread

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def url(self) -> str:
        """Without ``/v1``: where ``/_unruly/log`` and ``/_unruly/stats`` are."""
        return self.server.url

    def stats(self) -> dict[str, Any]:
        """Per agent: calls, clean, misbehaved, kinds, longest_streak (see ``GET /_unruly/stats``)."""
        return self.thread.run(_on_loop(self.server.stats))

    def log(self, agent: str | None = None) -> list[dict[str, Any]]:
        """Every call (of one agent, or all): ``{agent, call, kind, reason, status, stream, base, ...}``."""
        return self.thread.run(_on_loop(self.server.log, agent))

    def calls(self, agent: str | None = None) -> int:
        """Every call the model got, clean or not."""
        stats = self.stats()
        return int(stats["calls"] if agent is None else stats["agents"].get(agent, {}).get("calls", 0))

    def kinds(self, agent: str | None = None) -> dict[str, int]:
        """Misbehaviours applied so far, by kind."""
        stats = self.stats()
        return dict(stats["kinds"] if agent is None else stats["agents"].get(agent, {}).get("kinds", {}))

    def sequence(self, agent: str) -> list[str | None]:
        """The kind applied to each call of ``agent`` in order (None: clean)."""
        return [entry["kind"] for entry in self.log(agent)]

    def base_stats(self) -> dict[str, Any]:
        """The base scenario's own stats (it counts only the calls it answered)."""
        return self.thread.run(_on_loop(self.server.engine.stats))

    def reset(self) -> None:
        self.thread.run(_on_loop(self.server.reset))


def _config(mix: Any, seed: int | None) -> Any:
    from hiclaw.scripted.unruly import UnrulyConfig, load_unruly_config, parse_unruly_config

    if isinstance(mix, str | Path):
        config = load_unruly_config(mix)
    elif isinstance(mix, UnrulyConfig):
        config = mix
    else:
        config = parse_unruly_config(mix or {})
    return config if seed is None else config.model_copy(update={"seed": seed})


def _scenario(scenario: Any) -> Any:
    from hiclaw.scripted import Scenario, load_scenario, parse_scenario

    if scenario is None or isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, str | Path):
        return load_scenario(scenario)
    return parse_scenario(scenario)


def unruly_server(scenario: Any = None, mix: Any = None, *, seed: int | None = None, api_key: str | None = None) -> Any:
    """An :class:`~hiclaw.scripted.unruly.UnrulyModelServer` (not started) from the same arguments as
    :func:`running_unruly_model` — for code that runs it on its own loop, as ``running_team`` does."""
    from hiclaw.scripted.unruly.server import UnrulyModelServer

    return UnrulyModelServer(_config(mix, seed), _scenario(scenario), api_key=api_key)


@contextmanager
def running_unruly_model(scenario: Any = None, mix: Any = None, *, seed: int | None = None,
                         api_key: str | None = None) -> Iterator[UnrulyModel]:
    """Serve ``scenario`` (a Scenario, a dict or a file; default: the config's, else every agent says
    "ok") misbehaving per ``mix`` (an UnrulyConfig, a dict or a file; default: never). ``seed``
    overrides the config's."""
    server = unruly_server(scenario, mix, seed=seed, api_key=api_key)
    thread = LoopThread("unruly-model")
    try:
        thread.run(server.start())
        yield UnrulyModel(server, thread)
    finally:
        thread.run(server.stop())
        thread.close()


@pytest.fixture
def unruly_model() -> Iterator[Callable[..., UnrulyModel]]:
    """Factory: ``unruly_model(scenario=None, mix=None, *, seed=None, api_key=None)``; every model
    it starts is stopped when the test ends."""
    with ExitStack() as stack:
        def start(scenario: Any = None, mix: Any = None, *, seed: int | None = None,
                  api_key: str | None = None) -> UnrulyModel:
            return stack.enter_context(running_unruly_model(scenario, mix, seed=seed, api_key=api_key))

        yield start
