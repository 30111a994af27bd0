"""Issue 14, attack 7: a worker makes the control plane fetch a URL it chose (SSRF).

A worker's ``skills_add`` source — and everything a registry answers for it (well-known artifact
URLs, redirects) — is fetched by the control plane, which can reach loopback and LAN services no
sandbox bridge exposes. A real loopback server that counts every TCP connection stands in for
such an internal service (the homeserver's admin API, moto, the gateway's admin side…). Every
address form, every redirect and every registry-chosen URL aimed at it must be refused with
**zero** connections reaching it, and the error a worker sees must not tell an open port from a
closed one. The admin's configured registry (a loopback registry here, as in every team test)
stays reachable: positive controls prove the path works at all.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from hiclaw.config import SkillsConfig
from hiclaw.errors import HiclawError
from hiclaw.registry.client import RegistryClient
from hiclaw.registry.http import NOT_REACHABLE, FetchPolicy, HttpFetcher, PinnedTransport, blocked_reason
from hiclaw.registry.service import SkillService
from hiclaw.testing.registry import skill_md
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import running_team, wait_until

MAX_BYTES = 1024 * 1024


class Recorder:
    """A stand-in internal service on loopback (IPv4 and, when it can, IPv6 on the same port):
    counts every TCP connection and answers anything with a secret."""

    def __init__(self) -> None:
        self.connections = 0
        self.secret = "internal-secret-" + os.urandom(8).hex()
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def start(self, port: int = 0) -> Recorder:
        for _ in range(20):
            v4 = await asyncio.start_server(self._handle, "127.0.0.1", port)
            self.port = v4.sockets[0].getsockname()[1]
            try:
                v6 = await asyncio.start_server(self._handle, "::1", self.port)
            except OSError:
                if port:  # a fixed port: keep IPv4 only
                    self._servers = [v4]
                    return self
                v4.close()
                await v4.wait_closed()
                continue
            self._servers = [v4, v6]
            return self
        raise RuntimeError("no port free on both 127.0.0.1 and ::1")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = json.dumps({"skills": [], "secret": self.secret}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers = []


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = await Recorder().start()
    try:
        yield rec
    finally:
        await rec.stop()


def address_forms(port: int) -> list[str]:
    """Base URLs that all mean "this machine, port ``port``" (or another internal address)."""
    forms = ["127.1", "2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.0.0.1", "[::ffff:127.0.0.1]",
             "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]", "[::1]", "0.0.0.0", "[::]", "localhost", "localhost.",
             "[2002:7f00:1::]", "[64:ff9b::7f00:1]", "169.254.169.254", "100.64.0.1", "10.0.0.1", "192.168.0.1"]
    hostname = socket.gethostname()  # on most machines another name of this host, e.g. 127.0.1.1
    try:
        local = {info[4][0] for info in socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)}
    except OSError:
        local = set()
    if local and all(ipaddress.ip_address(a).is_loopback for a in local):
        forms.append(hostname)
    return [f"http://{host}:{port}" for host in forms]


def sources(port: int) -> list[str]:
    """Every kind of source a worker can name, aimed at internal addresses: well-known bases,
    archives, git repositories (https and http)."""
    bases = address_forms(port)
    found = [*bases, *(f"{b}/skills.tar.gz" for b in bases[:6])]
    found += [b.replace("http://", "https://") + "/repo.git" for b in bases[:6]]
    found += [f"https://localhost:{port}/repo.git", f"http://u:p@127.0.0.1:{port}/x", f"https://{socket.gethostname()}:{port}/r.git"]
    return found


# ---------------------------------------------------------------------- the address check


BLOCKED = ["127.0.0.1", "127.255.255.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
           "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.0.8",
           "198.18.0.1", "::1", "::", "fe80::1", "fe80::1%1", "fc00::1", "fd12:3456::1", "ff02::1", "fec0::1",
           "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::10.0.0.1",
           "2002:7f00:1::", "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "64:ff9b::7f00:1",
           "64:ff9b::a9fe:a9fe", "2001:db8::1", "100::1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("address", BLOCKED)
def test_internal_addresses_in_every_notation_are_blocked(address):
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert blocked_reason(ipaddress.ip_address(address)) is None


# ---------------------------------------------------------------------- what a worker can name


async def test_every_internal_address_form_is_refused_without_a_connection(skills_registry, recorder, tmp_path):
    """Each source form, with the team's own (loopback) registry configured: refused with the one
    uniform line, and the internal service never sees a connection."""
    skills_registry.publish("acme", "tools", "pdf-forms", description="Fill PDF forms.")
    svc = SkillService(SkillsConfig(api_url=skills_registry.url))
    try:
        outcomes: dict[str, str] = {}
        for source in sources(recorder.port):
            try:
                result = await svc.add("mallory", source, "pdf-forms", tmp_path / "skills")
                outcomes[source] = f"INSTALLED {result}"
            except HiclawError as exc:
                text = str(exc)
                outcomes[source] = "refused" if text.startswith("cannot fetch ") and f": {NOT_REACHABLE} — " in text else text
                assert recorder.secret not in text
        assert outcomes == dict.fromkeys(outcomes, "refused")
        assert recorder.connections == 0
        # positive control: the configured registry (loopback too) still works, by name and by URL
        assert (await svc.add("mallory", "acme/tools@pdf-forms", None, tmp_path / "skills"))["name"] == "pdf-forms"
        assert (await svc.add("mallory", skills_registry.url, "pdf-forms", tmp_path / "skills2"))["name"] == "pdf-forms"
    finally:
        await svc.aclose()


async def test_the_error_is_the_same_for_an_open_and_a_closed_port(skills_registry, tmp_path):
    """No port-scan oracle: the same source gives byte-identical text whether something listens."""
    svc = SkillService(SkillsConfig(api_url=skills_registry.url))
    rec = await Recorder().start()
    port = rec.port
    try:
        urls = [f"http://127.1:{port}", f"http://{socket.gethostname()}:{port}/x.tar.gz", f"http://localhost:{port}",
                f"https://2130706433:{port}/r.git"]

        async def errors() -> list[str]:
            found = []
            for url in urls:
                with pytest.raises(HiclawError) as caught:
                    await svc.add("mallory", url, "x", tmp_path / "skills")
                found.append(str(caught.value))
            return found

        while_open = await errors()
        assert rec.connections == 0
        await rec.stop()
        while_closed = await errors()
        assert while_open == while_closed
        assert all(NOT_REACHABLE in text for text in while_open)
    finally:
        await rec.stop()
        await svc.aclose()


async def test_refused_by_policy_connection_refused_and_timeout_read_the_same(recorder):
    """The three ways a fetch fails, on the same URL, are byte-identical to the caller."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers; done when the client gives up
        writer.close()

    hang = await asyncio.start_server(hold, "127.0.0.1", 0)
    hang_port = hang.sockets[0].getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    async def text(url: str, policy: FetchPolicy) -> str:
        async with HttpFetcher(policy=policy, timeout=0.5, retries=1) as fetcher:
            with pytest.raises(HiclawError) as caught:
                await fetcher.get(url, max_bytes=MAX_BYTES)
        return str(caught.value).replace(url, "URL")

    try:
        timeout = await text(f"http://127.0.0.1:{hang_port}/x", FetchPolicy([f"http://127.0.0.1:{hang_port}"]))
        refused = await text(f"http://127.0.0.1:{closed_port}/x", FetchPolicy([f"http://127.0.0.1:{closed_port}"]))
        policy = await text(f"http://127.1:{recorder.port}/x", FetchPolicy())
        unknown = await text("http://no-such-host.invalid/x", FetchPolicy())
        assert timeout == refused == policy == unknown == f"cannot fetch URL: {NOT_REACHABLE} — " + \
            "the control plane's log has the reason; an admin can trust a registry in [skills] trusted_origins"
        assert recorder.connections == 0
    finally:
        hang.close()
        await hang.wait_closed()


