"""pytest fixtures shipped with hiclaw (registered through the ``pytest11`` entry point).

Keep this module import-light: it is loaded by every pytest run in an environment where hiclaw
is installed. Heavy imports happen inside fixtures.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hiclaw.host import PluginHost
from hiclaw.testing.matrix import matrix_control, synapse  # noqa: F401
from hiclaw.testing.registry import skills_registry  # noqa: F401
from hiclaw.testing.gateway import gateway, gateway_token, scripted_model  # noqa: F401
from hiclaw.testing.s3 import minio_admin_server, s3_server, s3_server_auth  # noqa: F401
from hiclaw.testing.sandbox import sandbox_backend, worker_spec  # noqa: F401


@pytest.fixture
def hiclaw_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty ``$HICLAW_HOME``; ``HICLAW_*`` and ``SKILLS_*`` variables are cleared."""
    for name in list(os.environ):
        if name.startswith(("HICLAW_", "SKILLS_")):
            monkeypatch.delenv(name)
    home = tmp_path / "hiclaw-home"
    home.mkdir()
    monkeypatch.setenv("HICLAW_HOME", str(home))
    yield home


@pytest.fixture
def plugin_host() -> Callable[..., PluginHost]:
    """Factory: ``plugin_host(("name", plugin), ..., defaults=False, **kwargs)``."""

    def make(*plugins: tuple[str, object], defaults: bool = False, **kwargs: object) -> PluginHost:
        return PluginHost(load_defaults=defaults, load_entry_points=False, plugins=plugins, **kwargs)  # type: ignore[arg-type]

    return make
