"""Sandbox start overhead: spawn → a trivial Python program inside reports "ready" over a bridge.

Runs, interleaved in the same process and loop:

* ``bare``     — ``python -c ...`` as a plain child process (the floor: interpreter start-up);
* ``process``  — the process backend (launcher, no isolation);
* ``bwrap``    — the bwrap backend (namespaces, binds, launcher, unix-socket bridge).

The program connects to ``127.0.0.1:PORT`` and sends its tag; inside bwrap that address is the
sandbox's own loopback, relayed by the bridge to the host's listener on the same port. The
figure is bwrap's median and p95 beside the process backend's (and the bare floor).

    .venv/bin/python bench/sandbox_start.py [--rounds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from hiclaw.sandbox.backends.bwrap import BwrapBackend
from hiclaw.sandbox.backends.process import ProcessBackend
from hiclaw.sandbox.spec import Bridge, WorkerSpec
from hiclaw.testing.sandbox import bwrap_unavailable

PROGRAM = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1]))).sendall(sys.argv[2].encode())"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def main(rounds: int) -> int:
    if reason := bwrap_unavailable():
        print(f"cannot run the bwrap side here: {reason}", file=sys.stderr)
        return 1
    waiting: dict[str, asyncio.Future[float]] = {}

    async def on_ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tag = (await reader.read()).decode()
        arrived = time.perf_counter()
        writer.close()
        if tag in waiting and not waiting[tag].done():
            waiting[tag].set_result(arrived)

    server = await asyncio.start_server(on_ready, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="hiclaw-bench-") as tmp:
        root = Path(tmp)
        ctx = SimpleNamespace(home=root / "control")
        backends = {"process": ProcessBackend(ctx=ctx), "bwrap": BwrapBackend(ctx=ctx)}
        logging.getLogger("hiclaw.sandbox.backends.process").setLevel(logging.ERROR)  # its warning, once per run
        home = root / "agents" / "bench"
        home.mkdir(parents=True)
        samples: dict[str, list[float]] = {"bare": [], "process": [], "bwrap": []}

        async def once(kind: str, i: int) -> None:
            tag = f"{kind}-{i}"
            waiting[tag] = asyncio.get_running_loop().create_future()
            argv = [sys.executable, "-c", PROGRAM, str(port), tag]
            started = time.perf_counter()
            if kind == "bare":
                proc = await asyncio.create_subprocess_exec(*argv)
                arrived = await asyncio.wait_for(waiting[tag], 60)
                await proc.wait()
            else:
                backend = backends[kind]
                spec = WorkerSpec(name="bench", argv=argv, home=home, bridges=[Bridge(name="ready", port=port)],
                                  log_path=root / f"{kind}.log")
                await backend.start(spec)
                arrived = await asyncio.wait_for(waiting[tag], 60)
                code = await backend.wait("bench")
                if code != 0:
                    raise RuntimeError(f"{kind} run exited with {code}: see {spec.log_path}")
            samples[kind].append((arrived - started) * 1000)

        for kind in samples:  # warm-up: page cache, the bwrap backend's one-time Python inspection
            await once(kind, -1)
            samples[kind].clear()
        for i in range(rounds):
            for kind in samples:
                await once(kind, i)
    server.close()

    print(f"sandbox start: spawn -> program ready over a bridge, {rounds} rounds each, interleaved")
    print(f"{'':10}{'median ms':>11}{'p95 ms':>10}")
    for kind in ("bare", "process", "bwrap"):
        print(f"{kind:10}{statistics.median(samples[kind]):>11.1f}{p95(samples[kind]):>10.1f}")
    extra = statistics.median(samples["bwrap"]) - statistics.median(samples["process"])
    print(f"bwrap adds {extra:.1f} ms (median) over the process backend, which is the baseline "
          f"(no isolation); the process backend adds "
          f"{statistics.median(samples['process']) - statistics.median(samples['bare']):.1f} ms over a bare interpreter")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    sys.exit(asyncio.run(main(parser.parse_args().rounds)))
