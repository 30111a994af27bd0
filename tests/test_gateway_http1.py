"""The gateway's lean HTTP/1.1 upstream client against a real aiohttp server (plain and TLS)."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl

import pytest
from aiohttp import web
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.plugins.gateways.embedded.http1 import Http1Pool, UpstreamHTTPError
from hiclaw.plugins.gateways.embedded.routing import Router
from hiclaw.plugins.gateways.embedded.upstream import DirectUpstream
from hiclaw.testing import wait_until
from hiclaw.testing.gateway import running_scripted_model, scripted_aliases


async def _serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


def _app(peers: list[object]) -> web.Application:
    async def sized(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response({"echo": (await request.read()).decode(), "host": request.headers["Host"]})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"data: one\n\n", b"data: " + b"x" * 70000 + b"\n\n", b"data: [DONE]\n\n"):
            await response.write(piece)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text="late")

    async def closing(request: web.Request) -> web.Response:
        return web.Response(text="bye", headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/sized", sized)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/slow", slow)
    app.router.add_post("/closing", closing)
    return app


async def test_content_length_chunked_keep_alive_and_timeouts():
    peers: list[object] = []
    runner, port = await _serve(_app(peers))
    pool = Http1Pool(connect_timeout=2, read_timeout=0.3)
    base = f"http://127.0.0.1:{port}"
    try:
        for n in range(3):
            response = await pool.request("POST", f"{base}/sized", {"Content-Type": "text/plain"}, f"hi {n}".encode())
            assert response.status == 200 and (await response.read()) == f'{{"echo": "hi {n}", "host": "127.0.0.1:{port}"}}'.encode()
            response.release()
        assert len(set(peers)) == 1  # one keep-alive connection served all three
        response = await pool.request("POST", f"{base}/chunked", {}, b"")
        assert response.headers["transfer-encoding"] == "chunked"
        body = await response.read()
        response.release()
        assert body.startswith(b"data: one\n\n") and body.endswith(b"data: [DONE]\n\n") and len(body) > 70000
        closing = await pool.request("POST", f"{base}/closing", {}, b"")
        assert await closing.read() == b"bye"
        closing.release()  # `Connection: close` is not pooled
        with pytest.raises(UpstreamHTTPError) as info:
            await pool.request("POST", f"{base}/slow", {}, b"")
        assert info.value.timeout
        with pytest.raises(UpstreamHTTPError, match="cannot connect"):
            await pool.request("POST", f"http://127.0.0.1:{_closed_port()}/sized", {}, b"x")
    finally:
        await pool.close()
        await runner.cleanup()


async def test_stale_keep_alive_connection_is_retried():
    peers: list[object] = []
    app = _app(peers)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.2)  # the server drops idle connections
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    pool = Http1Pool(connect_timeout=2, read_timeout=2)
    try:
        first = await pool.request("POST", f"http://127.0.0.1:{port}/sized", {}, b"a")
        await first.read()
        first.release()
        idle = next(iter(pool._idle.values()))
        await wait_until(lambda: all(conn.closed for conn in idle), what="the server to drop the idle connection")
        second = await pool.request("POST", f"http://127.0.0.1:{port}/sized", {}, b"b")
        assert second.status == 200 and b'"b"' in await second.read()
        second.release()
        assert len(set(peers)) == 2
    finally:
        await pool.close()
        await runner.cleanup()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_upstream_is_verified(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    runner, port = await _serve(_app([]), server_ctx)
    trusting = Http1Pool(connect_timeout=2, read_timeout=2, ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = Http1Pool(connect_timeout=2, read_timeout=2)  # the system trust store does not know this certificate
    try:
        response = await trusting.request("POST", f"https://localhost:{port}/sized", {}, b"secure")
        assert response.status == 200 and b'"secure"' in await response.read()
        response.release()
        with pytest.raises(UpstreamHTTPError, match="cannot connect"):
            await default.request("POST", f"https://localhost:{port}/sized", {}, b"x")
    finally:
        await trusting.close()
        await default.close()
        await runner.cleanup()


async def test_sse_stream_connection_is_reused_after_done(tmp_path):
    """The gateway drains the end of a streamed body after [DONE] so the next call reuses the connection."""
    with running_scripted_model() as model:
        config = HiclawConfig.model_validate({"models": scripted_aliases(model.base_url)})
        router = Router(config.models, {"scripted_api_key": SecretStr("k")}, direct_openai=True)
        upstream = DirectUpstream(timeout=5, connect_timeout=2, redact=str)
        route = router.routes["cheap"]
        payload = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        for _ in range(3):
            stream = await upstream.stream(route, payload, "streamer")
            assert [json.loads(c) async for c in stream][-1]["usage"]["prompt_tokens"] > 0
            await stream.aclose()
        (idle,) = upstream._pool._idle.values()
        assert len(idle) == 1  # one connection served all three streams
        await upstream.close()
