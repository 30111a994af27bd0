"""Mention-only wake-up over a real Synapse: mention → handler latency, and LLM calls caused by chatter.

Starts the embedded Synapse (``EmbeddedHomeserver``) in a temporary home, provisions a team with
the control-side channel, runs worker ``alice`` on its worker-side channel behind a
``MentionGate``, and has the admin (raw client-server API over httpx) post to their room.

Figures, each beside its baseline from the same run:

* **mention → handler latency** (p50/p99): admin's PUT until alice's gated handler runs, vs a raw
  second client's long-poll ``/sync`` seeing the same kind of message (the homeserver's own
  round trip, no channel, no gate).
* **LLM calls caused by N unmentioned messages**: turns the gate starts (each turn is one model
  call), vs the same messages through an ungated handler. Bar (DESIGN section 9): 0.
* **homeserver ready**: ``start()`` until it answers (bar ≤ 3 s), median of three starts.

    .venv/bin/python bench/matrix_wakeup.py [--mentions 200] [--chatter 200]
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.channels.matrix.control import ControlMatrixChannel
from hiclaw.plugins.channels.matrix.homeserver import EmbeddedHomeserver
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
from hiclaw.wakeup import MentionGate

CLIENT = "/_matrix/client/v3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def homeserver_ready(home: Path, settings: MatrixSettings, runs: int = 3) -> tuple[float, EmbeddedHomeserver]:
    times = []
    server = EmbeddedHomeserver(home, settings)
    for run in range(runs):
        started = time.perf_counter()
        server.start()
        times.append(time.perf_counter() - started)
        if run < runs - 1:
            server.stop()
    return statistics.median(times), server


async def send(http: httpx.AsyncClient, token: str, room: str, content: dict) -> str:
    resp = await http.put(f"{CLIENT}/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}",
                          headers={"Authorization": f"Bearer {token}"}, json=content)
    resp.raise_for_status()
    return str(resp.json()["event_id"])


async def raw_round_trips(http: httpx.AsyncClient, sender: str, reader: str, room: str, count: int) -> list[float]:
    """Baseline: send, then a plain long-poll /sync of another user sees it."""
    headers = {"Authorization": f"Bearer {reader}"}
    since = (await http.get(f"{CLIENT}/sync", headers=headers, params={"timeout": 0})).json()["next_batch"]
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        event_id = await send(http, sender, room, {"msgtype": "m.text", "body": f"baseline {n}"})
        seen = False
        while not seen:
            resp = (await http.get(f"{CLIENT}/sync", headers=headers, params={"since": since, "timeout": 30000})).json()
            since = resp["next_batch"]
            events = resp.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            seen = any(e["event_id"] == event_id for e in events)
        latencies.append(time.perf_counter() - started)
    return latencies


async def main(mentions: int, chatter: int) -> None:
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        home = Path(tmp)
        settings = MatrixSettings(port=free_port(), synapse_config={"bcrypt_rounds": 4}, sync_timeout_ms=30000)
        ready, server = homeserver_ready(home, settings)
        control = ControlMatrixChannel(settings, home=home)
        try:
            await control.start()
            admin = await control.ensure_account("admin", password=secrets.token_urlsafe(12), admin=True)
            reader = await control.ensure_account("reader")
            await control.ensure_account("alice")
            room = await control.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice", "reader"])
            host = PluginHost(default_plugins=[("matrix", "hiclaw.plugins.channels.matrix")], load_entry_points=False)
            alice = host.create("channel", "matrix", control.worker_settings("alice"),
                                ComponentContext(home=home / "alice", side="worker", agent="alice"))
            turns: list[float] = []
            woke = asyncio.Event()
            every_message = 0

            async def model_call(message) -> None:  # one agent turn = one LLM call
                turns.append(time.perf_counter())
                woke.set()

            async def ungated(message) -> None:  # what an agent without the gate would do
                nonlocal every_message
                every_message += 1

            alice.on_message(MentionGate(alice.me, model_call))
            alice.on_message(ungated)
            await alice.start()
            async with httpx.AsyncClient(base_url=settings.url, timeout=60) as http:
                token = admin["access_token"]
                baseline = await raw_round_trips(http, token, reader["access_token"], room, mentions)
                latencies = []
                for n in range(mentions):
                    woke.clear()
                    started = time.perf_counter()
                    await send(http, token, room, {"msgtype": "m.text", "body": f"@alice ping {n}",
                                                   "m.mentions": {"user_ids": [alice.me]}})
                    await asyncio.wait_for(woke.wait(), 30)
                    latencies.append(turns[-1] - started)
                calls_before = len(turns)
                delivered_before = alice.counters["delivered"]
                ungated_before = every_message
                for n in range(chatter):
                    await send(http, token, room, {"msgtype": "m.text", "body": f"chatter {n}"})
                deadline = time.monotonic() + 60
                while alice.counters["delivered"] < delivered_before + chatter and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                chatter_calls = len(turns) - calls_before
                ungated_calls = every_message - ungated_before
            await alice.stop()
        finally:
            await control.stop()
            server.stop()

    ms = 1000
    print(f"{'figure':<52} {'hiclaw':>14} {'baseline':>14}  bar")
    print(f"{'homeserver ready (median of 3 starts)':<52} {ready:>13.2f}s {'':>14}  <= 3 s")
    print(f"{f'mention -> handler latency p50 ({mentions} mentions)':<52} {percentile(latencies, .5) * ms:>12.1f}ms "
          f"{percentile(baseline, .5) * ms:>12.1f}ms  (baseline: raw send -> other client's /sync)")
    print(f"{'mention -> handler latency p99':<52} {percentile(latencies, .99) * ms:>12.1f}ms "
          f"{percentile(baseline, .99) * ms:>12.1f}ms")
    print(f"{f'LLM calls caused by {chatter} unmentioned messages':<52} {chatter_calls:>14} {ungated_calls:>14}  0 "
          "(baseline: every message wakes the agent)")
    if chatter_calls != 0 or ready > 3:
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mentions", type=int, default=200)
    parser.add_argument("--chatter", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.mentions, args.chatter))
