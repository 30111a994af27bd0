"""The in-sandbox launcher (signals, exit codes, forwarders) and the host half of the bridges."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from hiclaw.sandbox.bridge import HostBridges, check_socket_path
from hiclaw.sandbox.spec import Bridge
from hiclaw.testing import wait_until

LAUNCH = [sys.executable, "-m", "hiclaw.sandbox.launch"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def launch(*args: str, **kwargs) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*LAUNCH, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, **kwargs)


async def test_exit_code_of_the_program_is_passed_on():
    proc = await launch("--", sys.executable, "-c", "import sys; print('hi'); sys.exit(7)")
    out, _ = await proc.communicate()
    assert proc.returncode == 7 and out == b"hi\n"


async def test_death_by_signal_becomes_128_plus_signal():
    proc = await launch("--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    await proc.communicate()
    assert proc.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize("args, code, message", [
    (["--", "/nonexistent/program"], 127, b"program not found"),
    (["--", "NOT_EXECUTABLE"], 126, b"cannot run"),
    (["--bogus", "1", "--", "true"], 125, b"unknown or incomplete option"),
    (["true"], 125, b"missing '--'"),
    (["--bridge", "nonsense", "--", "true"], 125, b"bad bridge"),
])
async def test_launcher_errors(args, code, message, tmp_path: Path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a program")
    proc = await launch(*[str(text_file) if a == "NOT_EXECUTABLE" else a for a in args])
    _, err = await proc.communicate()
    assert proc.returncode == code and message in err and err.count(b"\n") == 1


async def test_sigterm_is_forwarded_and_the_handlers_exit_code_wins(tmp_path: Path):
    ready = tmp_path / "ready"
    program = (
        "import signal, sys, pathlib, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        "while True: time.sleep(1)\n"
    )
    proc = await launch("--", sys.executable, "-c", program)
    await wait_until(ready.exists, timeout=20, what="the program to install its handler")
    proc.send_signal(signal.SIGTERM)
    await proc.communicate()
    assert proc.returncode == 42


async def test_a_port_that_cannot_be_bound_is_reported():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await launch("--bridge", f"{port}=tcp:127.0.0.1:1", "--", "true")
        _, err = await proc.communicate()
    assert proc.returncode == 125 and f"cannot listen on 127.0.0.1:{port}".encode() in err


async def test_the_program_gets_default_signal_dispositions():
    """SIGPIPE is not left ignored (Python ignores it): a broken pipe ends a shell pipeline."""
    proc = await launch("--", "/bin/sh", "-c", "yes | head -n 1; grep SigIgn /proc/self/status")
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and out.startswith(b"y\n")
    ignored = int(out.split()[-1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGTERM - 1))
    # ...but the reconnect signal starts ignored: one that arrives before the worker installs its
    # handler must not kill it.
    assert ignored & (1 << (signal.SIGUSR1 - 1))


async def test_sigusr1_reaches_a_program_that_handles_it(tmp_path: Path):
    program = ("import signal, sys, time\n"
               "signal.signal(signal.SIGUSR1, lambda *_: (print('usr1', flush=True), sys.exit(0)))\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n")
    proc = await launch("--", sys.executable, "-c", program)
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
    proc.send_signal(signal.SIGUSR1)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"usr1\n" and proc.returncode == 0


async def test_rlimits_are_applied_to_the_program():
    proc = await launch("--rlimit-nofile", "77", "--", sys.executable, "-c",
                        "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out, _ = await proc.communicate()
    assert out.strip() == b"77"


async def echo_server():
    async def handle(reader, writer):
        while data := await reader.read(1024):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def counting_server():
    """Reads until the client half-closes, then answers with the number of bytes it got."""
    async def handle(reader, writer):
        writer.write(str(len(await reader.read())).encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_host_bridge_relays_a_unix_socket_to_a_tcp_service(tmp_path: Path):
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    bridges = HostBridges(tmp_path, [Bridge(name="echo", port=port)])
    paths = await bridges.start()
    try:
        assert paths == {"echo": tmp_path / "echo.sock"}
        assert oct(os.stat(paths["echo"]).st_mode & 0o777) == "0o600"
        reader, writer = await asyncio.open_unix_connection(str(paths["echo"]))
        writer.write(b"ping")
        await writer.drain()
        assert await reader.readexactly(9) == b"echo:ping"
        writer.close()
    finally:
        await bridges.close()
        server.close()
    assert not paths["echo"].exists()


async def test_forwarder_and_host_bridge_chain_keeps_the_url(tmp_path: Path):
    """launcher forwarder (127.0.0.1:P) -> unix socket -> host bridge -> service on another port."""
    server = await counting_server()
    service_port = server.sockets[0].getsockname()[1]
    in_port = free_port()
    bridges = HostBridges(tmp_path, [Bridge(name="svc", port=in_port, target_port=service_port)])
    paths = await bridges.start()
    client = (f"import socket; s = socket.create_connection(('127.0.0.1', {in_port})); s.sendall(b'x' * 100000);"
              "s.shutdown(socket.SHUT_WR); data = b''\n"
              "while chunk := s.recv(65536): data += chunk\n"
              "print(data.decode())")
    try:
        proc = await launch("--bridge", f"{in_port}=unix:{paths['svc']}", "--", sys.executable, "-c", client)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await bridges.close()
        server.close()
    assert proc.returncode == 0, err
    assert out.strip() == b"100000"  # every byte through, and the half-close too


def test_too_long_socket_paths_are_refused():
    with pytest.raises(ValueError, match="too long"):
        check_socket_path(Path("/" + "x" * 120))
