"""Credentialed HTTP routes through the embedded gateway (issue 17, part 3), on real components.

A real aiohttp upstream on loopback records every request it gets and echoes it back (headers,
query and body — so the credential the gateway adds comes back in the answer); the real embedded
gateway serves the routes over HTTP; hostile paths are sent byte for byte over a raw socket (no
client library normalises them first). The secret is a canary: it must reach the upstream, and
nothing else — not the caller, not an error, not a log line, not the audit table.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import SecretStr

from hiclaw.config import HiclawConfig, Secrets, load_config
from hiclaw.control.access import apply_access, check_access, joined, worker_routes
from hiclaw.errors import ConfigError, PluginError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import embedded
from hiclaw.testing.team import wait_until
from hiclaw.worker.http import WorkerGatewayClient
from hiclaw.worker.spec import EgressGrant
from hiclaw.worker.tools import WorkerTools

CANARY = "egress-canary-" + secrets.token_hex(12)
QUERY_CANARY = "q-canary/" + secrets.token_hex(8) + "+x"  # URL-encoding changes it: redacted in both forms


class Upstream:
    """An API on loopback that records what it receives and echoes it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {"method": request.method, "target": request.raw_path, "headers": dict(request.headers.items()),
                "body": body.decode("utf-8", "replace")}
        self.requests.append(seen)
        if request.path.endswith("/redirect"):
            return web.Response(status=302, headers={"Location": f"http://elsewhere.invalid/?k={CANARY}"})
        headers = {"X-Echo-Auth": request.headers.get("Authorization", ""), "Set-Cookie": "session=abc; Path=/",
                   "X-Plain": "kept"}
        return web.json_response(seen, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return json.dumps(self.requests)


def egress_config(upstream: Upstream, closed_port: int) -> dict[str, Any]:
    return {
        "api": {"base_url": upstream.url + "/base", "secret": "api_token", "header": "Authorization",
                "format": "Bearer {secret}", "methods": ["GET", "POST"], "paths": ["/allowed"], "workers": ["alice"],
                "description": "the test API"},
        "q": {"base_url": upstream.url, "secret": "q_key", "query": "api_key", "workers": ["alice"]},
        "down": {"base_url": f"http://127.0.0.1:{closed_port}", "secret": "q_key", "query": "api_key",
                 "workers": ["alice"]},
    }


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rig(SimpleNamespace):
    upstream: Upstream
    gateway: Any
    alice: str
    bob: str


@pytest_asyncio.fixture
async def rig(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Rig]:
    caplog.set_level(logging.DEBUG, logger="hiclaw.gateway")
    upstream = Upstream()
    await upstream.start()
    config = HiclawConfig.model_validate({"egress": egress_config(upstream, closed_port())})
    values = {"api_token": CANARY, "q_key": QUERY_CANARY}
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda name: SecretStr(values[name]) if name in values else None)
    gateway = host.create("gateway", "embedded-gateway", {"port": 0, "max_body_bytes": 4096},
                          ComponentContext(home=tmp_path, config=config))
    await apply_access(config, gateway, "embedded-gateway", joined(config, ()))
    await gateway.start()
    alice, bob = await gateway.mint_token("alice"), await gateway.mint_token("bob")
    try:
        yield Rig(upstream=upstream, gateway=gateway, alice=alice, bob=bob)
    finally:
        await gateway.stop()
        gateway.store.close()
        assert upstream.runner is not None
        await upstream.runner.cleanup()
    for record in caplog.records:  # the canary sweep of every gateway log line of the test
        line = record.getMessage()
        assert CANARY not in line and QUERY_CANARY not in line and "q-canary" not in line, line


