"""Sandbox fixtures: real backends (bubblewrap, process) for tests of workers and plugins.

``sandbox_backend``
    ``backend = sandbox_backend("bwrap", **settings)`` creates a backend whose run dirs and
    logs live in the test's ``$HICLAW_HOME``; every worker it started is stopped at teardown.
    Skips the test (with the reason) when bubblewrap cannot run here.
``worker_spec``
    ``worker_spec(argv, name="w1", **fields)`` builds a :class:`~hiclaw.sandbox.spec.WorkerSpec`
    with a fresh home folder under the test's temporary directory.

``bwrap_unavailable()`` returns why bubblewrap cannot run here (``None`` if it can) — use it
in ``pytest.mark.skipif``. The fixtures are async-friendly: use them from ``async def`` tests
(pytest-asyncio, ``asyncio_mode = "auto"``).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hiclaw.sandbox.availability import bwrap_unavailable


@pytest.fixture
async def sandbox_backend(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory ``sandbox_backend(name="bwrap", **settings)`` → a started-nothing backend."""
    from types import SimpleNamespace

    from hiclaw.host import PluginHost

    home = tmp_path / "sandbox-home"
    home.mkdir(exist_ok=True)
    host = PluginHost(load_entry_points=False)
    made: list[Any] = []

    def make(name: str = "bwrap", **settings: Any) -> Any:
        if name == "bwrap" and (reason := bwrap_unavailable()):
            pytest.skip(reason)
        ctx = SimpleNamespace(home=home, side="control", agent=None, config=None, secrets={}, host=host)
        backend = host.create("sandbox", name, settings, ctx)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close(timeout=5)


@pytest.fixture
def worker_spec(tmp_path: Path) -> Callable[..., Any]:
    """Factory ``worker_spec(argv, name="w1", **fields)`` with a fresh home folder."""
    from hiclaw.sandbox.spec import WorkerSpec

    def make(argv: list[str], name: str = "w1", **fields: Any) -> WorkerSpec:
        if "home" not in fields:
            home = tmp_path / "agents" / name
            home.mkdir(parents=True, exist_ok=True)
            fields["home"] = home
        return WorkerSpec(name=name, argv=argv, **fields)

    return make
