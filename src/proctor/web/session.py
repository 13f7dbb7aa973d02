"""Browser sessions: a token typed into the login form becomes an HttpOnly cookie of random bytes.

A browser's ``EventSource`` cannot send a bearer header, so the pages need a cookie. The cookie
holds only a random session id (32 bytes); the server keeps the sha256 of it in the job store
(``proctor.server.web_sessions``), so every server of a fleet knows the session, a restart keeps
it, and a row read out of the store is not a cookie. No signing secret is needed: a guessed or
forged id is simply not found. The token itself is never written to a cookie, a file or a log;
the row names it by the digest the tokens table already keeps, and is checked against that table
on every request, so a revoked token ends its sessions at once.

CSRF: the cookie is ``SameSite=Strict`` (another site's form never carries it), and every POST
form carries the session's CSRF token, derived from the session id (an HMAC), so that any server
can check it without storing it, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

COOKIE_NAME = "proctor_session"
SESSION_SECONDS = 12 * 3600.0
SESSION_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's live session. ``owner`` is the token's name, or ``ip:...`` in open mode
    (``token_bound`` False: the caller is then known by address, the session only carries CSRF)."""

    owner: str
    admin: bool
    token_bound: bool
    csrf: str
    expires: float


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def session_key(session_id: str) -> str:
    """What the store keeps instead of the id: its sha256, useless as a cookie."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def csrf_token(session_id: str) -> str:
    """The session's CSRF token: an HMAC keyed by the (secret) session id, so nothing stores it
    and a page's token reveals nothing about the cookie."""
    return hmac.new(session_id.encode("utf-8"), b"proctor-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session: Session | None, submitted: str | None) -> bool:
    """The form's CSRF field matches its session's token."""
    return session is not None and bool(submitted) and hmac.compare_digest(session.csrf, submitted or "")
