"""Credentialed HTTP routes (``[egress.<name>]``): ``ANY /egress/<route>/<path>`` on the gateway.

A worker has no network; for an API without an MCP server the admin configures a route (base URL,
the secret and where it goes, allowed methods and path prefixes) and grants it to workers. The
gateway checks, in this order and before contacting anything — consumer token (401), route
exists (404), granted to this consumer (403), method allowed (405), path well formed and under an
allowed prefix (403), body size (413) — then calls the upstream with the credential added.

The path is checked on the raw request target, never a normalised copy: ``.``/``..`` segments
(also as ``..;``), ``//``, backslashes, control characters and percent-encoded ``/``, ``\\``,
``.`` or ``%`` are refused, so the path the prefixes are checked against is the one the upstream
sees. The caller's ``Authorization``, ``Cookie``, ``Proxy-*``, ``X-Hiclaw-*``, forwarding and
hop-by-hop headers are never forwarded; redirects are not followed; no cookie is kept. In the
answer ``Set-Cookie`` is dropped and the secret (raw and URL-encoded) is replaced by
``[redacted]`` in every header and in the body. Every call with a valid token is written to the
``egress_calls`` table with its consumer, route, method, path, status and task/project.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, unquote_to_bytes, urlencode, urlsplit

from aiohttp import web
from pydantic import SecretStr

from hiclaw.errors import ConfigError
from hiclaw.plugins.gateways.embedded.errors import GatewayHTTPError, Redactor
from hiclaw.protocols import APPROVAL_HEADER, CALL_ID_HEADER, Review

log = logging.getLogger("hiclaw.gateway")

PREFIX = "/egress/"
ROUTE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade"})
#: Request headers never passed on (besides hop-by-hop ones and those the Connection header names).
NOT_FORWARDED = frozenset({"authorization", "cookie", "cookie2", "host", "content-length", "forwarded", "via",
                           "accept-encoding", "expect"})
NOT_FORWARDED_PREFIXES = ("proxy-", "x-hiclaw-", "x-forwarded-", "x-real-ip",
                          # "this POST (or GET) is a DELETE": the method the route, the level and the
                          # admin's card go by would not be the one the API acts on
                          "x-http-method", "x-method-override")
#: Headers an approval is not bound to (they pick how the answer is shown, not what is done).
NOT_BOUND = frozenset({"user-agent", "accept", "accept-language", "accept-encoding"})
#: Response headers never passed back (the body is re-framed and decompressed here).
NOT_RETURNED = frozenset({"set-cookie", "set-cookie2", "content-length", "content-encoding"})
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
FORBIDDEN_ESCAPES = frozenset(b"/\\.%")


@dataclass(frozen=True)
class EgressTarget:
    """A route ready to serve: its config, the credential to inject and what redacts it."""

    name: str
    route: Any  # hiclaw.config.EgressRoute
    credential: str
    redact: Redactor


@dataclass
class EgressCall:
    """What the audit table gets about one call."""

    consumer: str
    route: str
    method: str
    path: str
    started: float
    task: str | None = None
    project: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0


def refuse(status: int, message: str, code: str, *, headers: dict[str, str] | None = None) -> GatewayHTTPError:
    return GatewayHTTPError(status, message, code=code, kind="permission_error" if status == 403 else "invalid_request_error",
                            headers=headers)


def split_target(raw_target: str) -> tuple[str, str, str]:
    """``/egress/<route><path>?<query>`` (raw) → (route, raw path, raw query); 404 for anything else."""
    raw_path, _, query = raw_target.partition("?")
    if not raw_path.startswith(PREFIX):
        raise refuse(404, "egress routes are served at /egress/<route>/<path>", "route_not_found")
    name, slash, tail = raw_path[len(PREFIX):].partition("/")
    if not ROUTE_NAME.match(name):
        raise refuse(404, "no such egress route (names are lower-case letters, digits, '_' or '-')", "route_not_found")
    return name, slash + tail if slash else "/", query


def check_path(raw: str) -> str:
    """The decoded path of raw path ``raw``, if it is one the prefixes can be checked against
    honestly; else a 403 naming what is wrong."""
    def bad(why: str) -> GatewayHTTPError:
        return refuse(403, f"path refused: {why}", "path_not_allowed")

    if any(not 0x21 <= ord(c) <= 0x7E for c in raw) or "#" in raw:
        raise bad("control characters, spaces, '#' or raw non-ASCII bytes (percent-encode them)")
    if "\\" in raw:
        raise bad("backslashes are not allowed")
    if "//" in raw:
        raise bad("empty segments ('//') are not allowed")
    if raw.count("%") != len(ESCAPE.findall(raw)):
        raise bad("malformed percent-encoding")
    for escape in ESCAPE.findall(raw):
        byte = int(escape, 16)
        if byte in FORBIDDEN_ESCAPES or byte < 0x20 or byte == 0x7F:
            raise bad("percent-encoded '/', '\\', '.', '%' or control characters are not allowed")
    for segment in raw.split("/")[1:]:
        if segment.split(";", 1)[0] in (".", ".."):
            raise bad("'.' and '..' segments are not allowed")
    return unquote_to_bytes(raw).decode("utf-8", errors="replace")


def connection_names(headers: Any) -> set[str]:
    """The header names every ``Connection`` header lists (hop-by-hop too, RFC 9110 7.6.1)."""
    return {h.strip().lower() for value in headers.getall("Connection", []) for h in value.split(",") if h.strip()}


def under(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one, by whole segments."""
    for prefix in prefixes:
        stem = prefix.rstrip("/")
        if not stem or path == stem or path.startswith(stem + "/"):
            return True
    return False