async def raw(port: int, method: str, target: str, *, token: str | None, headers: dict[str, str] | None = None,
              body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request sent byte for byte (the target exactly as given)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = (answer_headers.get(name.strip().lower(), "") + value.strip())
    return int(status_line.split()[1]), answer_headers, rest


def port_of(gateway: Any) -> int:
    return int(gateway.port)


# --------------------------------------------------------------------------- forwarding


async def test_the_upstream_gets_the_credential_and_the_caller_gets_it_redacted(rig):
    status, headers, body = await raw(
        port_of(rig.gateway), "GET", "/egress/api/allowed/items?x=1&y=two",
        token=rig.alice, headers={"Cookie": "c=1", "Proxy-Authorization": "Basic eA==", "X-Forwarded-For": "1.2.3.4",
                                  "X-Hiclaw-Project": "p", "X-Custom": "kept", "Connection": "close, X-Drop",
                                  "X-Drop": "no"})
    assert status == 200
    (seen,) = rig.upstream.requests
    assert seen["target"] == "/base/allowed/items?x=1&y=two"
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert sent["authorization"] == f"Bearer {CANARY}"
    assert sent["x-custom"] == "kept"
    for gone in ("cookie", "proxy-authorization", "x-forwarded-for", "x-hiclaw-project", "x-drop"):
        assert gone not in sent, gone
    assert rig.alice not in rig.upstream.text()  # the worker's own token never leaves the gateway
    # The echo carries the credential back: redacted in the body and in every header.
    assert CANARY not in body.decode() and "[redacted]" in body.decode()
    assert headers["x-echo-auth"] == "Bearer [redacted]"
    assert "set-cookie" not in headers
    assert headers["x-plain"] == "kept"


async def test_a_query_credential_replaces_the_callers_and_is_redacted_in_every_form(rig):
    status, _, body = await raw(port_of(rig.gateway), "GET", "/egress/q/search?api_key=mine&term=a%20b",
                                token=rig.alice)
    assert status == 200
    (seen,) = rig.upstream.requests
    from urllib.parse import parse_qsl, urlsplit

    query = parse_qsl(urlsplit(seen["target"]).query)
    assert query == [("term", "a b"), ("api_key", QUERY_CANARY)]
    text = body.decode()
    assert "q-canary" not in text and "[redacted]" in text


async def test_the_body_is_forwarded_and_capped(rig):
    status, _, _ = await raw(port_of(rig.gateway), "POST", "/egress/api/allowed/new", token=rig.alice,
                             headers={"Content-Type": "application/json"}, body=b'{"a": 1}')
    assert status == 200
    assert rig.upstream.requests[0]["body"] == '{"a": 1}'
    status, _, body = await raw(port_of(rig.gateway), "POST", "/egress/api/allowed/new", token=rig.alice,
                                body=b"x" * 5000)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert len(rig.upstream.requests) == 1


async def test_redirects_are_answered_not_followed(rig):
    status, headers, _ = await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/redirect", token=rig.alice)
    assert status == 302
    assert headers["location"] == "http://elsewhere.invalid/?k=[redacted]"
    assert len(rig.upstream.requests) == 1


# --------------------------------------------------------------------------- refusals

REFUSED = [
    ("bob", "GET", "/egress/api/allowed/x", 403, "route_not_granted"),
    ("alice", "GET", "/egress/nope/x", 404, "route_not_found"),
    ("alice", "DELETE", "/egress/api/allowed/x", 405, "method_not_allowed"),
    ("alice", "GET", "/egress/api/other", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowedness", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/../secret", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/%2e%2e/secret", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/%2E%2e%2fsecret", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed%2f..%2fsecret", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/..;/secret", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed//elsewhere", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/%252e%252e/x", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/%5c..%5cx", 403, "path_not_allowed"),
    ("alice", "GET", "/egress/api/allowed/%00", 403, "path_not_allowed"),
    ("alice", "GET", "/v1/../egress/api/allowed/x", 404, None),
    (None, "GET", "/egress/api/allowed/x", 401, "missing_api_key"),
]


@pytest.mark.parametrize(("who", "method", "target", "status", "code"), REFUSED,
                         ids=[f"{w}-{m}-{t}" for w, m, t, _, _ in REFUSED])
async def test_refused_before_anything_is_contacted(rig, who, method, target, status, code):
    token = {"alice": rig.alice, "bob": rig.bob, None: None}[who]
    got, _, body = await raw(port_of(rig.gateway), method, target, token=token)
    assert got == status, body
    if code is not None:
        error = json.loads(body)["error"]
        assert error["code"] == code
        assert CANARY not in body.decode()
    assert rig.upstream.requests == []


async def test_a_revoked_token_is_refused_on_the_next_call(rig):
    assert (await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/1", token=rig.alice))[0] == 200
    await rig.gateway.revoke_token("alice")
    status, _, body = await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/2", token=rig.alice)
    assert status == 401 and json.loads(body)["error"]["code"] == "token_revoked"
    assert len(rig.upstream.requests) == 1


async def test_a_grant_taken_away_applies_on_the_next_call(rig):
    assert (await raw(port_of(rig.gateway), "GET", "/egress/q/1", token=rig.alice))[0] == 200
    config = rig.gateway.ctx.config
    await rig.gateway.set_egress(config.egress, {"alice": ["api"]})
    assert (await raw(port_of(rig.gateway), "GET", "/egress/q/2", token=rig.alice))[0] == 403
    assert len(rig.upstream.requests) == 1


async def test_an_unreachable_upstream_errs_without_the_credential(rig):
    status, _, body = await raw(port_of(rig.gateway), "GET", "/egress/down/x?k=v", token=rig.alice)
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_unreachable"
    assert "q-canary" not in body.decode() and "q-canary%2F" not in body.decode()


async def test_an_unexpected_failure_shows_neither_its_text_nor_the_secret(rig, monkeypatch):
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError(f"cannot parse http://x/?api_key={CANARY}")

    monkeypatch.setattr(rig.gateway.egress, "forward", broken)
    status, _, body = await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/x", token=rig.alice)
    assert status == 502 and json.loads(body)["error"]["code"] == "internal_error"
    assert CANARY not in body.decode() and "cannot parse" not in body.decode()
    assert (await rig.gateway.egress_calls())[0]["status"] == 502  # the audit has it (and no log line the secret)


async def test_every_call_is_audited_with_its_attribution_and_never_the_secret(rig):
    await rig.gateway.set_assignments("alice", {"task-007": "proj-1"})
    await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/a", token=rig.alice,
              headers={"X-Hiclaw-Task": "task-007"})
    await raw(port_of(rig.gateway), "DELETE", "/egress/api/allowed/a", token=rig.alice)
    await raw(port_of(rig.gateway), "GET", "/egress/q/a?api_key=x", token=rig.alice)
    rows = await rig.gateway.egress_calls()
    assert [(r["consumer"], r["route"], r["method"], r["path"], r["status"]) for r in rows] == [
        ("alice", "q", "GET", "/a", 200), ("alice", "api", "DELETE", "/allowed/a", 405),
        ("alice", "api", "GET", "/allowed/a", 200)]
    assert (rows[2]["task"], rows[2]["project"]) == ("task-007", "proj-1")
    assert rows[1]["error"] == "method_not_allowed"
    assert "canary" not in json.dumps(rows)


def test_the_secret_is_redacted_in_the_forms_an_api_may_echo_it_in():
    from hiclaw.plugins.gateways.embedded.egress import secret_forms
    from hiclaw.plugins.gateways.embedded.errors import Redactor

    redact = Redactor(secret_forms(QUERY_CANARY))
    from urllib.parse import quote, quote_plus

    for form in (QUERY_CANARY, quote(QUERY_CANARY, safe=""), quote_plus(QUERY_CANARY), QUERY_CANARY.replace("/", "\\/")):
        assert redact.data(f'{{"echo": "{form}"}}'.encode()) == b'{"echo": "[redacted]"}', form


def test_the_audit_table_is_added_to_an_older_database(tmp_path):
    import sqlite3

    from hiclaw.plugins.gateways.embedded.store import GatewayStore

    path = tmp_path / "gateway.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE consumers (name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, models TEXT, "
                "budget_usd REAL, spent_usd REAL NOT NULL DEFAULT 0, created_at TEXT NOT NULL, revoked_at TEXT)")
    old.commit()
    old.close()
    for _ in range(2):  # opening again changes nothing
        store = GatewayStore(path)
        store.record_egress({"consumer": "alice", "route": "api", "method": "GET", "path": "/", "status": 200})
        store.close()
    assert [r["consumer"] for r in GatewayStore(path).egress_calls()] == ["alice", "alice"]


# --------------------------------------------------------------------------- the worker's tool


async def test_the_workers_tool_calls_its_route_through_the_gateway(rig):
    client = WorkerGatewayClient(rig.gateway.base_url, rig.alice)
    grants = [EgressGrant(**g) for g in worker_routes(rig.gateway.ctx.config, "alice")]
    runtime = SimpleNamespace(name="alice", spec=SimpleNamespace(egress=grants), gateway=client, current=None)
    tools = {t.name: t for t in WorkerTools(runtime).specs()}
    try:
        answer = await tools["http_request"].handler({"route": "api", "method": "post", "path": "allowed/x",
                                                      "query": {"a": "1"}, "body": "hello",
                                                      "headers": {"Authorization": "Bearer forged"}})
        assert answer["status"] == 200
        assert CANARY not in answer["body"] and "[redacted]" in answer["body"]
        seen = rig.upstream.requests[0]
        assert (seen["method"], seen["target"], seen["body"]) == ("POST", "/base/allowed/x?a=1", "hello")
        assert "forged" not in rig.upstream.text()
        refused = await tools["http_request"].handler({"route": "api", "path": "/../x"})
        assert refused["status"] in (403, 404)  # aiohttp may resolve '..' itself; the gateway refuses either way
        with pytest.raises(Exception, match="not granted"):
            await tools["http_request"].handler({"route": "other"})
    finally:
        await client.aclose()
    assert len(rig.upstream.requests) == 1


def test_only_a_worker_granted_a_route_gets_the_tool():
    plain = [t.name for t in WorkerTools(SimpleNamespace(name="bob", spec=SimpleNamespace(egress=[]))).specs()]
    granted = WorkerTools(SimpleNamespace(name="alice", spec=SimpleNamespace(egress=[EgressGrant(name="api")]))).specs()
    assert "http_request" not in plain
    assert [t.name for t in granted] == [*plain, "http_request"]
    assert "api (GET under /)" in granted[-1].description


# --------------------------------------------------------------------------- configuration


def write_config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


ROUTE = '[egress.gh]\nbase_url = "https://api.github.com"\nsecret = "gh_token"\nheader = "Authorization"\n'


@pytest.mark.parametrize(("extra", "words"), [
    ("bogus = 1\n", "unknown key 'egress.gh.bogus'"),
    ('methods = ["TRACE"]\n', "methods must be some of"),
    ('paths = ["/a/../b"]\n', "path prefix"),
    ('paths = ["no-slash"]\n', "path prefix"),
    ('workers = ["Not A Name"]\n', "is not a worker name"),
    ('query = "api_key"\n', "exactly one of `header` and `query`"),
    ('format = "Bearer"\n', "must contain {secret}"),
])
def test_config_errors_are_one_line_and_name_the_key(tmp_path, extra, words):
    write_config(tmp_path, ROUTE + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={})
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://x.org", "https://user:pw@x.org", "https://x.org/?a=1", "https://",
                                 "https://x.org:99999", "x.org/api"])