# ---------------------------------------------------------------------- what a registry answers


class HostileOrigin:
    """A trusted origin (the admin's registry) whose answers point inside: redirects and
    well-known artifact URLs aimed at the recorder."""

    def __init__(self, internal_port: int) -> None:
        self.internal = internal_port
        self.url = ""
        self.skill = skill_md("demo", "A demo skill.").encode()
        self._runner: web.AppRunner | None = None

    async def start(self) -> HostileOrigin:
        app = web.Application()
        app.router.add_get("/{prefix}/.well-known/{rest:.*}", self._handle)
        app.router.add_get("/{prefix}/x.tar.gz", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _index(self, url: str, content: bytes) -> web.Response:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        return web.json_response({"$schema": "https://schemas.agentskills.io/discovery/0.2.0/schema.json", "skills": [
            {"name": "demo", "description": "A demo skill.", "type": "skill-md", "url": url, "digest": digest}]})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        prefix, rest = request.match_info["prefix"], request.match_info.get("rest", "")
        inside = f"127.0.0.1:{self.internal}"
        targets = {"to-loopback": f"http://{inside}{request.path}", "to-127.1": f"http://127.1:{self.internal}/x",
                   "to-v6": f"http://[::1]:{self.internal}/x", "to-name": f"http://localhost:{self.internal}/x",
                   "to-file": "file:///etc/passwd", "to-gopher": f"gopher://{inside}/x",
                   "to-https-same-host": f"https://{inside}/x"}
        if prefix in targets:
            raise web.HTTPFound(targets[prefix])
        if prefix == "relative-up":  # a relative Location that climbs to the internal origin's form
            raise web.HTTPFound(f"//127.1:{self.internal}/x")
        if prefix == "loop":
            raise web.HTTPFound(request.path)
        if prefix == "artifact-inside" and rest == "agent-skills/index.json":
            return self._index(f"http://127.1:{self.internal}/demo/SKILL.md", self.skill)
        if prefix == "stays" and rest == "agent-skills/index.json":  # a redirect on the trusted origin itself
            raise web.HTTPFound("/good/.well-known/agent-skills/index.json")
        if prefix == "good" and rest == "agent-skills/index.json":
            return self._index("demo/SKILL.md", self.skill)
        if prefix in ("good", "stays") and rest == "agent-skills/demo/SKILL.md":
            return web.Response(body=self.skill)
        raise web.HTTPNotFound()


async def test_redirects_and_registry_answers_cannot_point_inside(recorder, tmp_path):
    origin = await HostileOrigin(recorder.port).start()
    svc = SkillService(SkillsConfig(api_url=origin.url))
    try:
        outcomes = {}
        for prefix in ("to-loopback", "to-127.1", "to-v6", "to-name", "to-file", "to-gopher", "to-https-same-host",
                       "relative-up", "loop", "artifact-inside"):
            try:
                await svc.add("mallory", f"{origin.url}/{prefix}", "demo", tmp_path / "skills")
                outcomes[prefix] = "INSTALLED"
            except HiclawError as exc:
                outcomes[prefix] = "refused" if NOT_REACHABLE in str(exc) or "redirected more than" in str(exc) else str(exc)
                assert recorder.secret not in str(exc)
        assert outcomes == dict.fromkeys(outcomes, "refused")
        assert recorder.connections == 0
        assert not (tmp_path / "skills" / "demo").exists()
        # positive control: a redirect that stays on the trusted origin is followed
        assert (await svc.add("mallory", f"{origin.url}/stays", "demo", tmp_path / "skills"))["name"] == "demo"
    finally:
        await svc.aclose()
        await origin.stop()


def _bare_repo(root: Path) -> Path:
    """A bare git repository holding one skill."""
    work, bare = root / "work", root / "repo.git"
    (work / "demo").mkdir(parents=True)
    (work / "demo" / "SKILL.md").write_text(skill_md("demo", "A demo skill."))
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull}
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q", str(work)], ["-C", str(work), "add", "."], ["-C", str(work), "commit", "-qm", "skill"],
                 ["clone", "-q", "--bare", str(work), str(bare)]):
        subprocess.run(["git", *ident, *args], env=env, check=True, capture_output=True, timeout=60)
    return bare


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
async def test_git_sources_are_guarded_too(recorder, tmp_path):
    """``git clone`` for a worker: internal hosts refused before git runs, redirects not followed
    (a trusted git host answering 302 to an internal port gets nowhere); a trusted origin clones."""
    bare = _bare_repo(tmp_path)
    app = web.Application()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{recorder.port}/repo.git/{request.match_info['tail']}")

    async def smart_http(request: web.Request) -> web.StreamResponse:
        """git's own server side (``git http-backend``, CGI) for the bare repository."""
        env = {"PATH": os.environ.get("PATH", os.defpath), "GIT_PROJECT_ROOT": str(bare.parent),
               "GIT_HTTP_EXPORT_ALL": "1", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
               "REQUEST_METHOD": request.method, "PATH_INFO": request.path, "QUERY_STRING": request.query_string,
               "CONTENT_TYPE": request.headers.get("Content-Type", ""), "GIT_PROTOCOL": request.headers.get("Git-Protocol", "")}
        proc = await asyncio.create_subprocess_exec("git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate(await request.read())
        head, _, body = out.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if ": " in line)
        status = int(headers.pop("Status", "200").split()[0])
        return web.Response(status=status, body=body, headers=headers)

    app.router.add_get("/moved.git/{tail:.*}", redirect)
    app.router.add_route("*", "/repo.git/{tail:.*}", smart_http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    client = RegistryClient(origin, policy=FetchPolicy([origin]))
    try:
        for url in (f"{origin}/moved.git", f"http://127.1:{recorder.port}/repo.git",
                    f"http://localhost:{recorder.port}/repo.git", f"https://[::ffff:127.0.0.1]:{recorder.port}/r.git"):
            with pytest.raises(HiclawError, match=NOT_REACHABLE):
                await client.fetch(url, "demo")
        assert recorder.connections == 0
        fetched = await client.fetch(f"{origin}/repo.git", "demo")  # control: the guarded clone itself works
        assert [s.name for s in fetched] == ["demo"]
    finally:
        await client.aclose()
        await runner.cleanup()


# ---------------------------------------------------------------------- the pinned connection


class Listener:
    """A loopback HTTP(S) server that records connections, Host headers and TLS server names."""

    def __init__(self, host: str, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.connections = 0
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        self._server: asyncio.Server | None = None
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)  # type: ignore[assignment,misc]

    async def start(self) -> Listener:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            self.hosts += [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("host:")]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(self.host), self.host.encode()))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _certificate(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a self-signed certificate of ``name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_the_connection_goes_to_the_checked_address_not_a_new_lookup(tmp_path):
    """DNS rebinding: the name's checked answer is 127.0.0.2 (a second server on the same port),
    while a fresh lookup of ``localhost`` would give 127.0.0.1. The connection must go to the
    checked address, with ``Host`` still the name; over TLS, SNI and the certificate check use the
    name too (``pinned.test`` resolves nowhere, so a lookup by name could not even connect)."""
    server_tls, client_tls = _certificate(tmp_path, "pinned.test")
    checked = await Listener("127.0.0.2").start()
    lookup = await Listener("127.0.0.1", checked.port).start()
    secure = await Listener("127.0.0.2", tls=server_tls).start()
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.2"]

    try:
        async with httpx.AsyncClient(transport=PinnedTransport(resolve, ssl_context=client_tls), timeout=5) as client:
            plain = await client.get(f"http://localhost:{checked.port}/x")
            tls = await client.get(f"https://pinned.test:{secure.port}/x")
        assert plain.text == tls.text == "127.0.0.2"
        assert (checked.connections, lookup.connections) == (1, 0)
        assert checked.hosts == [f"localhost:{checked.port}"]
        assert secure.hosts == [f"pinned.test:{secure.port}"] and secure.server_names == ["pinned.test"]
        assert asked == [("localhost", checked.port), ("pinned.test", secure.port)]
    finally:
        for listener in (checked, lookup, secure):
            await listener.stop()


async def test_a_name_resolving_locally_is_refused_at_connect(recorder):
    """The real resolver path: a name (not a number) that resolves to loopback is checked after
    resolution, on the connection itself — also when reached by a redirect-free plain fetch."""
    async with HttpFetcher(policy=FetchPolicy(), retries=1) as fetcher:
        for name in ("localhost", socket.gethostname()):
            with pytest.raises(HiclawError, match=NOT_REACHABLE):
                await fetcher.get(f"http://{name}:{recorder.port}/", max_bytes=MAX_BYTES)
    assert recorder.connections == 0
    # control: the same fetcher trusting that exact origin does connect
    async with HttpFetcher(policy=FetchPolicy([f"http://localhost:{recorder.port}"]), retries=1) as fetcher:
        status, body, _ = await fetcher.get(f"http://localhost:{recorder.port}/", max_bytes=MAX_BYTES)
    assert status == 200 and recorder.secret.encode() in body and recorder.connections == 1


# ---------------------------------------------------------------------- from inside a real worker


ATTACK = r'''
import json, os, urllib.error, urllib.request
spec = {}
for pid in ["self"] + os.listdir("/proc"):
    try:
        for item in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
            if item.startswith(b"HICLAW_WORKER_SPEC="):
                spec = json.loads(item.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
    if spec:
        break
for source in json.loads(os.environ["SOURCES"]):
    request = urllib.request.Request(spec["control_url"] + "/v1/skills/add", method="POST",
                                     data=json.dumps({"source": source, "skill": "demo"}).encode(),
                                     headers={"Authorization": "Bearer " + spec["control_token"],
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    print("ANSWER " + json.dumps({"source": source, "status": status, "text": text}))
'''


def worker_scenario(port: int) -> dict[str, Any]:
    direct = [f"http://2130706433:{port}", f"http://[::ffff:127.0.0.1]:{port}", f"http://localhost:{port}/s.tar.gz",
              f"https://0x7f.1:{port}/r.git", f"http://{socket.gethostname()}:{port}", f"http://127.1:{port}/s.zip"]
    command = f"SOURCES='{json.dumps(direct)}' {sys.executable} - <<'PYEOF'\n{ATTACK}\nPYEOF"

    def call(name: str, **arguments: Any) -> list[dict[str, Any]]:
        return [{"name": name, "arguments": arguments}]

    return {"agents": {"mallory": {"turns": [
        {"when": {"contains": "attack"}, "tool_calls": call("skills_add", source=f"http://127.1:{port}", skill="demo")},
        {"when": {"tool_result": "skills_add", "regex": r"(?s)(?P<tool_out>.*)"},
         "tool_calls": call("run_command", command=command, timeout_seconds=300)},
        {"when": {"tool_result": "run_command", "regex": r"(?s)(?P<direct_out>.*)"},
         "tool_calls": call("skills_add", source="acme/tools@pdf-forms")},
        {"when": {"tool_result": "skills_add", "regex": r"(?s)(?P<control_out>.*)"}, "text": "attack finished"},
    ]}, "*": {"default": {"text": "ok"}}}}


@pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))
async def test_a_bwrap_worker_cannot_reach_internal_ports_through_skills_add(tmp_path, skills_registry, recorder):
    skills_registry.publish("acme", "tools", "pdf-forms", description="Fill PDF forms.")
    async with running_team(tmp_path / "home", worker_scenario(recorder.port), sandbox="bwrap",
                            registry_url=skills_registry.url) as team:
        await team.plane.provisioner.create_worker("mallory", role="tester")
        room = await team.plane.chat.worker_room("mallory")
        await wait_until(lambda: room in team.admin.room_names, what="the admin in mallory's room")
        await team.admin.send(room, "@mallory attack", mention=team.user_id("mallory"))
        await team.wait_for_message("attack finished", sender="mallory", timeout=180)
        variables = team.model.engine.stats()["agents"]["mallory"]["variables"]

    # through its own tool: refused, one line
    assert f"cannot fetch http://127.1:{recorder.port}: {NOT_REACHABLE}" in variables["tool_out"], variables["tool_out"]
    # straight at the control API with its control token: every source refused the same way
    output = json.loads(variables["direct_out"])["output"]
    answers = [json.loads(line[len("ANSWER "):]) for line in output.splitlines() if line.startswith("ANSWER ")]
    assert len(answers) == 6, variables["direct_out"]
    for answer in answers:
        assert answer["status"] == 400 and NOT_REACHABLE in json.loads(answer["text"])["error"], answer
    assert recorder.secret not in json.dumps(variables)
    assert recorder.connections == 0
    # positive control: the team's own (loopback) registry still installs for this worker
    assert '"pdf-forms"' in variables["control_out"] and "error" not in variables["control_out"], variables["control_out"]
