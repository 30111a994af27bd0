"""Unix-socket bridges: the only way a network-less sandbox reaches host services.

Two halves:

* **Host side** — :class:`HostBridges` (asyncio, runs in the control plane): for each
  :class:`~hiclaw.sandbox.spec.Bridge` it listens on ``<run dir>/<bridge name>.sock`` and
  relays every connection to the bridge's host target (TCP or a unix socket). The run dir is
  bound read-only into the sandbox, so the worker can connect to the sockets but not replace them.
  Everything a worker sends is hostile: each bridge holds at most ``max_connections`` of its
  connections at once (more are closed on arrival, so a flood costs the control plane a bounded
  number of descriptors and never touches another worker's bridges), a connection must send its
  first byte within ``header_timeout`` seconds, and one silent both ways for ``idle_timeout``
  seconds is cut.
* **Sandbox side** — :class:`SandboxForwarder` (threads, stdlib only, used by
  :mod:`hiclaw.sandbox.launch`): listens on the sandbox's own ``127.0.0.1:<port>`` and relays
  to the socket (or, where no shared filesystem exists — Kubernetes — to a TCP target). Since
  the port is the host service's port, a URL means the same inside and outside.

This module must stay import-light (the launcher imports it inside every sandbox): no asyncio,
no pydantic at import time.
"""
from __future__ import annotations

import functools
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import asyncio
    from collections.abc import Sequence

    from hiclaw.sandbox.spec import Bridge

#: Longest unix socket path the kernel accepts (``sun_path`` is 108 bytes incl. the NUL).
MAX_SOCKET_PATH = 107
_CHUNK = 65536


def socket_name(bridge_name: str) -> str:
    return f"{bridge_name}.sock"


# --------------------------------------------------------------------------- argument format


def format_target(port: int, *, unix: str | os.PathLike[str] | None = None, tcp: tuple[str, int] | None = None) -> str:
    """Encode one forward for the launcher's ``--bridge`` option.

    ``PORT=unix:/path/to.sock`` or ``PORT=tcp:HOST:PORT``."""
    if (unix is None) == (tcp is None):
        raise ValueError("give exactly one of unix= or tcp=")
    return f"{port}=unix:{unix}" if unix is not None else f"{port}=tcp:{tcp[0]}:{tcp[1]}"  # type: ignore[index]


def parse_target(text: str) -> tuple[int, tuple[str, Any]]:
    """Inverse of :func:`format_target`: ``(port, ("unix", path) | ("tcp", (host, port)))``."""
    port_text, sep, target = text.partition("=")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad bridge {text!r}: expected PORT=unix:PATH or PORT=tcp:HOST:PORT")
    kind, _, rest = target.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return int(port_text), ("unix", rest)
    if kind == "tcp":
        host, _, tport = rest.rpartition(":")
        if host and tport.isdigit() and 0 < int(tport) < 65536:
            return int(port_text), ("tcp", (host.strip("[]"), int(tport)))
    raise ValueError(f"bad bridge target {target!r}: expected unix:/ABSOLUTE/PATH or tcp:HOST:PORT")


def reached_directly(bridge: Bridge) -> bool:
    """True if a process sharing the host's network reaches the bridge's service at the same URL
    itself (its target is the host's loopback, same port): no relay is needed, and a forwarder
    could not listen there anyway (the service holds the port)."""
    tcp = bridge.tcp_target
    return tcp is not None and tcp[0] in ("127.0.0.1", "localhost") and tcp[1] == bridge.port


# --------------------------------------------------------------------------- sandbox side


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:  # half-close so the other direction can finish (HTTP/1.0 style peers need it)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay(client: socket.socket, target: tuple[str, Any], active: _Active) -> None:
    """Relay one connection. ``active`` counts it until everything the worker sent is passed on
    (the answer may still be coming: nobody waits for that once the worker is gone)."""
    kind, address = target
    try:
        if kind == "unix":
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(address)
        else:
            upstream = socket.create_connection(address)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        active.done()
        print(f"hiclaw bridge: cannot reach {kind}:{address}: {exc}", file=sys.stderr, flush=True)
        client.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    try:
        back.start()
    except RuntimeError:  # no thread to be had (the sandbox's process limit): give this one up
        active.done()
        client.close()
        upstream.close()
        return
    try:
        _pump(client, upstream)
    finally:
        active.done()
    back.join()
    client.close()
    upstream.close()


