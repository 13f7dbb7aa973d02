"""Per-user (per-IP in open mode) submission quotas: ``N`` jobs per sliding window.

The 429 says exactly when the oldest counted submission leaves the window, in seconds
(``Retry-After``) and as a UTC time in the message, so a client can wait precisely that long.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from proctor.errors import QuotaExceededError
from proctor.server.auth import Principal
from proctor.server.settings import parse_rate_limit
from proctor.server.store import JobStore


class Quota:
    def __init__(self, store: JobStore, rate_limit: str | None) -> None:
        self.store = store
        self.limit = parse_rate_limit(rate_limit) if rate_limit else None
        self.text = rate_limit

    def check(self, principal: Principal, *, now: float | None = None) -> None:
        """Raise ``QuotaExceededError`` when ``principal`` may not submit another job now."""
        if self.limit is None or principal.admin:
            return
        now = time.time() if now is None else now
        count, window = self.limit
        recent = self.store.submissions_since(principal.name, now - window)
        if len(recent) < count:
            return
        free_at = recent[len(recent) - count] + window
        retry_after = max(1, math.ceil(free_at - now))
        when = datetime.fromtimestamp(free_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise QuotaExceededError(
            f"quota of {self.text} jobs used up; come back at {when} (in {retry_after} s)",
            retry_after=retry_after,
        )

    def record(self, principal: Principal, *, now: float | None = None) -> None:
        if self.limit is not None and not principal.admin:
            self.store.record_submission(principal.name, time.time() if now is None else now)


class QueueShare:
    """At most ``cap`` queued jobs per user (per IP in open mode), so one user cannot fill the
    whole queue and turn everyone else away with 503s. Admins are exempt."""

    def __init__(self, store: JobStore, cap: int, queue_max: int) -> None:
        self.store = store
        self.cap = cap
        self.queue_max = queue_max

    def check(self, principal: Principal, *, retry_after: float) -> None:
        """Raise ``QuotaExceededError`` (429, ``retry_after``: when a slot may free up) at the cap."""
        if principal.admin or self.store.count({"queued"}) >= self.queue_max:
            return  # a full queue is everyone's 503 (the scheduler's answer), not this user's 429
        queued = len(self.store.list_jobs(owner=principal.name, states={"queued"}))
        if queued >= self.cap:
            raise QuotaExceededError(
                f"you have {queued} jobs queued, the most one user may have on this server ({self.cap}); "
                "submit more when one has started",
                retry_after=max(1, math.ceil(retry_after)),
            )
