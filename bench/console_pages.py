"""The web console with the demo's data: how long each page takes to serve, and how long a chat
message takes to reach an open page live (issue 19's bar: first paint < 1 s; the browser test
asserts it in Chromium, this prints where the time goes).

The scripted demo (`hiclaw demo`: four workers, a six-task project with a revision, an approval)
runs in process and stays up; then, logged in with a one-time link like a browser:

- each page, N times: median and p95 of the full response time over loopback; the baseline, in
  the same run, is the console's static stylesheet (what the server costs with no page to render);
- a message posted in the Manager's room: until it arrives on an open ``/chat/stream`` (what a
  page shows without a reload), beside the same message reaching an independent Matrix client's
  ``/sync`` (the admin's phone) — the console adds its own session's sync and the stream.

    .venv/bin/python bench/console_pages.py [--requests 30] [--messages 20]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from hiclaw.demo.runner import Demo
from hiclaw.waiting import wait_until

PAGES = ["/", "/chat", "/projects", "/projects/proj-001", "/tasks/task-004", "/usage",
         "/files?path=shared/tasks/task-004/result.md"]
BASELINE = "/console.css"


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


async def timed_get(http: aiohttp.ClientSession, path: str) -> float:
    started = time.perf_counter()
    async with http.get(path) as response:
        await response.read()
        assert response.status == 200, (path, response.status)
    return time.perf_counter() - started


async def live_latency(demo: Demo, http: aiohttp.ClientSession, messages: int) -> tuple[list[float], list[float]]:
    plane, admin = demo.plane, demo.admin
    room = plane.chat.manager_room
    async with http.get("/chat") as response:
        page = await response.text()
    since = page.split('data-since="', 1)[1].split('"', 1)[0]
    arrived: dict[str, float] = {}

    async def read() -> None:
        async with http.get(f"/chat/stream?room={room}&since={since}") as response:
            async for raw in response.content:
                line = raw.decode()
                if line.startswith("data: ") and "bench-" in line:
                    arrived.setdefault(line.split("bench-", 1)[1].split(" ", 1)[0].split("<", 1)[0], time.perf_counter())

    reader = asyncio.create_task(read())
    stream, sync = [], []
    try:
        for number in range(messages):
            tag = f"{number:03d}"
            started = time.perf_counter()
            await plane.chat.post(room, f"bench-{tag} a message")
            await wait_until(lambda t=tag: t in arrived and any(f"bench-{t}" in m.body for m in admin.messages),
                             timeout=30, what=f"message {tag}")
            stream.append(arrived[tag] - started)
            seen = next(m for m in admin.messages if f"bench-{tag}" in m.body)
            sync.append(seen.received - started)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return stream, sync


async def main(requests: int, messages: int) -> int:
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        lines: list[str] = []
        demo = Demo(home=Path(tmp) / "demo", keep=True, sandbox=None, timeout=180, echo=lines.append)
        played = asyncio.create_task(demo.run())
        try:
            await wait_until(lambda: played.done() or any("--keep: the team stays up" in line for line in lines),
                             timeout=240, what="the demo")
            if played.done():
                raise SystemExit("the demo failed:\n" + "\n".join(lines[-30:]))
            console = demo.plane.console
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(console.url, cookie_jar=jar) as http:
                async with http.get(console.login_link().removeprefix(console.url)) as response:
                    assert response.status == 200, response.status
                print(f"console pages with the demo's data ({requests} requests each, loopback, full response):")
                for path in [BASELINE, *PAGES]:
                    await timed_get(http, path)  # warm (the chat session starts on the first /chat)
                    samples = [await timed_get(http, path) for _ in range(requests)]
                    label = f"{path} (baseline: static)" if path == BASELINE else path
                    print(f"  {label:<48} {figures(samples)}")
                stream, sync = await live_latency(demo, http, messages)
                print(f"a message posted → on an open page's stream ({messages} messages): {figures(stream)}")
                print(f"                 → a Matrix client's /sync (baseline):       {figures(sync)}")
        finally:
            if not played.done():
                demo.plane.request_stop()
            await asyncio.gather(played, return_exceptions=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.requests, args.messages)))
