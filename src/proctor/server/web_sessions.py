"""The dashboard's browser sessions, kept in the job store (table ``web_sessions``).

In the store rather than in memory because a restart must not log every browser out, and because
in a fleet (several servers on one PostgreSQL store behind a load balancer) the next request of a
browser may reach another server, which must know its session and accept its forms' CSRF tokens.

A row holds what is needed to re-check the caller on every request without any secret: the
sha256 of the cookie's random id (the key), the owner, the login token's digest (the one the
tokens table keys on; NULL in open mode) and the expiry. A session lives only while its token
does: each lookup joins the tokens table, so a revoked token (a deleted row there) ends its
sessions on every server at once. Rows are bounded: expired and revoked ones are deleted whenever
a session is made, each owner keeps at most ``per_owner`` sessions (a login loop replaces its own
oldest), and the table at most ``MAX_SESSIONS``.
"""

from __future__ import annotations

import re
import time

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select

from proctor.server.store import JobStore, tokens_table, web_sessions_table
from proctor.web.session import SESSION_SECONDS, Session, csrf_token, new_session_id, session_key

MAX_SESSIONS = 10_000
PER_OWNER = 50
_COOKIE = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""What a cookie value made by ``new_session_id`` looks like; anything else is not looked up."""

_sessions = web_sessions_table
_tokens = tokens_table


class StoredSessions:
    """Sessions of ``proctor serve``'s dashboard, shared through ``store`` by every server on it."""

    def __init__(self, store: JobStore, *, lifetime: float = SESSION_SECONDS, per_owner: int = PER_OWNER) -> None:
        self._engine = store.engine
        self._lifetime = lifetime
        self._per_owner = per_owner

    @property
    def max_age(self) -> int:
        return int(self._lifetime)

    def create(self, owner: str, *, token_digest: str | None, admin: bool = False) -> tuple[str, Session]:
        """A new session of ``owner`` (logged in with the token of ``token_digest``, or None in
        open mode); returns the cookie value and the session."""
        session_id = new_session_id()
        now = time.time()
        expires = now + self._lifetime
        with self._engine.begin() as conn:
            conn.execute(delete(_sessions).where(_dead(now)))
            conn.execute(
                insert(_sessions).values(
                    key=session_key(session_id),
                    owner=owner,
                    token_digest=token_digest,
                    created_at=now,
                    expires_at=expires,
                )
            )
            surplus = (
                select(_sessions.c.key)
                .where(_sessions.c.owner == owner)
                .order_by(_sessions.c.created_at.desc(), _sessions.c.key)
                .offset(self._per_owner)
            )
            old = [row.key for row in conn.execute(surplus)]
            total = conn.execute(select(func.count()).select_from(_sessions)).scalar_one() - len(old)
            if total > MAX_SESSIONS:
                oldest = select(_sessions.c.key).order_by(_sessions.c.created_at).limit(total - MAX_SESSIONS)
                old += [row.key for row in conn.execute(oldest)]
            if old:
                conn.execute(delete(_sessions).where(_sessions.c.key.in_(old)))
        session = Session(owner, admin, token_digest is not None, csrf_token(session_id), expires)
        return session_id, session

    def get(self, cookie: str | None) -> Session | None:
        """The live session a cookie value names, or None (malformed, unknown, expired, logged
        out, or its token revoked)."""
        if not cookie or not _COOKIE.fullmatch(cookie):
            return None
        query = (
            select(_sessions.c.owner, _sessions.c.token_digest, _sessions.c.expires_at, _tokens.c.name, _tokens.c.admin)
            .select_from(_sessions.outerjoin(_tokens, _tokens.c.digest == _sessions.c.token_digest))
            .where(_sessions.c.key == session_key(cookie))
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.expires_at <= time.time():
            return None
        if row.token_digest is not None and row.name is None:
            return None  # its token was revoked; the row goes at the next create
        owner = row.name if row.token_digest is not None else row.owner
        return Session(owner, bool(row.admin), row.token_digest is not None, csrf_token(cookie), row.expires_at)

    def end(self, cookie: str | None) -> None:
        """Log out: the row goes, so every server forgets the session at its next request."""
        if cookie and _COOKIE.fullmatch(cookie):
            with self._engine.begin() as conn:
                conn.execute(delete(_sessions).where(_sessions.c.key == session_key(cookie)))


def _dead(now: float) -> ColumnElement[bool]:
    """Rows no request can use any more: expired, or their token revoked."""
    live_tokens = select(_tokens.c.digest)
    return or_(
        _sessions.c.expires_at <= now,
        and_(_sessions.c.token_digest.is_not(None), _sessions.c.token_digest.not_in(live_tokens)),
    )
