"""The console's HTTP server: aiohttp, on its own port (loopback unless ``hiclaw up --lan``).

Request order: security headers on every answer → Host check (against DNS rebinding) → the
login page and the stylesheet are the only things served without a session (a page asks for
/login, anything else answers 401) → every POST must carry the Origin it was served from and
the session's CSRF token, else 403 and nothing happens. A POST body is read only after the
session check (the login form's excepted), and one larger than allowed (an upload: ``[console]
max_upload_mb``; any other form: 256 KiB) is refused by its Content-Length before it is read (413;
a POST without one: 411).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from hiclaw.console.actions import Actions, refused_page
from hiclaw.console.auth import ConsoleAuth, Session
from hiclaw.console.render import esc, page
from hiclaw.console.uploads import OVERHEAD, too_large
from hiclaw.errors import HiclawError

log = logging.getLogger(__name__)

COOKIE = "hiclaw_console"
PUBLIC = frozenset({"/login", "/console.css"})
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    # Not "no-referrer": under it a browser sends `Origin: null` with the console's own form posts,
    # which the Origin check must refuse (tests/test_console_browser.py clicks them in Chromium).
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
SESSION_KEY = web.RequestKey("session", Session)
#: A Host header: a name or an [IPv6] literal, then at most a numeric port.
HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]:@/\s]+)(?::\d{1,5})?$")
#: A form other than an upload: one of a 20,000-character message (chat.MAX_TEXT) of 4-byte
#: characters, percent-encoded, fits.
FORM_BYTES = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset(name: str) -> str:
    return resources.files("hiclaw.console").joinpath(name).read_text()


class ConsoleServer:
    """``plane``: the control plane (:class:`hiclaw.control.plane.ControlPlane`) whose state the
    pages show. ``host``/``port``: where to listen (port 0: any free one)."""

    def __init__(self, plane: Any, *, host: str = "127.0.0.1", port: int = 0, idle_hours: float = 12.0,
                 max_upload_mb: float = 25.0) -> None:
        from hiclaw.console.chat import ConsoleChat
        from hiclaw.console.pages import Pages
        from hiclaw.console.uploads import Uploads

        self.plane = plane
        self.host, self.port = host, port
        self.auth = ConsoleAuth(self._password, idle_seconds=idle_hours * 3600)
        self.pages = Pages(plane)
        self.uploads = Uploads(plane, int(max_upload_mb * 2**20))
        self._runner: web.AppRunner | None = None
        self.chat = ConsoleChat(plane)
        self._css, self._js = _asset("console.css"), _asset("console.js")
        self.moved_from: int | None = None  # the configured port, when another program held it

    def _password(self) -> str | None:
        secret = self.plane.secrets.get("matrix_admin_password")
        return secret.get_secret_value() if secret is not None else None

    @property
    def lan(self) -> bool:
        return self.host not in ("127.0.0.1", "localhost", "::1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login_link(self, base: str | None = None) -> str:
        """A new one-time login link (valid once, for 10 minutes)."""
        return f"{base or self.url}/login?token={quote(self.auth.new_link_token())}"

    # ------------------------------------------------------------------ lifecycle

    def _logged_in(self, request: web.Request) -> bool:
        return self.auth.session(request.cookies.get(COOKIE), touch=False) is not None

    def app(self) -> web.Application:
        from hiclaw.console.chat import ChatPages

        app = web.Application(middlewares=[self._headers, self._guard],
                              client_max_size=max(FORM_BYTES, self.uploads.max_bytes + OVERHEAD))
        app.add_routes([
            web.get("/login", self._login_page),
            web.post("/login", self._login),
            web.post("/logout", self._logout),
            web.get("/console.css", self._stylesheet),
            web.get("/console.js", self._script),
            *self.pages.routes(),
            *ChatPages(self.chat, self._logged_in, HEADERS).routes(),
            *Actions(self.plane).routes(),
            *self.uploads.routes(),
        ])
        return app

    async def start(self) -> None:
        """Listen on ``host:port``; a port another program holds gives way to any free one (the
        address is printed anyway), so a second team on the machine still gets its console."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        try:
            site = await self._listen(self.port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or self.port == 0:
                await self.stop()
                raise HiclawError(f"the web console cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                                  hint="set [console] host and port in config.toml, or [console] enabled = false") from None
            self.moved_from = self.port
            site = await self._listen(0)
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001 - aiohttp: bound port

    async def _listen(self, port: int) -> web.TCPSite:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        return site

    async def stop(self) -> None:
        await self.chat.stop()  # ends the live streams first: the runner waits for open requests
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ middlewares

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            for name, value in HEADERS.items():
                exc.headers.setdefault(name, value)
            raise
        except Exception:  # a bug: one line, the security headers, and nothing of the exception
            log.exception("the console failed to answer %s %s", request.method, request.path)
            response = web.Response(status=500, text="the console failed to answer: see the control plane's log")
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def host_ok(self, host: str) -> bool:
        """Loopback names always; with --lan also any IP address and this machine's name (a
        DNS name that merely points here is refused: DNS rebinding)."""
        found = HOST.match(host)
        if found is None:
            return False
        name = found.group(1).strip("[]").lower()
        if name in ("127.0.0.1", "localhost", "::1"):
            return True
        if not self.lan:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in (socket.gethostname().lower(), socket.getfqdn().lower())

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.host_ok(request.host):
            raise web.HTTPMisdirectedRequest(text="unknown host name")
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin != f"http://{request.host}":
                raise web.HTTPForbidden(text="cross-origin request refused (Origin does not match)")
            if request.content_length is None:  # a browser's form always says; the limits below need it
                raise web.HTTPLengthRequired(text="send the form with its length (Content-Length)")
        if request.path in PUBLIC:
            if request.method == "POST" and (request.content_length or 0) > FORM_BYTES:
                raise web.HTTPRequestEntityTooLarge(FORM_BYTES, request.content_length or 0, text="the form is too large")
            return await handler(request)
        session = self.auth.session(request.cookies.get(COOKIE))
        if session is None:
            if request.method in ("GET", "HEAD"):
                raise web.HTTPSeeOther("/login")
            raise web.HTTPUnauthorized(text="log in first")
        if request.method == "POST":
            limit = self.uploads.max_bytes + OVERHEAD if request.path == "/files/upload" else FORM_BYTES
            try:
                if (request.content_length or 0) > limit:
                    raise web.HTTPRequestEntityTooLarge(limit, request.content_length or 0)
                form = await request.post()
            except web.HTTPRequestEntityTooLarge:
                upload = request.path == "/files/upload"
                error = too_large(self.uploads.max_bytes) if upload else HiclawError("the form is too large")
                raise web.HTTPRequestEntityTooLarge(limit, request.content_length or 0, content_type="text/html",
                                                    text=refused_page(error, session.csrf, "/files" if upload else "/")) \
                    from None
            if not self.auth.csrf_ok(session, str(form.get("csrf") or "")):
                raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
        request[SESSION_KEY] = session
        return await handler(request)

    # ------------------------------------------------------------------ login

    def _login_form(self, message: str = "") -> str:
        note = f'<p class="error">{esc(message)}</p>' if message else ""
        return page("Log in", note + '<form method="post" action="/login" class="login">'
                    '<label>Admin password (<code>matrix_admin_password</code> in secrets.toml)'
                    '<input type="password" name="password" autocomplete="current-password" autofocus></label>'
                    '<button>Log in</button></form>'
                    '<p class="muted">Or open the one-time link <code>hiclaw up</code> printed '
                    '(or <code>hiclaw console</code> prints a new one).</p>')

    def _signed_in(self, session_id: str) -> web.StreamResponse:
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                            max_age=int(self.auth.idle_seconds))
        return response

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is None:
            return web.Response(text=self._login_form(), content_type="text/html")
        session_id = self.auth.redeem_link(token)
        if session_id is None:
            return web.Response(status=403, content_type="text/html", text=self._login_form(
                "This login link is invalid, already used or expired: run `hiclaw console` for a new one."))
        return self._signed_in(session_id)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.auth.throttled():
            return web.Response(status=429, content_type="text/html",
                                text=self._login_form("Too many wrong passwords: wait a minute."))
        form = await request.post()
        session_id = self.auth.login_password(str(form.get("password") or ""))
        if session_id is None:
            return web.Response(status=401, content_type="text/html", text=self._login_form("Wrong password."))
        return self._signed_in(session_id)

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self.auth.end(request.cookies.get(COOKIE, ""))
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _stylesheet(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self._css, content_type="text/css", headers={"Cache-Control": "max-age=3600"})

    async def _script(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self._js, content_type="text/javascript", headers={"Cache-Control": "max-age=3600"})