class _Active:
    """Relays whose worker-to-host direction is still open, so the launcher can let them finish."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def start(self) -> None:
        with self.cond:
            self.count += 1

    def done(self) -> None:
        with self.cond:
            self.count -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout: float, pending: Any = lambda: False) -> bool:
        """Wait until no relay runs and ``pending()`` (connections not yet accepted) is false."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count or pending():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.01))  # short: a pending connection does not notify
        return True


class SandboxForwarder:
    """Listens on ``127.0.0.1:port`` and relays each connection to ``target`` (two threads per
    connection). With ``max_connections``, connections beyond that many at once are closed as they
    arrive (the host would refuse them anyway), so a flood inside costs the sandbox no threads."""

    def __init__(self, port: int, target: tuple[str, Any], *, host: str = "127.0.0.1",
                 max_connections: int | None = None) -> None:
        self.port = port
        self.target = target
        self.max_connections = max_connections
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))  # raises OSError (e.g. port in use) for the caller to report
        self.listener.listen(128)
        self.thread = threading.Thread(target=self._serve, name=f"bridge-{port}", daemon=True)
        self.active = _Active()

    def start(self) -> SandboxForwarder:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # listener closed
            if self.max_connections is not None and self.active.count >= self.max_connections:
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.active.start()
            try:
                threading.Thread(target=_relay, args=(client, self.target, self.active), daemon=True).start()
            except RuntimeError:  # no thread to be had (the sandbox's process limit): drop this one, serve on
                self.active.done()
                client.close()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until what the worker sent — on accepted or still queued
        connections — has been passed on (its last words must reach the host although it has
        exited). Answers still owed to it are not waited for."""
        def pending() -> bool:
            try:
                return bool(select.select([self.listener], [], [], 0)[0])
            except (OSError, ValueError):
                return False

        return self.active.wait_idle(timeout, pending)

    def close(self) -> None:
        self.listener.close()


# --------------------------------------------------------------------------- host side


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise ValueError(f"unix socket path too long ({len(str(path))} > {MAX_SOCKET_PATH} bytes): {path}")


#: Defaults of ``[sandbox.settings] bridge_max_connections``, ``bridge_header_timeout``, ``bridge_idle_timeout``.
MAX_CONNECTIONS, HEADER_TIMEOUT, IDLE_TIMEOUT = 64, 10.0, 600.0


class _Deadline:
    """Cuts one bridged connection that sent nothing within ``first`` seconds of its start, or
    saw no byte either way for ``idle`` seconds after that (one timer, re-armed lazily)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, first: float, idle: float, expire: Any) -> None:
        self.loop, self.idle, self.expire = loop, idle, expire
        self.started = False
        self.last = loop.time()
        self.limit = first
        self.expired = False
        self.handle = loop.call_later(first, self._check)

    def touch(self, inbound: bool) -> None:
        if inbound and not self.started:
            self.started, self.limit = True, self.idle
        if self.started:  # before the sandbox's first byte, only that counts
            self.last = self.loop.time()

    def _check(self) -> None:
        left = self.last + self.limit - self.loop.time()
        if left > 0:
            self.handle = self.loop.call_later(left, self._check)
            return
        self.expired = True
        self.expire()

    def cancel(self) -> None:
        self.handle.cancel()


