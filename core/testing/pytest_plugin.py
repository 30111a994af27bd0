"""pytest fixtures shipped with hiclaw (registered through the ``pytest11`` entry point).

Keep this module import-light: it is loaded by every pytest run in an environment where hiclaw
is installed. Heavy imports happen inside fixtures.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hiclaw.host import ENTRY_POINTS_ENV, PluginHost
from hiclaw.testing.env import clean_env
from hiclaw.testing.gateway import gateway, gateway_token, scripted_model  # noqa: F401
from hiclaw.testing.matrix import matrix_control, synapse  # noqa: F401
from hiclaw.testing.registry import skills_registry  # noqa: F401
from hiclaw.testing.s3 import minio_admin_server, s3_server, s3_server_auth  # noqa: F401
from hiclaw.testing.sandbox import sandbox_backend, worker_spec  # noqa: F401
from hiclaw.testing.smallmodel import small_model  # noqa: F401 - registered as a fixture by being imported here
from hiclaw.testing.unruly import unruly_model  # noqa: F401 - registered as a fixture by being imported here


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "hiclaw_entry_point_plugins",
        "installed hiclaw plugins (entry-point names, comma-separated, or *) that the test session's "
        "hosts and teams load; default: none, so what happens to be installed stays out of the tests",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Like llm's `_called_from_test`: installed plugins stay out of the suite's teams unless asked
    # for. An environment variable, because teams run `hiclaw up` and workers as subprocesses.
    os.environ.setdefault(ENTRY_POINTS_ENV, str(config.getini("hiclaw_entry_point_plugins")))


@pytest.fixture
def hiclaw_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty ``$HICLAW_HOME``; ``HICLAW_*`` and ``SKILLS_*`` variables are cleared
    (but the session's choice of installed plugins, see :func:`hiclaw.testing.clean_env`)."""
    kept = clean_env()
    for name in list(os.environ):
        if name.startswith(("HICLAW_", "SKILLS_")) and name not in kept:
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
