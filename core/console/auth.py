"""Who may see the console: one-time login links, the admin's password, sessions, CSRF tokens.

Everything is kept in memory (a restart of the control plane logs everybody out). Tokens and
session ids are random (``secrets``), compared in constant time, and stored only as SHA-256
digests, so a memory dump of the tables gives nothing to replay.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: A login link works once, for this long.
LINK_SECONDS = 600.0
#: A session lives at most this long, however busy.
SESSION_MAX_SECONDS = 7 * 24 * 3600.0
#: Wrong passwords allowed per window before logins are refused for the rest of it.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Session:
    csrf: str
    created: float
    seen: float


@dataclass
class ConsoleAuth:
    """``password``: returns the admin's Matrix password (the secret ``matrix_admin_password``),
    or None when it is not set; read at each login, so a changed secret applies at once.
    ``clock``: seconds (monotonic); tests pass their own."""

    password: Callable[[], str | None]
    idle_seconds: float = 12 * 3600.0
    clock: Callable[[], float] = time.monotonic
    _links: dict[str, float] = field(default_factory=dict)  # digest -> expiry
    _sessions: dict[str, Session] = field(default_factory=dict)  # digest -> session
    _failures: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ login links

    def new_link_token(self) -> str:
        now = self.clock()
        self._links = {d: exp for d, exp in self._links.items() if exp > now}
        token = secrets.token_urlsafe(32)
        self._links[_digest(token)] = now + LINK_SECONDS
        return token

    def redeem_link(self, token: str) -> str | None:
        """A new session id if ``token`` is a live link token (which it no longer is after)."""
        expiry = self._links.pop(_digest(token), None) if token else None
        if expiry is None or expiry <= self.clock():
            return None
        return self._new_session()

    # ------------------------------------------------------------------ password

    def throttled(self) -> bool:
        now = self.clock()
        self._failures = [t for t in self._failures if t > now - FAILURE_WINDOW]
        return len(self._failures) >= MAX_FAILURES

    def login_password(self, given: str) -> str | None:
        """A new session id if ``given`` is the admin's password."""
        expected = self.password()
        ok = bool(expected) and hmac.compare_digest(given.encode(), (expected or "").encode())
        if not ok:
            self._failures.append(self.clock())
            return None
        return self._new_session()

    # ------------------------------------------------------------------ sessions

    def _new_session(self) -> str:
        now = self.clock()
        self._sessions = {d: s for d, s in self._sessions.items() if self._alive(s, now)}
        session_id = secrets.token_urlsafe(32)
        self._sessions[_digest(session_id)] = Session(csrf=secrets.token_urlsafe(32), created=now, seen=now)
        return session_id

    def _alive(self, session: Session, now: float) -> bool:
        return now - session.seen < self.idle_seconds and now - session.created < SESSION_MAX_SECONDS

    def session(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        """The live session of ``session_id`` (its idle clock restarted unless ``touch=False``:
        an open live stream does not keep a session alive), or None."""
        if not session_id:
            return None
        digest = _digest(session_id)
        found = self._sessions.get(digest)
        now = self.clock()
        if found is None:
            return None
        if not self._alive(found, now):
            del self._sessions[digest]
            return None
        if touch:
            found.seen = now
        return found

    def end(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf.encode(), (given or "").encode())
