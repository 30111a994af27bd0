"""Attack 5 of issue 14 — a connection flood through a worker's bridges — and ``network = true``.

A hostile worker (``mallory``, a real bwrap sandbox in a live team) runs, with its own
``run_command`` tool, a program that opens thousands of connections to its bridges — through the
in-sandbox forwarder of the gateway port and straight to the bridge sockets of the gateway, the
control API and the homeserver — each with an HTTP request it never finishes, and holds them.
Before the fix the control plane accepted them all and ran out of descriptors, so its control
API and every other worker's model calls timed out. Now each bridge holds at most
``bridge_max_connections`` (64) of one worker's connections: the test asserts the control
plane's descriptors stay bounded, the control API answers, and another worker (``bob``) still
gets its model calls through — while the flood holds. The team runs with the soft
``RLIMIT_NOFILE`` most machines start with (1024), which the control plane raises itself.

The timeouts (first byte, idle) and the per-worker cap are also attacked on a real
:class:`~hiclaw.sandbox.bridge.HostBridges` in front of a real loopback server.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from hiclaw.sandbox.bridge import HostBridges
from hiclaw.sandbox.spec import Bridge
from hiclaw.storage import layout
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import Team, running_team, wait_until

PY = sys.executable
ATTACKER, VICTIM, NETWORKED = "mallory", "bob", "netty"
needs_bwrap = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))
module_loop = pytest.mark.asyncio(loop_scope="module")
#: The usual soft open-file limit; the flood needed ~480 connections to exhaust it.
SOFT_NOFILE = 1024

#: Runs inside the attacker's sandbox (in the background): open, hold, report to ./flood.json.
FLOOD = r'''
import json, os, socket, sys, time
targets = json.loads(sys.argv[1])  # [name, "unix" | "tcp", address, count]
socks, opened, failed = [], {}, {}
give_up = time.monotonic() + 60
for name, kind, address, count in targets:
    opened[name] = failed[name] = 0
    while opened[name] < count and time.monotonic() < give_up:  # a full backlog: try again
        s = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
        s.settimeout(1)
        try:
            s.connect(address if kind == "unix" else tuple(address))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
            s.setblocking(False)
            socks.append((name, s))
            opened[name] += 1
        except OSError:
            s.close()
            failed[name] += 1
            time.sleep(0.001)

def alive(s):
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False

def report(phase):
    held = {name: 0 for name in opened}
    for name, s in socks:
        held[name] += alive(s)
    with open("flood.tmp", "w") as fh:
        json.dump({"phase": phase, "opened": opened, "failed": failed, "held": held}, fh)
    os.replace("flood.tmp", "flood.json")

end = time.monotonic() + 240
while not os.path.exists("stop-flood") and time.monotonic() < end:
    report("holding")
    time.sleep(0.2)
for _, s in socks:
    s.close()
report("stopped")
'''


def scenario(flood_command: str) -> dict:
    return {"agents": {
        ATTACKER: {"rules": [
            {"when": {"role": "user", "contains": "flood"},
             "tool_calls": [{"name": "run_command", "arguments": {"command": flood_command}}]},
            {"when": {"tool_result": "run_command"}, "text": "flooding"},
        ], "default": {"text": "ok"}},
        VICTIM: {"default": {"text": "bob heard: {{input}}"}},
        NETWORKED: {"default": {"text": "netty heard: {{input}}"}},
        "*": {"default": {"text": "ok"}},
    }}


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def flood_targets(team_ports: dict[str, int]) -> list:
    return [["gateway-tcp", "tcp", ["127.0.0.1", team_ports["gateway"]], 1000],
            ["gateway", "unix", "/run/hiclaw/gateway.sock", 1000],
            ["control", "unix", "/run/hiclaw/control.sock", 500],
            ["homeserver", "unix", "/run/hiclaw/homeserver.sock", 500]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(tmp_path_factory) -> AsyncIterator[Team]:
    if bwrap_unavailable() is not None:
        pytest.skip(str(bwrap_unavailable()))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SOFT_NOFILE, hard), hard))  # as on most machines
    home = tmp_path_factory.mktemp("flood") / "home"
    # The flood's targets are only known once the team runs: the command reads them from a file.
    command = (f"cat > flood.py <<'PYEOF'\n{FLOOD}\nPYEOF\n"
               f"nohup {PY} flood.py \"$(cat targets.json)\" > flood.log 2>&1 &\necho started")
    try:
        async with running_team(home, scenario(command), sandbox="bwrap") as live:
            for name in (ATTACKER, VICTIM):
                await live.plane.provisioner.create_worker(name, role="tester")
            yield live
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def workspace(team: Team, name: str) -> Path:
    return Path(team.plane.storage.local_path(layout.agent_workspace(name).rstrip("/")))


async def in_room(team: Team, name: str) -> str:
    room = await team.plane.chat.worker_room(name)
    await wait_until(lambda: room in team.admin.room_names, what=f"the admin in {name}'s room")
    return room


async def control_status(team: Team) -> tuple[int, float]:
    """The admin's ``GET /v1/status`` (what `hiclaw status` does): status code and seconds taken."""
    doc = json.loads((team.home / "run" / "control.json").read_text())
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{doc['url']}/v1/status", headers={"Authorization": f"Bearer {doc['token']}"})
    return response.status_code, time.monotonic() - started


