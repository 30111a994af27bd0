"""A real private skills registry for tests: ``hiclaw registry serve`` in-process, on a free port.

``skills_registry`` (fixture) — a :class:`RunningRegistry` over an empty temporary folder::

    def test_my_plugin_installs_a_skill(skills_registry, tmp_path):
        skills_registry.publish("acme", "tools", "pdf-tools", description="Read PDFs.")
        client = RegistryClient(skills_registry.url)
        ...

The server runs on its own event loop in a background thread, so sync and async tests can use
it alike. ``publish`` writes the skill folder and re-indexes; ``url`` is the base URL to use as
``SKILLS_API_URL``.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest


def skill_md(name: str, description: str, body: str = "", **extra: str) -> str:
    """A SKILL.md text with the given frontmatter."""
    import yaml

    front = yaml.safe_dump({"name": name, "description": description, **extra}, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n{body or f'# {name}' + chr(10)}"


class BackgroundServer:
    """Any aiohttp application served on 127.0.0.1:<free port> by a background thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1") -> None:
        self.app = app
        self.url = ""
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hiclaw-test-server", daemon=True)

    def _run(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, 0)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://{self._host}:{port}"
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class RunningRegistry(BackgroundServer):
    """A private registry serving ``root`` at ``url`` until :meth:`stop`."""

    def __init__(self, root: Path, *, host: str = "127.0.0.1") -> None:
        from hiclaw.registry.server import RegistryApp

        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = RegistryApp(root)
        super().__init__(self.registry.app, host=host)

    def start(self, timeout: float = 10.0) -> RunningRegistry:
        super().start(timeout)
        return self

    def reload(self) -> None:
        self.registry.reload()

    @property
    def problems(self) -> list[str]:
        return self.registry.index.problems

    def publish(
        self,
        owner: str,
        repo: str,
        name: str,
        *,
        description: str | None = None,
        body: str = "",
        files: Mapping[str, str | bytes] | None = None,
        folder: str | None = None,
        skill_md_text: str | None = None,
    ) -> Path:
        """Write ``<owner>/<repo>/<folder or name>/`` (SKILL.md + ``files``) and re-index."""
        path = self.root / owner / repo / (folder or name)
        path.mkdir(parents=True, exist_ok=True)
        text = skill_md_text if skill_md_text is not None else skill_md(name, description or f"The {name} skill.", body)
        (path / "SKILL.md").write_text(text, encoding="utf-8")
        for rel, content in (files or {}).items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        self.reload()
        return path


@pytest.fixture
def skills_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A running private skills registry over an empty temporary folder (see module docstring)."""
    registry = RunningRegistry(tmp_path_factory.mktemp("skills-registry")).start()
    try:
        yield registry
    finally:
        registry.stop()
