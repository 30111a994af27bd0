"""HTTP for registries: timeouts, retries with back-off on 5xx/429/connection errors, body caps.

Every error names the URL it was fetching, so "which registry is broken?" never needs a
traceback.

Fetches a worker can influence (its ``skills_add`` source, and everything a registry answers,
such as a well-known index's artifact URLs) go through a :class:`FetchPolicy`: the URL is
parsed strictly (``http``/``https``, no userinfo), the host is resolved **once**, every address
it resolves to must be globally routable (:func:`blocked_reason`), and the socket is connected
to one of those checked addresses — never to a second resolution of the name (DNS rebinding),
while TLS SNI, certificate checks and ``Host`` keep the name. Redirects are followed here, hop by
hop (at most :data:`MAX_REDIRECTS`), so each hop gets the same check. Only the admin's own
registries (trusted origins: exact scheme, host and port) skip the address check. With a policy,
every network failure — refused by policy, connection refused, timeout, unknown name — reads the
same to the caller (:data:`NOT_REACHABLE`), so a worker learns nothing about internal ports; the
precise reason goes to the control plane's log.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpcore
import httpx

from hiclaw import __version__
from hiclaw.registry.errors import RegistryError, UnsafeSkillError

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
#: Addresses of one name that are tried (each with the connect timeout).
MAX_ADDRESSES = 4
USER_AGENT = f"hiclaw/{__version__} (skills client)"
#: What a guarded fetch says about *any* network failure (the log has the real reason).
NOT_REACHABLE = "not reachable from the team"
NOT_REACHABLE_HINT = "the control plane's log has the reason; an admin can trust a registry in [skills] trusted_origins"

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: IANA special-purpose blocks not globally reachable that Python's ``is_global`` may still pass.
_SPECIAL = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "3fff::/20", "5f00::/16"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = tuple[str, str, int]
#: ``resolve(host, port) -> addresses to connect to`` (already checked).
Resolve = Callable[[str, int], Awaitable[list[str]]]


class FetchRefused(Exception):
    """The outbound policy refused a fetch; the message is the precise reason, for the log only."""


def blocked_reason(address: Address) -> str | None:
    """Why the control plane must not connect to ``address`` on a worker's behalf, or ``None``
    when it is globally routable. IPv6 forms that carry an IPv4 address (mapped, compatible,
    6to4, Teredo, NAT64) are judged by the address they carry too."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "scoped IPv6 address"
        inner: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            inner.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            inner.append(address.sixtofour)
        if address.teredo is not None:
            inner.extend(address.teredo)
        if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
            inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for carried in inner:
            reason = blocked_reason(carried)
            if reason:
                return f"{reason} (carried in {address})"
        if address.is_site_local:
            return "site-local address"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"{kind.replace('_', '-')} address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (CGNAT) address"
    if any(address in network for network in _SPECIAL):
        return "special-purpose address"
    if not address.is_global:
        return "not globally routable"
    return None


def _host_key(host: str) -> str:
    return host.strip("[]").lower()


def parse_origin(url: str | httpx.URL) -> Origin:
    """``(scheme, host, port)`` of ``url``, parsed strictly; raises :class:`FetchRefused` for
    anything but a plain ``http``/``https`` URL with a host (no userinfo, no control characters,
    no backslashes, a port in range)."""
    text = str(url)
    if any(ord(c) < 32 or c in "\\\x7f" for c in text):
        raise FetchRefused("malformed URL (control characters or backslashes)")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchRefused(f"malformed URL ({exc})") from None
    if parsed.scheme not in _DEFAULT_PORTS:
        raise FetchRefused(f"scheme {parsed.scheme!r} is not http or https")
    if parsed.userinfo:
        raise FetchRefused("URL carries userinfo")
    host = parsed.raw_host.decode("ascii", "replace")  # what the connection is opened to (IDNA-encoded)
    if not host:
        raise FetchRefused("URL has no host")
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise FetchRefused(f"port {port} is out of range")
    return parsed.scheme, _host_key(host), port


