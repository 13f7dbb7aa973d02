"""The request rules the facade and the job channel share, in one place.

Both ways into the hub answer the same caller the same way: only the server's own job
processes (loopback, not through a proxy) with the job's internal token; only the forwarded
paths (``protocol.forwarded_method``) and headers; a deadline that a caller may shorten but not
lengthen; bodies capped by size and by the job's budget; and, when the deadline passes, 503
(no agent: the job waits for its tunnel) or 504 (an agent took the call and did not answer),
each with an OpenAI-shaped error body that says why.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from proctor.server.bearer import parse_bearer
from proctor.server.tunnel.calls import Dispatcher, Job
from proctor.tunnel.protocol import FORWARDED_REQUEST_HEADERS, Budget

__all__ = [
    "FORWARDED",
    "JSON_HEADERS",
    "TimeoutAnswer",
    "job_for_token",
    "call_timeout",
    "close_websocket",
    "header_seconds",
    "is_loopback",
    "json_error",
    "local_caller",
    "not_forwarded",
    "over_budget",
    "request_meta",
    "timeout_answer",
    "too_large",
]

JSON_HEADERS = {"content-type": "application/json"}
FORWARDED = frozenset(FORWARDED_REQUEST_HEADERS)


def is_loopback(host: str) -> bool:
    """Whether a peer address is this machine's own (the facade and the job channel serve no one else)."""
    return host == "::1" or host.startswith(("127.", "::ffff:127."))


def local_caller(host: str | None, *, proxied: bool) -> bool:
    """Whether a caller may use the job-facing routes at all: a loopback peer, not through a
    proxy (``proxied``: the request has ``X-Forwarded-For`` or ``Forwarded``)."""
    if not host or proxied:
        return False
    return is_loopback(host)


def job_for_token(hub: Dispatcher, job_id: str, authorization: str | None) -> Job | None:
    """The job whose internal token the ``Authorization`` header carries, else None (the same
    answer for an unknown job)."""
    return hub.check_internal_token(job_id, parse_bearer(authorization))


def json_error(status: int, message: str, code: str) -> bytes:
    """OpenAI's error shape, so the engine's client classifies it like any endpoint's error."""
    return json.dumps({"error": {"message": message, "type": "tunnel_error", "code": code}}).encode()


def not_forwarded(method: str, path: str) -> str:
    """Why a request for another path or method was answered 404."""
    return f"{method[:20]} /{path[:200]} is not forwarded to the private model"


def too_large(cap: int, what: str) -> str:
    """Why a request or response body was refused for its size (the 413/502 message)."""
    return f"{what} body over the tunnel cap of {cap} bytes"


def over_budget(budget: Budget) -> str:
    """Why a request was refused because the job's calls already hold too many bytes."""
    return f"the job's calls hold more than the tunnel's budget of {budget.limit} bytes of bodies"


def call_timeout(default: float, asked: object) -> float:
    """A call's deadline in seconds: the hub's ``default``, or less if the caller asked for less
    (a number; anything else is ignored)."""
    if isinstance(asked, int | float) and not isinstance(asked, bool):
        return min(default, max(0.0, float(asked)))
    return default


def header_seconds(value: bytes | None) -> float | None:
    """The number of seconds in a header such as ``X-Proctor-Deadline``, or None if unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def request_meta(
    method: str, path: str, query: str | None, headers: Mapping[str, str], role: object, job: Job
) -> dict[str, Any]:
    """The ``REQUEST`` meta sent to the agent: method, path, query, the forwarded headers only,
    and the private role when it is one of the job's."""
    meta: dict[str, Any] = {"m": method, "p": "/" + path}
    if query:
        meta["q"] = query
    forwarded = {k: v for k, v in headers.items() if isinstance(v, str) and k.lower() in FORWARDED}
    if forwarded:
        meta["h"] = forwarded
    if isinstance(role, str) and role in job.roles:
        meta["r"] = role
    return meta


@dataclass(frozen=True, slots=True)
class TimeoutAnswer:
    """The answer to a call whose deadline passed."""

    status: int
    code: str
    message: str

    @property
    def retry_after(self) -> bool:
        """A 503 says when to try again: the job waits for its tunnel, it has not failed."""
        return self.status == 503


def timeout_answer(hub: Dispatcher, job: Job, *, dispatched: bool, timeout: float) -> TimeoutAnswer:
    """503 when no agent holds the call (the job waits for its tunnel), 504 when one took it and
    did not answer in time."""
    status = 504 if dispatched and job.agents else 503
    code = "waiting_for_tunnel" if status == 503 else "tunnel_timeout"
    return TimeoutAnswer(status, code, f"tunnel call timed out after {timeout:g} s: {hub.waiting_reason(job)}")


async def close_websocket(ws: WebSocket, code: int, reason: str) -> None:
    """Close ``ws`` if it is still open; a peer that is already gone is not an error."""
    if ws.application_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # the peer is already gone
        await ws.close(code, reason)
