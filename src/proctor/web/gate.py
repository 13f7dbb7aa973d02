"""Who is looking at a page: the session cookie's token, a bearer token, open mode, or nobody.

Only the dashboard's routes ask this gate; the API (``/v1/...``) keeps its bearer tokens and
never accepts the cookie. ``proctor view`` has no gate at all (``LocalGate``): it serves local
files to the local machine, read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from proctor.errors import AuthenticationError
from proctor.web.session import COOKIE_NAME, Session


@dataclass
class Viewer:
    """The caller (``principal``, whatever the source understands) and their browser session."""

    principal: Any
    name: str | None
    session: Session | None
    new_cookie: str | None = None
    """Set when the gate opened a session for this request (open mode): the page sets the cookie."""


class Gate(Protocol):
    login_needed: bool
    cookie_max_age: int | None

    def viewer(self, request: Request) -> Viewer: ...

    def login(self, token: str) -> str | None: ...

    def logout(self, request: Request) -> None: ...


class LocalGate:
    """``proctor view``: one local user, no login, no session, nothing to act on."""

    login_needed = False
    cookie_max_age: int | None = None

    def viewer(self, request: Request) -> Viewer:
        return Viewer(principal=None, name=None, session=None)

    def login(self, token: str) -> str | None:
        return None

    def logout(self, request: Request) -> None:
        return None


class SessionKeeper(Protocol):
    """Where ``ServerGate`` keeps sessions: ``proctor.server.web_sessions.StoredSessions``."""

    @property
    def max_age(self) -> int: ...

    def create(self, owner: str, *, token_digest: str | None, admin: bool = False) -> tuple[str, Session]: ...

    def get(self, cookie: str | None) -> Session | None: ...

    def end(self, cookie: str | None) -> None: ...


class ServerGate:
    """``proctor serve``: a session cookie (made from a token by the login form), else a bearer token.

    Sessions live in the job store, so a restart keeps them and every server of a fleet knows
    them; a session names its token by digest and lives only while that token does.
    """

    def __init__(self, auth: Any, sessions: SessionKeeper) -> None:
        self.auth = auth
        self.sessions = sessions
        self.login_needed = not auth.open_mode
        self.cookie_max_age: int | None = sessions.max_age

    def viewer(self, request: Request) -> Viewer:
        from proctor.server.auth import Principal, bearer_token

        session = self.sessions.get(request.cookies.get(COOKIE_NAME))
        if session is not None and session.token_bound:
            return Viewer(Principal(session.owner, session.admin), session.owner, session)
        token = bearer_token(request)
        if token is not None:
            principal = self.auth.from_token(token)
            if principal is None:
                raise AuthenticationError("the token is not valid")
            return Viewer(principal, principal.name, session)
        if self.auth.open_mode:
            host = request.client.host if request.client else "unknown"
            principal = Principal(f"ip:{host}")
            if session is not None:
                return Viewer(principal, principal.name, session)
            cookie, session = self.sessions.create(principal.name, token_digest=None)
            return Viewer(principal, principal.name, session, new_cookie=cookie)
        raise AuthenticationError("log in with your token to see this page")

    def login(self, token: str) -> str | None:
        """The new session's cookie value for a valid token, else None."""
        from proctor.server.store import hash_token

        principal = self.auth.from_token(token) if token else None
        if principal is None:
            return None
        cookie, _ = self.sessions.create(principal.name, token_digest=hash_token(token), admin=principal.admin)
        return cookie

    def logout(self, request: Request) -> None:
        self.sessions.end(request.cookies.get(COOKIE_NAME))
