"""Small loopback servers the service probes stand up: a recording provider, an answering service.

:class:`Recorder` is an OpenAI-compatible stand-in that records every request (the gateway
probe's provider, and the attacker's server it must never reach); :class:`Answering` answers a
finished request with a canary and counts connections (the SSRF probe's internal service, the
service behind the flooded bridge). Both bind ``127.0.0.1`` on a free port.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Awaitable
from typing import Any, Self


class _Loopback:
    """A small asyncio server on ``127.0.0.1``; :meth:`close` cuts every connection it holds."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        try:
            await self.serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            self._open.pop(writer, None)
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        handlers = list(self._open.values())
        for writer in list(self._open):
            writer.transport.abort()
        await asyncio.gather(*handlers, return_exceptions=True)  # each ends on its aborted connection


class Recorder(_Loopback):
    """An OpenAI-compatible stand-in that records every request (a provider, or an attacker's server)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def text(self) -> str:
        return json.dumps(self.requests)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # keep-alive, as providers do
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            self.requests.append({"request": lines[0], "headers": headers, "body": body.decode(errors="replace")})
            reply = json.dumps({"id": "check", "object": "chat.completion", "created": 0, "model": "recorded",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "recorded"}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(reply), reply))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return


class Answering(_Loopback):
    """A service that answers a finished HTTP request with a canary and counts every connection
    (the SSRF target, and the service behind the flooded bridge). Connections that never finish
    their request are held until :meth:`close`."""

    def __init__(self) -> None:
        super().__init__()
        self.canary = secrets.token_hex(16)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = self.canary.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


async def ask_http(connect: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]], timeout: float = 5) -> bytes:
    """Send a finished request over a fresh connection; the whole answer (``b""`` if none)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await connect
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return b""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