class HostBridges:
    """Host half of one worker's bridges: ``<run_dir>/<name>.sock`` → the bridge's target.

    At most ``max_connections`` connections per bridge at once (more are closed as they arrive);
    ``header_timeout``: seconds until a connection's first byte; ``idle_timeout``: seconds of
    silence both ways after which it is cut. :attr:`stats` counts what was refused and cut."""

    def __init__(self, run_dir: Path, bridges: Sequence[Bridge], *, max_connections: int = MAX_CONNECTIONS,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.run_dir = run_dir
        self.bridges = list(bridges)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        #: Per bridge: ``open`` connections now, ``refused`` over the cap, ``timed_out`` (header or idle).
        self.stats = {b.name: {"open": 0, "refused": 0, "timed_out": 0} for b in self.bridges}
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._inbound: set[asyncio.Event] = set()

    @classmethod
    def from_settings(cls, run_dir: Path, bridges: Sequence[Bridge], settings: Any) -> HostBridges:
        """With the limits of a backend's ``[sandbox.settings]``."""
        return cls(run_dir, bridges, max_connections=settings.bridge_max_connections,
                   header_timeout=settings.bridge_header_timeout, idle_timeout=settings.bridge_idle_timeout)

    def socket_path(self, bridge: Bridge) -> Path:
        return self.run_dir / socket_name(bridge.name)

    async def start(self) -> dict[str, Path]:
        """Listen on every bridge's socket; returns bridge name → socket path."""
        import asyncio

        paths: dict[str, Path] = {}
        try:
            for bridge in self.bridges:
                path = self.socket_path(bridge)
                check_socket_path(path)
                path.unlink(missing_ok=True)  # a stale socket from a killed control plane
                server = await asyncio.start_unix_server(functools.partial(self._handle, bridge=bridge), path=str(path))
                os.chmod(path, 0o600)
                self._servers.append(server)
                paths[bridge.name] = path
        except BaseException:
            await self.close()
            raise
        return paths

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bridge: Bridge) -> None:
        stats = self.stats[bridge.name]
        if stats["open"] >= self.max_connections:
            writer.transport.abort()  # at once: a flood holds no descriptor of ours
            stats["refused"] += 1
            if stats["refused"] == 1 or stats["refused"] % 1000 == 0:
                import logging

                logging.getLogger(__name__).warning(
                    "worker %s: refused a connection on its %s bridge: %d already open (the limit, "
                    "[sandbox.settings] bridge_max_connections); %d refused so far",
                    self.run_dir.name, bridge.name, self.max_connections, stats["refused"])
            return
        stats["open"] += 1
        try:
            await self._relay(reader, writer, bridge)
        finally:
            stats["open"] -= 1

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bridge: Bridge) -> None:
        import asyncio

        sent = asyncio.Event()  # set once everything from the sandbox is passed on
        self._inbound.add(sent)
        self._writers.add(writer)
        transports = [writer.transport]

        def expire() -> None:
            self.stats[bridge.name]["timed_out"] += 1
            for transport in transports:
                transport.abort()

        deadline = _Deadline(asyncio.get_running_loop(), self.header_timeout, self.idle_timeout, expire)
        try:
            tcp = bridge.tcp_target
            connect = (asyncio.open_connection(*tcp) if tcp is not None
                       else asyncio.open_unix_connection(str(bridge.target_unix)))
            up_reader, up_writer = await asyncio.wait_for(connect, self.header_timeout)
            if tcp is not None:
                up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, TimeoutError):
            deadline.cancel()
            writer.transport.abort()
            self._writers.discard(writer)
            self._inbound.discard(sent)
            return
        self._writers.add(up_writer)
        transports.append(up_writer.transport)
        if deadline.expired:
            up_writer.transport.abort()

        async def inbound() -> None:
            try:
                await _copy(reader, up_writer, lambda: deadline.touch(True))
            finally:
                sent.set()
                self._inbound.discard(sent)

        try:
            await asyncio.gather(inbound(), _copy(up_reader, writer, lambda: deadline.touch(False)))
        finally:
            deadline.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening; give data the sandbox already sent ``grace`` seconds to reach its
        service, then cut every connection."""
        import asyncio

        for server in self._servers:
            server.close()
        if self._inbound and grace > 0:  # what the sandbox sent still goes out; answers are dropped
            waits = [asyncio.ensure_future(event.wait()) for event in self._inbound]
            await asyncio.wait(waits, timeout=grace)
            for waiter in waits:
                waiter.cancel()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        for server in self._servers:
            try:
                await server.wait_closed()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
        self._servers.clear()
        for bridge in self.bridges:
            self.socket_path(bridge).unlink(missing_ok=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Any = None) -> None:
    try:
        while data := await reader.read(_CHUNK):
            if seen is not None:
                seen()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        pass  # peer went away; the other direction ends on its own
