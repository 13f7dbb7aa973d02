"""Who is calling: a bearer token's owner, or (``--open`` mode) the client's IP address.

Permission rules live here too, so that every route asks the same question the same way: only a
job's owner or an admin may see its details, logs and results, or cancel, resume or delete it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Request

from proctor.errors import AuthenticationError, PermissionDeniedError
from proctor.server.bearer import parse_bearer
from proctor.server.store import JobRow, JobStore


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: ``name`` is a token's name or ``ip:<address>`` in open mode."""

    name: str
    admin: bool = False

    def may_access(self, job: JobRow) -> bool:
        return self.admin or job.owner == self.name


def bearer_token(request: Request) -> str | None:
    return parse_bearer(request.headers.get("authorization"))


class Authenticator:
    """Turns a request (or a raw token, for the tunnel) into a ``Principal``."""

    def __init__(self, store: JobStore, *, open_mode: bool, cache_seconds: float = 10.0) -> None:
        self.store = store
        self.open_mode = open_mode
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    def from_token(self, token: str | None) -> Principal | None:
        """Known tokens are cached for ``cache_seconds``, so a burst of log followers costs no
        query each, and a revoked token stops working within that time; unknown tokens are
        looked up every time."""
        if not token:
            return None
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        info = self.store.lookup_token(token)
        if info is None:
            self._cache.pop(token, None)
            return None
        principal = Principal(info.name, info.admin)
        if len(self._cache) < 10_000 or token in self._cache:
            self._cache[token] = (principal, now)
        return principal

    def identify(self, request: Request, *, required: bool = True) -> Principal | None:
        """A valid token always wins; without one, open mode falls back to the client's IP."""
        token = bearer_token(request)
        principal = self.from_token(token)
        if principal is not None:
            return principal
        if token is not None and not self.open_mode:
            raise AuthenticationError(
                "the token is not valid", hint="create one with `proctor server token create NAME`"
            )
        if self.open_mode:
            host = request.client.host if request.client else "unknown"
            return Principal(f"ip:{host}")
        if required:
            raise AuthenticationError(
                "this server needs a token",
                hint="pass --token, set PROCTOR_TOKEN, or put token: in ~/.config/proctor/client.yaml",
            )
        return None

    def require_token(self, request: Request) -> Principal:
        """A valid token's owner, even in open mode (for endpoints the admin closed, like /metrics)."""
        principal = self.from_token(bearer_token(request))
        if principal is None:
            raise AuthenticationError(
                "this endpoint needs a token", hint="create one with `proctor server token create NAME`"
            )
        return principal


def check_access(principal: Principal, job: JobRow) -> None:
    if not principal.may_access(job):
        raise PermissionDeniedError(f"job {job.id} belongs to another user")


def anonymize(job_id: str) -> str:
    """First 6 and last 2 characters: enough to recognise one's own job, useless to act on."""
    return f"{job_id[:6]}…{job_id[-2:]}" if len(job_id) > 8 else "…"