@needs_bwrap
@module_loop
async def test_a_connection_flood_from_a_worker_leaves_the_control_plane_answering(team):
    plane = team.plane
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > SOFT_NOFILE  # the control plane raised its own
    attacker_room, victim_room = await in_room(team, ATTACKER), await in_room(team, VICTIM)
    await team.admin.send(victim_room, "@bob before", mention=team.user_id(VICTIM))
    await team.wait_for_message("bob heard", sender=VICTIM)
    baseline = fd_count()

    targets = flood_targets({bridge.name: bridge.port for bridge in plane.provisioner.bridges()})
    attack_dir = workspace(team, ATTACKER)
    await plane.storage.put(layout.agent_workspace(ATTACKER) + "targets.json", json.dumps(targets).encode())
    await team.admin.send(attacker_room, "@mallory flood", mention=team.user_id(ATTACKER))

    def report() -> dict | None:
        try:
            doc = json.loads((attack_dir / "flood.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if doc["phase"] == "holding" else None

    flood = await wait_until(report, timeout=120, what="the flood to hold its connections")
    assert sum(flood["opened"].values()) == 3000, flood  # it really connected, thousands of times

    def bounded() -> dict | None:  # what the attacker holds, as it sees it (once the backlogs are drained)
        held = (report() or {}).get("held")
        return held if held and held["gateway"] + held["gateway-tcp"] <= 64 and max(held.values()) <= 64 else None

    await wait_until(bounded, timeout=30, what="every bridge to hold at most 64 of the attacker's connections")
    stats = plane.components["sandbox"]._runs[ATTACKER].bridges.stats  # the host's count
    assert all(s["open"] <= 64 for s in stats.values()), stats
    for name, kind, _address, count in targets:
        if kind == "unix":  # each one reached the host: all but the 64 it holds were closed on arrival
            assert stats[name]["refused"] >= count - 64, stats

    # While it holds: the control plane's descriptors stay bounded (3 bridges x 64 connections x at
    # most 3 descriptors each: the sandbox's end, the relay's, the in-process service's) ...
    assert fd_count() - baseline <= 3 * 64 * 3 + 64, (baseline, fd_count(), stats)
    # ... its control API answers at once ...
    status, seconds = await control_status(team)
    assert status == 200 and seconds < 5, (status, seconds)
    # ... and another worker's model calls (through its own bridges) go through.
    asked = time.monotonic()
    await team.admin.send(victim_room, "@bob during the flood", mention=team.user_id(VICTIM))
    await team.wait_for_message("during the flood", sender=VICTIM, timeout=30)
    assert time.monotonic() - asked < 15
    assert (await plane.supervisor.backend_status(ATTACKER))["state"] == "running"

    (attack_dir / "stop-flood").write_text("")
    await wait_until(lambda: json.loads((attack_dir / "flood.json").read_text())["phase"] == "stopped",
                     timeout=30, what="the flood to let go")
    await wait_until(lambda: all(s["open"] <= 4 for s in stats.values()), timeout=30,  # its own keep-alives stay
                     what=f"the flood's relays to end: {stats}")
    await wait_until(lambda: fd_count() <= baseline + 16, timeout=30,
                     what=f"the control plane's descriptors back to where they were ({baseline})")


@needs_bwrap
@module_loop
async def test_a_worker_with_network_starts_answers_and_reaches_the_gateway(team):
    """``network = true``: the host's network, where the services already hold their ports — so no
    forwarder listens there (it failed with "Address already in use"); the worker uses the
    services' own URLs."""
    plane = team.plane
    await plane.provisioner.create_worker(NETWORKED, role="tester", network=True)
    run = plane.components["sandbox"]._runs[NETWORKED]
    assert run.spec.network and run.bridges is None  # every service is on the host's loopback
    room = await in_room(team, NETWORKED)
    await team.admin.send(room, "@netty hello", mention=team.user_id(NETWORKED))
    await team.wait_for_message("netty heard", sender=NETWORKED, timeout=60)  # a model call via the gateway
    assert team.model_calls(NETWORKED) == 1
    log = (team.home / "logs" / "workers" / f"{NETWORKED}.log").read_text()
    assert "Address already in use" not in log and f"hiclaw worker {NETWORKED}: ready" in log


# --------------------------------------------------------------------------- the host half alone


async def echo_server() -> asyncio.base_events.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except (TimeoutError, ConnectionError):
        return False


async def test_silent_and_idle_connections_are_cut(tmp_path):
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    bridges = HostBridges(tmp_path, [Bridge(name="svc", port=port)], header_timeout=0.3, idle_timeout=1.0)
    path = (await bridges.start())["svc"]
    try:
        silent_reader, _ = await asyncio.open_unix_connection(str(path))  # never sends a byte
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        started = time.monotonic()
        assert await closed_by_peer(silent_reader, 5)  # the first-byte timeout
        assert time.monotonic() - started < 2
        for _ in range(4):  # traffic every 0.4 s (< the idle timeout) keeps a connection, past 1 s
            await asyncio.sleep(0.4)  # the worker's pace, not a wait for a state
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
        assert await closed_by_peer(reader, 5)  # then silence: the idle timeout
        assert bridges.stats["svc"]["timed_out"] == 2
        await wait_until(lambda: bridges.stats["svc"]["open"] == 0, timeout=5, what="both relays to end")
    finally:
        await bridges.close()
        server.close()


async def test_the_cap_is_per_worker_and_per_bridge(tmp_path):
    """A worker holding its cap on one bridge: its next connections there close at once; its other
    bridge and another worker's bridge to the same service work as before."""
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    attacker = HostBridges(tmp_path / "a", [Bridge(name="svc", port=port), Bridge(name="other", port=port + 1,
                                                                             target_port=port)],
                           max_connections=5)
    victim = HostBridges(tmp_path / "b", [Bridge(name="svc", port=port)], max_connections=5)
    paths, victim_paths = await attacker.start(), await victim.start()
    held = []
    try:
        for _ in range(5):
            reader, writer = await asyncio.open_unix_connection(str(paths["svc"]))
            writer.write(b"hold")
            assert await reader.readexactly(4) == b"hold"
            held.append(writer)
        refused = [await asyncio.open_unix_connection(str(paths["svc"])) for _ in range(20)]
        for reader, _ in refused:
            assert await closed_by_peer(reader, 5)
        assert attacker.stats["svc"] == {"open": 5, "refused": 20, "timed_out": 0}
        for path in (paths["other"], victim_paths["svc"]):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"still")
            assert await reader.readexactly(5) == b"still"
            writer.close()
        held.pop().close()  # one let go: room for one more
        await wait_until(lambda: attacker.stats["svc"]["open"] == 4, timeout=5, what="the slot to free")
        reader, writer = await asyncio.open_unix_connection(str(paths["svc"]))
        writer.write(b"again")
        assert await reader.readexactly(5) == b"again"
    finally:
        await attacker.close()
        await victim.close()
        server.close()
