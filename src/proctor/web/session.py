"""Browser sessions: a token typed into the login form becomes a signed, HttpOnly cookie.

A browser's ``EventSource`` cannot send a bearer header, so the pages need a cookie. The cookie
holds only a random session id and its HMAC signature: the token stays in this process's memory
(where the authenticator already caches it), is checked again on every request (a revoked token
ends its sessions within the authenticator's cache time), and is never written to a cookie, a
file or a log. Sessions live in memory: a server restart asks everyone to log in again.

CSRF: the cookie is ``SameSite=Strict`` (another site's form never carries it), and every POST
form carries the session's own CSRF token, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE_NAME = "proctor_session"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 10_000
"""Oldest sessions are dropped past this many, so a login loop cannot grow memory without bound."""


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser. ``token`` is None in open mode (the caller is known by address)."""

    token: str | None
    csrf: str
    expires: float


class Sessions:
    """In-memory sessions behind signed cookie values (``<id>.<hmac>``)."""

    def __init__(self, *, secret: bytes | None = None, lifetime: float = SESSION_SECONDS) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._lifetime = lifetime
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def _sign(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()

    def create(self, token: str | None) -> tuple[str, Session]:
        """A new session for ``token``; returns the cookie value and the session."""
        session_id = secrets.token_urlsafe(24)
        session = Session(token=token, csrf=secrets.token_urlsafe(24), expires=time.time() + self._lifetime)
        self._sessions[session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return f"{session_id}.{self._sign(session_id)}", session

    def get(self, cookie: str | None) -> Session | None:
        """The live session a cookie value names, or None (unsigned, forged, expired or unknown)."""
        if not cookie or "." not in cookie:
            return None
        session_id, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(session_id)):
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires < time.time():
            self._sessions.pop(session_id, None)
            return None
        return session

    def end(self, cookie: str | None) -> None:
        if cookie and "." in cookie and self.get(cookie) is not None:
            self._sessions.pop(cookie.partition(".")[0], None)

    @property
    def max_age(self) -> int:
        return int(self._lifetime)


def csrf_ok(session: Session | None, submitted: str | None) -> bool:
    """The form's CSRF field matches its session's token."""
    return session is not None and bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")