def test_a_bad_base_url_is_refused(tmp_path, url):
    write_config(tmp_path, ROUTE.replace("https://api.github.com", url))
    with pytest.raises(ConfigError, match="base_url"):
        load_config(tmp_path, environ={})


def test_a_route_whose_secret_is_not_set_names_the_fix(tmp_path):
    write_config(tmp_path, ROUTE + 'workers = ["alice"]\n')
    config = load_config(tmp_path, environ={})
    with pytest.raises(ConfigError) as caught:
        check_access(config, Secrets.load(tmp_path, environ={}))
    assert "egress route 'gh' needs the secret 'gh_token', which is not set" in str(caught.value)
    assert "GH_TOKEN" in (caught.value.hint or "")
    check_access(config, Secrets.load(tmp_path, environ={"GH_TOKEN": "x"}))  # set: fine
    assert config.egress_grants() == {"alice": ["gh"]}


async def test_a_gateway_without_egress_support_refuses_a_configured_route():
    config = HiclawConfig.model_validate({"egress": {"gh": {"base_url": "https://api.github.com", "secret": "gh",
                                                            "header": "Authorization"}}})
    with pytest.raises(PluginError, match=r"gateway 'embedded-gateway' \(plugin thirdparty\) cannot serve \[egress\]"):
        await apply_access(config, object(), "thirdparty", joined(config, ()))
    await apply_access(HiclawConfig(), object(), "thirdparty", joined(HiclawConfig(), ()))  # nothing configured: nothing needed


