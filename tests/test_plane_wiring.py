"""The control plane as the composition root: its parts exist from start() on (reading one before
says so), and stop() undoes exactly what start-up did, in reverse — also after a start that failed
half-way, on real components (Synapse, the embedded gateway, local storage, the control API)."""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from urllib.parse import urlparse

import pytest

from hiclaw.config import SandboxConfig, Secrets
from hiclaw.control.plane import ControlPlane, NotStartedError
from hiclaw.errors import PluginError
from hiclaw.testing.team import team_config


def cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def refused(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) != 0


def test_a_part_read_before_start_says_so(tmp_path):
    plane = ControlPlane(tmp_path, config=team_config("http://127.0.0.1:9/v1"), secrets=Secrets.load(tmp_path, environ={}))
    with pytest.raises(NotStartedError, match="the control plane has no engine before it started"):
        _ = plane.engine
    assert getattr(plane, "scheduler", None) is None  # optional until then, for code that asks


async def test_a_start_that_fails_half_way_is_undone_in_reverse_and_nothing_else_is_touched(tmp_path):
    config = team_config("http://127.0.0.1:9/v1")
    config.sandbox = SandboxConfig(plugin="no-such-sandbox")
    plane = ControlPlane(tmp_path, config=config, secrets=Secrets.load(tmp_path, environ={}))
    lines: list[str] = []
    plane.progress = lines.append
    with pytest.raises(PluginError, match="no-such-sandbox"):
        await plane.start()
    gateway, api = plane.gateway.base_url, plane.api.url
    assert not refused(gateway) and not refused(api)  # started before the sandbox was asked for
    homeserver = plane.channel.service_urls()["homeserver"]
    await plane.stop()
    assert refused(gateway) and refused(api) and refused(homeserver)
    # The homeserver was still booting when the start failed: stop waited for the boot and stopped
    # what it started — no boot left running, no Synapse of this home left behind.
    booting = [t for t in asyncio.all_tasks() if "start_services" in repr(t.get_coro()) and not t.done()]
    assert booting == []
    assert [pid for pid in os.listdir("/proc") if pid.isdigit() and str(tmp_path) in cmdline(pid)] == []
    with pytest.raises(sqlite3.ProgrammingError):
        plane.state.workers()  # closed
    with pytest.raises(NotStartedError):
        _ = plane.supervisor  # never made: nothing to stop
    await plane.stop()  # twice is harmless
