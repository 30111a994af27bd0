"""Shared test configuration. Component fixtures live in ``hiclaw.testing`` (shipped to plugin authors)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
#: An MCP server nobody here wrote (the MCP project's reference server, npm), pinned.
PACKAGE, VERSION = "@modelcontextprotocol/server-everything", "2026.8.31"


@pytest.fixture(scope="session")
def everything() -> Path:
    """The server's entry point, installed once per machine (npm's cache makes later installs offline)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed (scripts/setup.sh --test installs them)")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hiclaw-tests" / f"server-everything-{VERSION}"
    entry = root / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
    if not entry.exists():
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(root), f"{PACKAGE}@{VERSION}"],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0 or not entry.exists():
            pytest.skip(f"npm could not fetch {PACKAGE}@{VERSION}: {done.stderr.strip()[-300:]}")
    return entry


@pytest_asyncio.fixture
async def remote_tracker(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """``await remote_tracker(SECRET)``: the tests' MCP tracker as a remote Streamable HTTP server
    that wants ``Authorization: Bearer SECRET`` (issues in ``tmp_path/issues.jsonl``); its URL,
    once it answers. Stopped after the test."""
    import httpx2

    from hiclaw.testing.team import free_port
    from hiclaw.waiting import wait_until

    processes: list[subprocess.Popen[bytes]] = []

    async def start(secret: str) -> str:
        url = f"http://127.0.0.1:{free_port()}/mcp"
        process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "mcp_servers" / "tracker.py"), "http",
                                    url.rsplit(":", 1)[1].split("/")[0], secret],
                                   env={"TRACKER_FILE": str(tmp_path / "issues.jsonl"), "PATH": "/usr/bin:/bin"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(process)

        async def answering() -> bool:
            assert process.poll() is None, f"the remote tracker exited with {process.returncode}"
            try:
                async with httpx2.AsyncClient() as http:
                    return (await http.post(url, json={})).status_code == 401
            except httpx2.HTTPError:
                return False

        await wait_until(answering, timeout=60, what="the remote tracker")
        return url

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def hiclaw_cli() -> Path:
    """Path of the ``hiclaw`` console script of the environment running the tests."""
    return VENV_BIN / "hiclaw"
