"""A lean HTTP/1.1 client for the gateway's calls to OpenAI-compatible providers.

Why not aiohttp's client: it costs ~280 µs of CPU per call here, this one ~100 µs, and the
gateway's whole budget is a couple of milliseconds (DESIGN section 9). It does exactly what the
upstream call needs: keep-alive connections pooled per origin (plain or TLS), one request per
connection at a time, ``Content-Length``, chunked or read-to-close bodies, incremental body
iteration for SSE, and a read timeout between bytes. No redirects, cookies, proxies or
compression (it never asks for any).
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024


class UpstreamHTTPError(Exception):
    """The connection failed, timed out or spoke malformed HTTP (``timeout`` tells which)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamHTTPError(f"unsupported upstream URL {url!r} (need http:// or https://)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), target


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time into head + body pieces."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        self.used = False

    # asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # reading ---------------------------------------------------------------------------
    async def wait_data(self, timeout: float) -> None:
        """Wait until more bytes arrive or the peer closes; raise on timeout."""
        if self.closed:
            raise UpstreamHTTPError("the provider closed the connection mid-response")
        self.waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, self._expire, self.waiter)
        try:
            await self.waiter
        finally:
            timer.cancel()
            self.waiter = None

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamHTTPError("read timed out", timeout=True))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """A response whose body is read with :meth:`read` or iterated with :meth:`iter_body`."""

    def __init__(self, pool: Http1Pool, origin: Origin, conn: _Connection, status: int, headers: dict[str, str]) -> None:
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self.status = status
        self.headers = headers
        encoding = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in encoding
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None and not self._chunked else None
        self._keep_alive = headers.get("connection", "").lower() != "close" and (self._chunked or self._remaining is not None)
        self._done = False
        self._timeout = pool.read_timeout
        self._body: AsyncIterator[bytes] | None = None

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_body()])

    def iter_body(self) -> AsyncIterator[bytes]:
        """The body's pieces. One iterator per response: a later call continues where the last stopped."""
        if self._body is None:
            self._body = self._read_body()
        return self._body

    async def _read_body(self) -> AsyncIterator[bytes]:
        reader = self._chunks() if self._chunked else self._plain()
        async for piece in reader:
            yield piece
        self._done = True

    async def _plain(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while self._remaining is None or self._remaining > 0:
            if conn.buffer:
                take = len(conn.buffer) if self._remaining is None else min(self._remaining, len(conn.buffer))
                piece = bytes(conn.buffer[:take])
                del conn.buffer[:take]
                if self._remaining is not None:
                    self._remaining -= take
                yield piece
                continue
            if conn.closed and self._remaining is None:
                return  # body delimited by the end of the connection
            await conn.wait_data(self._timeout)

    async def _line(self) -> bytes:
        conn = self._conn
        while (end := conn.buffer.find(b"\r\n")) < 0:
            await conn.wait_data(self._timeout)
        line = bytes(conn.buffer[:end])
        del conn.buffer[: end + 2]
        return line

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            size_line = await self._line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise UpstreamHTTPError(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return
            left = size
            while left:
                if not conn.buffer:
                    await conn.wait_data(self._timeout)
                    continue
                take = min(left, len(conn.buffer))
                piece = bytes(conn.buffer[:take])
                del conn.buffer[:take]
                left -= take
                yield piece
            if await self._line():
                raise UpstreamHTTPError("chunk not followed by CRLF")

    async def drain(self, timeout: float) -> None:
        """Read what is left of the body (e.g. after an SSE ``[DONE]``) so the connection can be
        reused; gives up after ``timeout`` and the connection is closed instead."""
        if self._done or self._conn is None:
            return
        self._timeout = timeout
        try:
            async for _ in self.iter_body():
                pass
        except UpstreamHTTPError:
            pass

    def release(self) -> None:
        """Give the connection back to the pool if the body was fully read, else close it."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if self._done and self._keep_alive and not conn.closed and not conn.buffer:
            self._pool.give_back(self._origin, conn)
        else:
            conn.close()


class Http1Pool:
    """Keep-alive connections per origin."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl = ssl_context  # default: the system's trust store, created on first https use

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(loop), origin.host, origin.port, ssl=context,
                server_hostname=origin.host if context else None), self.connect_timeout)
        except TimeoutError:
            raise UpstreamHTTPError(f"connecting to {origin.host}:{origin.port} timed out", timeout=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamHTTPError(f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}") from None
        return conn

    def give_back(self, origin: Origin, conn: _Connection) -> None:
        """Keep a reusable connection (its response fully read) for the next request to ``origin``."""
        self._idle.setdefault(origin, deque()).append(conn)

    async def request(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> UpstreamResponse:
        origin, target = parse_url(url)
        default_port = 443 if origin.scheme == "https" else 80
        host = origin.host if origin.port == default_port else f"{origin.host}:{origin.port}"
        head = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(origin, conn, payload)
            except _Stale:
                continue  # the server dropped an idle connection: use another one
        return await self._exchange(origin, await self._connect(origin), payload)

    async def _exchange(self, origin: Origin, conn: _Connection, payload: bytes) -> UpstreamResponse:
        reused = conn.used
        conn.used = True
        assert conn.transport is not None
        conn.transport.write(payload)
        try:
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                if len(conn.buffer) > MAX_HEAD_BYTES:
                    raise UpstreamHTTPError("response head too large")
                if conn.closed and not conn.buffer and reused:
                    raise _Stale()
                await conn.wait_data(self.read_timeout)
        except UpstreamHTTPError as exc:
            conn.close()
            if reused and not exc.timeout and not conn.buffer:
                raise _Stale() from None
            raise
        except _Stale:
            conn.close()
            raise
        lines = bytes(conn.buffer[:end]).decode("latin-1").split("\r\n")
        del conn.buffer[: end + 4]
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            conn.close()
            raise UpstreamHTTPError(f"malformed status line {lines[0][:60]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return UpstreamResponse(self, origin, conn, status, headers)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Stale(Exception):
    """A reused keep-alive connection had been closed by the server before it answered."""