def secret_forms(value: str) -> list[SecretStr]:
    """The secret as it may come back: raw, URL-encoded (as a query parameter is) and JSON-escaped."""
    escaped = json.dumps(value)[1:-1]
    forms = (value, quote(value, safe=""), quote_plus(value), escaped, escaped.replace("/", "\\/"))
    return [SecretStr(form) for form in dict.fromkeys(forms)]


class EgressProxy:
    """The routes, the grants and the upstream session of one gateway."""

    def __init__(self, *, secrets: Mapping[str, SecretStr], redact: Redactor, max_body_bytes: int) -> None:
        self.secrets = secrets
        self.redact_all = redact  # every secret of the gateway
        self.max_body_bytes = max_body_bytes
        self.targets: dict[str, EgressTarget] = {}
        self.grants: dict[str, frozenset[str]] = {}
        self.configured = False
        self._session: Any = None
        self.review: Review | None = None  # the control plane's approvals (hiclaw.protocols.ApprovalGate)

    def set(self, routes: Mapping[str, Any], grants: Mapping[str, Sequence[str]]) -> None:
        targets = {}
        for name, route in routes.items():
            secret = self.secrets.get(route.secret)
            if secret is None:
                raise ConfigError(f"egress route {name!r} needs the secret {route.secret!r}, which the gateway was not given",
                                  hint=f"add `{route.secret} = \"…\"` to secrets.toml or export {route.secret.upper()}")
            value = secret.get_secret_value()
            credential = route.format.replace("{secret}", value) if route.header else value
            forms = secret_forms(value) + [SecretStr(v.get_secret_value()) for v in self.secrets.values()]
            targets[name] = EgressTarget(name, route, credential, Redactor(forms))
        unknown = sorted({r for names in grants.values() for r in names} - set(targets))
        if unknown:
            raise ConfigError(f"egress grants name unknown route(s) {', '.join(unknown)}",
                              hint="grant only routes configured as [egress.<name>]")
        self.targets = targets
        self.grants = {consumer: frozenset(names) for consumer, names in grants.items()}
        self.configured = True

    def granted_routes(self, consumer: str) -> list[dict[str, Any]]:
        """The routes ``consumer`` may use, as a worker's ``http_request`` tool describes them."""
        return [{"name": name, "description": t.route.description, "methods": list(t.route.methods),
                 "paths": list(t.route.paths)}
                for name, t in sorted(self.targets.items()) if name in self.grants.get(consumer, ())]

    async def start(self) -> None:
        if self._session is None and self.targets:
            import aiohttp

            # No cookie jar (nothing one worker's call sets reaches another's), no proxy from the environment.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                                  auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ------------------------------------------------------------------ checks

    def target(self, consumer: str, name: str, method: str) -> EgressTarget:
        target = self.targets.get(name)
        if target is None:
            raise refuse(404, f"no egress route {name!r} on this gateway (yours: "
                         f"{', '.join(sorted(self.grants.get(consumer, ()))) or 'none'})", "route_not_found")
        if name not in self.grants.get(consumer, ()):
            raise refuse(403, f"consumer {consumer!r} is not granted egress route {name!r}", "route_not_granted")
        if method not in target.route.methods:
            allowed = ", ".join(target.route.methods)
            raise refuse(405, f"egress route {name!r} allows {allowed}, not {method}", "method_not_allowed",
                         headers={"Allow": allowed})
        return target

    @staticmethod
    def check_prefix(target: EgressTarget, path: str) -> None:
        if not under(path, target.route.paths):
            raise refuse(403, f"path {target.redact(path)[:200]!r} is outside egress route {target.name!r} (allowed: "
                         f"{', '.join(target.route.paths)})", "path_not_allowed")

    async def read_body(self, request: web.Request) -> bytes:
        limit = self.max_body_bytes
        too_large = GatewayHTTPError(413, f"request body is larger than {limit} bytes (gateway max_body_bytes)",
                                     code="request_too_large")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None

    # ------------------------------------------------------------------ forwarding

    @staticmethod
    def headers_out(request: web.Request, target: EgressTarget) -> dict[str, str]:
        named = connection_names(request.headers)
        inject = (target.route.header or "").lower()
        out: dict[str, str] = {}
        for name, value in request.headers.items():
            low = name.lower()
            if low in HOP_BY_HOP or low in NOT_FORWARDED or low in named or low == inject \
                    or low.startswith(NOT_FORWARDED_PREFIXES):
                continue
            out[name] = value
        out["Accept-Encoding"] = "identity"
        if target.route.header:
            out[target.route.header] = target.credential
        return out

    @staticmethod
    def url(target: EgressTarget, raw_path: str, raw_query: str) -> str:
        route = target.route
        base = urlsplit(route.base_url)
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        if route.query:  # the caller cannot set (or shadow) the credential's parameter
            pairs = [(k, v) for k, v in pairs if k != route.query] + [(route.query, target.credential)]
        query = urlencode(pairs, quote_via=quote)
        return f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{raw_path}" + (f"?{query}" if query else "")

    async def forward(self, request: web.Request, target: EgressTarget, raw_path: str, raw_query: str,
                      body: bytes, call: EgressCall) -> web.Response:
        import aiohttp
        from yarl import URL

        route = target.route
        try:
            async with self._session.request(
                    call.method, URL(self.url(target, raw_path, raw_query), encoded=True),
                    headers=self.headers_out(request, target), data=body or None, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=route.timeout_seconds)) as upstream:
                data = bytearray()
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > route.max_response_bytes:
                        raise GatewayHTTPError(502, f"egress route {target.name!r}: the upstream's answer is larger "
                                               f"than {route.max_response_bytes} bytes (max_response_bytes)",
                                               code="response_too_large", kind="upstream_error")
                headers = self.headers_back(upstream.headers, target)
                status = upstream.status
        except TimeoutError:
            raise GatewayHTTPError(504, f"egress route {target.name!r}: the upstream did not answer within "
                                   f"{route.timeout_seconds:g}s", code="upstream_timeout", kind="upstream_error") from None
        except aiohttp.ClientError as exc:  # never its text: it may hold the URL (and a query credential)
            raise GatewayHTTPError(502, f"egress route {target.name!r}: the upstream could not be reached "
                                   f"({type(exc).__name__})", code="upstream_unreachable", kind="upstream_error") from None
        body_back = target.redact.data(bytes(data))
        call.response_bytes = len(body_back)
        return web.Response(status=status, body=body_back, headers=headers)

    @staticmethod
    def headers_back(headers: Any, target: EgressTarget) -> Any:
        from multidict import CIMultiDict

        named = connection_names(headers)
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in headers.items():
            low = name.lower()
            if low in HOP_BY_HOP or low in NOT_RETURNED or low in named or name in target.redact \
                    or low.startswith("x-hiclaw-"):  # an API cannot speak for the gateway ("pending": resend)
                continue
            out.add(name, target.redact(value))
        return out

    # ------------------------------------------------------------------ one call

    async def serve(self, request: web.Request, consumer: str, call: EgressCall) -> web.Response:
        """Check and forward one request (raises :class:`GatewayHTTPError` for every refusal)."""
        name, raw_path, raw_query = split_target(request.raw_path)
        call.route = name
        call.path = raw_path[:512]
        target = self.target(consumer, name, call.method)
        call.path = target.redact(raw_path)[:512]
        path = check_path(raw_path)
        self.check_prefix(target, path)
        body = await self.read_body(request)
        call.request_bytes = len(body)
        if self._session is None:
            await self.start()
        if self.review is not None:
            return await self.reviewed(request, target, raw_path, raw_query, body, call)
        return await self.forward(request, target, raw_path, raw_query, body, call)

    async def reviewed(self, request: web.Request, target: EgressTarget, raw_path: str, raw_query: str,
                       body: bytes, call: EgressCall) -> web.Response:
        """The request through the approvals: forwarded now, the stored answer of an approved
        request (forwarded exactly once), or 202 (waits for the admin: send it again with the same
        ``X-Hiclaw-Call-Id``) / 403 (denied) / 409 (interrupted) with ``X-Hiclaw-Approval``."""
        import base64

        assert self.review is not None

        async def run() -> dict[str, Any]:
            try:
                response = await self.forward(request, target, raw_path, raw_query, body, call)
            except GatewayHTTPError as exc:
                response = exc.response()
            data = response.body if isinstance(response.body, bytes) else b""
            return {"status": response.status, "headers": dict(response.headers),
                    "body": base64.b64encode(data).decode()}

        import hashlib

        # Bound to the whole request (path, query, body bytes, the headers that reach the API), never
        # a capped or decoded copy two requests share; matched on the decoded path (a rule on
        # /admin* also holds /%61dmin: the API decodes it).
        bound = sorted([k.lower(), target.redact(v)] for k, v in self.headers_out(request, target).items()
                       if k.lower() not in NOT_BOUND and k.lower() != (target.route.header or "").lower())
        # Path and query decoded, as the API reads them (what the admin and rules' args see: a rule
        # on "force=true" also holds %66orce=true); raw too when that differs (what is bound).
        path, query = target.redact(check_path(raw_path)), target.redact(unquote_plus(raw_query))
        arguments = {"method": call.method, "path": path, "query": query,
                     "body": target.redact(body.decode("utf-8", errors="replace")),
                     "body_sha256": hashlib.sha256(body).hexdigest(), "headers": bound}  # pairs: X-A and x-a are two
        if raw_path != path:
            arguments["raw_path"] = target.redact(raw_path)
        if raw_query != query:
            arguments["raw_query"] = target.redact(raw_query)
        verdict = await self.review({
            "kind": "egress", "worker": call.consumer, "call_id": request.headers.get(CALL_ID_HEADER, "")[:128],
            "target": f"{target.name}/{call.method} {path}", "method": call.method,
            "task_id": call.task, "project_id": call.project, "arguments": arguments}, run)
        state = verdict["state"]
        if state == "done":
            done = verdict["result"]
            data = base64.b64decode(done.get("body") or "")
            call.response_bytes = len(data)
            headers = {k: v for k, v in (done.get("headers") or {}).items() if k.lower() != "content-length"}
            return web.Response(status=int(done.get("status") or 502), body=data, headers=headers)
        approval = {"id": verdict.get("approval"), "state": state, "reason": verdict.get("reason")}
        if state == "pending":
            return web.json_response({"approval": approval}, status=202, headers={APPROVAL_HEADER: "pending"})
        message = (f"the admin denied this request ({approval['id']}): {approval['reason']}" if state == "denied"
                   else f"this request was not sent ({approval['id']}): {approval['reason']}")
        raise GatewayHTTPError(403 if state == "denied" else 409, message, code=f"approval_{state}",
                               kind="invalid_request_error", headers={APPROVAL_HEADER: state})

    def log_line(self, call: EgressCall, status: int, error: str | None) -> None:
        level = logging.DEBUG if status < 400 else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "%s", self.redact_all(
                f"{call.consumer} egress {call.route or '-'} {call.method} {call.path} {status} "
                f"{(time.perf_counter() - call.started) * 1000:.1f}ms bytes={call.request_bytes}+{call.response_bytes} "
                f"task={call.task or '-'} project={call.project or '-'}" + (f" error={error}" if error else "")))