# --------------------------------------------------------------------------- approvals


async def desk_on(rig: Rig, tmp_path: Path, **policy: Any) -> Any:
    from hiclaw.config import ApprovalsConfig
    from hiclaw.control.approvals import ApprovalDesk
    from hiclaw.state import StateDB

    async def flush() -> None:  # the cards stay in the state DB's outbox (no chat here)
        return None

    state = StateDB(tmp_path / "state.db")
    desk = ApprovalDesk(state=state, policy=ApprovalsConfig.model_validate({"hold_seconds": 0.2, **policy}),
                        admin="admin", flush=flush)
    rig.gateway.set_approvals(desk.review)
    return desk


def http_tool(rig: Rig) -> tuple[Any, WorkerGatewayClient]:
    client = WorkerGatewayClient(rig.gateway.base_url, rig.alice)
    grants = [EgressGrant(**g) for g in worker_routes(rig.gateway.ctx.config, "alice")]
    runtime = SimpleNamespace(name="alice", spec=SimpleNamespace(egress=grants), gateway=client, current=None)
    return {t.name: t for t in WorkerTools(runtime).specs()}["http_request"], client


async def test_smart_approvals_hold_a_post_until_approved_and_send_it_once(rig, tmp_path):
    desk = await desk_on(rig, tmp_path, level="smart")
    tool, client = http_tool(rig)
    try:
        assert (await tool.handler({"route": "api", "path": "/allowed/read"}))["status"] == 200  # GET: alone
        assert desk.state.approvals() == [] and len(rig.upstream.requests) == 1
        call = asyncio.create_task(tool.handler({"route": "api", "method": "POST", "path": "/allowed/x", "body": "hi"}))
        pending = await wait_until(lambda: desk.state.approvals(states=["pending"]), timeout=10, what="the approval")
        assert (pending[0].kind, pending[0].target) == ("egress", "api/POST /allowed/x")
        assert json.loads(pending[0].arguments)["body"] == "hi"
        assert len(rig.upstream.requests) == 1  # not sent while it waits
        await desk.decide(pending[0].id, approve=True)
        answer = await asyncio.wait_for(call, timeout=10)
        assert answer["status"] == 200 and CANARY not in answer["body"]
        assert [r["method"] for r in rig.upstream.requests] == ["GET", "POST"]
        # The same call sent again (same call id, headers and body) gets the stored answer; nothing is
        # sent twice.
        again = await raw(port_of(rig.gateway), "POST", "/egress/api/allowed/x", token=rig.alice,
                          headers={"X-Hiclaw-Call-Id": desk.state.approval(pending[0].id).call_id,
                                   "Content-Type": rig.upstream.requests[1]["headers"]["Content-Type"]}, body=b"hi")
        assert again[0] == 200 and len(rig.upstream.requests) == 2
    finally:
        await client.aclose()
        desk.state.close()