class FetchPolicy:
    """Where the control plane may connect for a fetch a worker (or a registry) chose.

    ``trusted_origins``: URLs whose exact origin (scheme, host, port) is the admin's own — the
    configured registries and ``[skills] trusted_origins``; they are connected to as configured
    (a registry on loopback or the LAN). Everything else must resolve to globally routable
    addresses only, and is connected to at the address that was checked."""

    def __init__(self, trusted_origins: Iterable[str] = ()) -> None:
        origins = set()
        for url in trusted_origins:
            try:
                origins.add(parse_origin(url))
            except FetchRefused:
                log.warning("skills: ignoring trusted origin %r: not an http(s) origin", url)
        self.trusted: frozenset[Origin] = frozenset(origins)
        self._endpoints = frozenset((host, port) for _, host, port in origins)

    def check_url(self, url: str | httpx.URL) -> bool:
        """Parse ``url`` strictly (:func:`parse_origin`); ``True`` when its origin is trusted (no
        address check needed). An untrusted scheme on a trusted host and port is refused."""
        scheme, host, port = parse_origin(url)
        if (scheme, host, port) in self.trusted:
            return True
        if (host, port) in self._endpoints:
            raise FetchRefused(f"{scheme}://{host}:{port} is not a trusted origin (another scheme is)")
        return False

    def trusts_endpoint(self, host: str, port: int) -> bool:
        return (_host_key(host), port) in self._endpoints

    def literal_refusal(self, url: str) -> str | None:
        """A cheap check before any fetch: why ``url`` is refused on its face (bad form, or a
        numeric host in any notation the resolver accepts — ``127.1``, ``2130706433``,
        ``0x7f.1`` — that is not public), else ``None``. The fetch itself still checks."""
        try:
            if self.check_url(url):
                return None
            _, host, port = parse_origin(url)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except FetchRefused as exc:
            return str(exc)
        except (OSError, UnicodeError):
            return None  # a name, not a number: resolved and checked when fetched
        try:
            self._checked(host, infos)
        except FetchRefused as exc:
            return str(exc)
        return None

    async def addresses(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once and check every address; the addresses to connect to."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise FetchRefused(f"cannot resolve {host!r} ({exc})") from None
        return self._checked(host, infos)

    def addresses_sync(self, host: str, port: int) -> list[str]:
        """:meth:`addresses` for blocking code (a ``git clone`` about to run)."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise FetchRefused(f"cannot resolve {host!r} ({exc})") from None
        return self._checked(host, infos)

    @staticmethod
    def _checked(host: str, infos: list[Any]) -> list[str]:
        found = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
        if not found:
            raise FetchRefused(f"{host!r} resolves to no address")
        for text in found:
            reason = blocked_reason(ipaddress.ip_address(text))
            if reason:
                raise FetchRefused(f"{host!r} resolves to {text}: {reason}")
        return found


class _PinnedNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's network layer, connecting only to the addresses ``resolve`` returned for a
    name (the checked ones) — the name is never resolved again."""

    def __init__(self, resolve: Resolve, trusted: Callable[[str, int], bool]) -> None:
        self._resolve = resolve
        self._trusted = trusted
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: typing.Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if self._trusted(host, port):
            targets = [host]
        else:
            try:
                async with asyncio.timeout(timeout):
                    targets = (await self._resolve(host, port))[:MAX_ADDRESSES]
            except TimeoutError:
                raise FetchRefused(f"resolving {host!r} timed out") from None
        failure: Exception = FetchRefused(f"{host!r} has no address to connect to")
        for target in targets:
            try:
                return await self._inner.connect_tcp(target, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connections go to the addresses ``resolve(host, port)`` returns
    (for a :class:`FetchPolicy`: :meth:`FetchPolicy.addresses`, resolved once and checked), while
    the URL, ``Host`` and TLS (SNI, certificate name) stay the name; no proxies, no unix sockets.
    Endpoints ``trusted(host, port)`` are connected to by name."""

    def __init__(self, resolve: Resolve, *, trusted: Callable[[str, int], bool] = lambda host, port: False,
                 ssl_context: ssl.SSLContext | None = None, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its httpcore pool here without a way to pass a network backend; this is
        # that same pool, with the pinned network layer.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedNetwork(resolve, trusted),
        )


class HttpFetcher:
    """A small async HTTP client; one per command or service (keeps connections alive).

    ``policy``: fetch only what it allows, over a :class:`PinnedTransport` (the control plane,
    fetching for workers); without one (the admin's own CLI) any http(s) URL is fetched."""

    def __init__(
        self,
        *,
        timeout: float = 15.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: FetchPolicy | None = None,
    ) -> None:
        if policy is not None and transport is not None:
            raise ValueError("a guarded fetcher makes its own (pinned) transport")
        self.retries = max(1, retries)
        self.backoff = backoff
        self.policy = policy
        if policy is not None:
            transport = PinnedTransport(policy.addresses, trusted=policy.trusts_endpoint)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,  # followed in _open, hop by hop, each hop checked
            headers={"User-Agent": USER_AGENT},
            transport=transport,
            trust_env=False,  # registries are named explicitly (SKILLS_API_URL); no proxy surprises
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                return min(float(retry_after), 10.0)
        return self.backoff * (2**attempt) * (0.75 + random.random() / 2)

    async def get(
        self,
        url: str,
        *,
        max_bytes: int,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        not_found_ok: bool = False,
    ) -> tuple[int, bytes, dict[str, str]]:
        """GET ``url``; returns ``(status, body, headers)``. Raises :class:`RegistryError` on
        network failure or an error status (404 returned when ``not_found_ok``)."""
        last = ""
        for attempt in range(self.retries):
            response: httpx.Response | None = None
            try:
                async with self._open(url, params, headers) as response:
                    if response.status_code in RETRY_STATUSES and attempt + 1 < self.retries:
                        last = f"HTTP {response.status_code}"
                        await asyncio.sleep(self._delay(attempt, response))
                        continue
                    length = response.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise UnsafeSkillError(f"{url} is {length} bytes (limit {max_bytes})", hint="refusing to download it")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise UnsafeSkillError(f"{url} is larger than {max_bytes} bytes", hint="refusing to download it")
                    status = response.status_code
                    if status == 404 and not_found_ok:
                        return status, bytes(body), dict(response.headers)
                    if status >= 400:
                        raise RegistryError(
                            f"{url} answered HTTP {status}{_detail(bytes(body))}",
                            hint="check the registry URL (SKILLS_API_URL / SKILLS_DOWNLOAD_URL) and the skill name",
                        )
                    return status, bytes(body), dict(response.headers)
            except FetchRefused as exc:
                last = f"refused: {exc}"
                break
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                last = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                if attempt + 1 < self.retries and not isinstance(exc, httpx.InvalidURL):
                    await asyncio.sleep(self._delay(attempt, None))
                    continue
                break
        if self.policy is not None:
            log.warning("skills: cannot fetch %r for a worker: %s", url, last)
            raise RegistryError(f"cannot fetch {url}: {NOT_REACHABLE}", hint=NOT_REACHABLE_HINT)
        raise RegistryError(
            f"cannot reach {url} ({last}) after {self.retries} attempt(s)",
            hint="check that the registry is running and SKILLS_API_URL / SKILLS_DOWNLOAD_URL point at it",
        )

    @asynccontextmanager
    async def _open(self, url: str, params: dict[str, Any] | None,
                    headers: dict[str, str] | None) -> AsyncIterator[httpx.Response]:
        """GET ``url`` (streamed), following at most :data:`MAX_REDIRECTS` redirects; every hop's
        URL is checked by the policy (and its connection pinned by the transport)."""
        current = httpx.URL(url, params=params) if params else httpx.URL(url)
        origin: tuple[str, str, int | None] | None = None
        for _ in range(MAX_REDIRECTS + 1):
            if self.policy is not None:
                self.policy.check_url(current)
            elif current.scheme not in _DEFAULT_PORTS:
                raise FetchRefused(f"scheme {current.scheme!r} is not http or https")
            hop_origin = (current.scheme, current.host, current.port)
            if origin is not None and hop_origin != origin:
                headers = None  # the caller's headers are for the first origin only
            origin = origin or hop_origin
            response = await self._client.send(self._client.build_request("GET", current, headers=headers), stream=True)
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                try:
                    yield response
                finally:
                    await response.aclose()
                return
            await response.aclose()
            try:
                current = current.join(location)
            except (httpx.InvalidURL, ValueError) as exc:
                raise FetchRefused(f"{url} redirected to a malformed URL ({exc})") from None
        raise RegistryError(f"{url} redirected more than {MAX_REDIRECTS} times", hint="is this URL a skills registry?")

    async def get_json(self, url: str, *, max_bytes: int, params: dict[str, Any] | None = None,
                       not_found_ok: bool = False) -> Any:
        status, body, _ = await self.get(url, max_bytes=max_bytes, params=params, not_found_ok=not_found_ok)
        if status == 404:
            return None
        return parse_json(body, url)


def parse_json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{url} did not answer JSON", hint="is this URL a skills registry?") from None


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    message = data.get("error") if isinstance(data, dict) else None
    return f": {' '.join(str(message).split())[:200]}" if message else ""