async def test_a_denied_request_answers_the_reason_and_is_never_sent(rig, tmp_path):
    desk = await desk_on(rig, tmp_path, level="strict")
    tool, client = http_tool(rig)
    try:
        call = asyncio.create_task(tool.handler({"route": "api", "path": "/allowed/x"}))
        pending = await wait_until(lambda: desk.state.approvals(states=["pending"]), timeout=10, what="the approval")
        await desk.decide(pending[0].id, approve=False, note="not this week")
        answer = await asyncio.wait_for(call, timeout=10)
        assert answer["status"] == 403 and "not this week" in answer["body"] and "denied" in answer["body"]
        assert rig.upstream.requests == []
        # Without a call id a guarded request cannot wait: refused, not sent.
        status, headers, body = await raw(port_of(rig.gateway), "GET", "/egress/api/allowed/y", token=rig.alice)
        assert status == 403 and headers.get("x-hiclaw-approval") == "denied" and b"call id" in body
        assert rig.upstream.requests == []
    finally:
        await client.aclose()
        desk.state.close()


async def test_an_approved_call_id_sent_with_other_arguments_runs_nothing(rig, tmp_path):
    """A hostile worker waits for the admin's yes, then sends the approved call id with another body."""
    desk = await desk_on(rig, tmp_path, level="smart")
    port = port_of(rig.gateway)
    try:
        status, headers, _ = await raw(port, "POST", "/egress/api/allowed/x", token=rig.alice,
                                       headers={"X-Hiclaw-Call-Id": "c1"}, body=b"harmless")
        assert status == 202 and headers.get("x-hiclaw-approval") == "pending"
        await desk.decide("apr-1", approve=True)
        swapped = await raw(port, "POST", "/egress/api/allowed/x", token=rig.alice,
                            headers={"X-Hiclaw-Call-Id": "c1"}, body=b"rm -rf everything")
        assert swapped[0] == 403 and b"belongs to another call" in swapped[2]
        other_path = await raw(port, "POST", "/egress/api/allowed/elsewhere", token=rig.alice,
                               headers={"X-Hiclaw-Call-Id": "c1"}, body=b"harmless")
        assert other_path[0] == 403
        assert rig.upstream.requests == []
        # Another worker's token with the same call id is another call: its own approval, not alice's.
        bob_try = await raw(port, "POST", "/egress/api/allowed/x", token=rig.bob,
                            headers={"X-Hiclaw-Call-Id": "c1"}, body=b"harmless")
        assert bob_try[0] == 403 and rig.upstream.requests == []  # bob is not granted the route at all
        ran = await raw(port, "POST", "/egress/api/allowed/x", token=rig.alice,
                        headers={"X-Hiclaw-Call-Id": "c1"}, body=b"harmless")
        assert ran[0] == 200 and [r["body"] for r in rig.upstream.requests] == ["harmless"]
    finally:
        desk.state.close()
