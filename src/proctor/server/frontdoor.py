"""What every HTTP request meets before the app reads a byte of its body.

FastAPI parses and validates a route's body before the route runs, so a check inside the route
comes too late: two unauthenticated 256 MiB posts took the server from 178 to 1,442 MiB. This
pure ASGI middleware, outermost in the app, does in order:

1. in token mode, the job API (``/v1/jobs…``) needs a valid token *before* the body is read: a
   401 otherwise, and the connection is closed so the unread body is never received;
2. a ``Content-Length`` over ``max_upload_bytes`` is a 413 at once (body unread, connection closed);
3. a body streamed past ``max_upload_bytes`` (chunked, or a lying length) is a 413 as soon as it
   passes it, and a body that stalls for ``body_timeout`` seconds is a 408;
4. a body that never stalls but trickles (a slowloris upload: a byte every few seconds) is a 408
   once it is late: it has ``body_deadline`` seconds from the end of the request's head, plus one
   second for every ``body_min_rate`` bytes received (Apache's ``mod_reqtimeout`` rule), so an
   honest large upload on a slow link still finishes while a trickle cannot hold a connection,
   and the task reading it, for more than about ``body_deadline`` seconds.

Every answer it makes is in the server's one error shape (``error_response``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proctor.errors import ProctorError

PROTECTED_PREFIX = "/v1/jobs"
"""The job API: every route under it needs a caller (in token mode, a valid token)."""

LMEVAL_PATHS = ("/job", "/jobs", "/jobs/stop")
"""lm-eval-server's API (``lmeval_api``): these paths and everything under ``/job/`` need a caller
too. The dashboard's own pages under ``/jobs/ID`` do not: they take the session cookie instead."""


def needs_caller(path: str) -> bool:
    """Whether the front door must see a valid caller before it reads the request's body."""
    return path.startswith(PROTECTED_PREFIX) or path in LMEVAL_PATHS or path.startswith("/job/")


def error_response(
    status: int, message: str, *, hint: str | None = None, retry_after: float | None = None, close: bool = False
) -> JSONResponse:
    """The server's one error shape: ``{"ok": false, "error", "status"}`` (+ ``hint``, ``retry_after``).

    ``close``: end the connection after the answer, for answers given before the body was read.
    """
    body: dict[str, Any] = {"ok": False, "error": message, "status": status}
    headers = {}
    if hint:
        body["hint"] = hint
    if retry_after is not None:
        body["retry_after"] = int(retry_after)
        headers["Retry-After"] = str(int(retry_after))
    if close:
        headers["Connection"] = "close"
    return JSONResponse(body, status_code=status, headers=headers)


class _Stop(Exception):
    """Raised into the app from ``receive`` when the body is refused mid-stream."""


class FrontDoor:
    """Authentication before the body, the body-size cap and the body timeout (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        check_caller: Callable[[Request], object] | None,
        max_body: int,
        body_timeout: float,
        body_deadline: float,
        body_min_rate: int,
    ) -> None:
        self.app = app
        self.check_caller = check_caller
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.body_deadline = body_deadline
        self.body_min_rate = body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.check_caller is not None and needs_caller(scope["path"]):
            try:
                self.check_caller(Request(scope))
            except ProctorError as exc:
                await error_response(exc.http_status, exc.message, hint=exc.hint, close=True)(scope, receive, send)
                return
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await self._too_large()(scope, receive, send)
            return
        await _Guarded(self, scope, receive, send).run()

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            f"the request body is larger than this server accepts ({self.max_body:,} bytes)",
            hint="the server's admin sets max_upload_bytes",
            close=True,
        )


class _Guarded:
    """One request whose body is counted and timed as the app reads it."""

    def __init__(self, door: FrontDoor, scope: Scope, receive: Receive, send: Send) -> None:
        self.door = door
        self.scope = scope
        self.receive = receive
        self.send = send
        self.received = 0
        self.body_done = False
        self.refusal: JSONResponse | None = None
        self.started = False
        self.since = time.monotonic()

    async def run(self) -> None:
        try:
            await self.door.app(self.scope, self.guarded_receive, self.guarded_send)
        except _Stop:
            pass
        except Exception:
            if self.refusal is None:
                raise
        if self.refusal is not None and not self.started:
            self.started = True
            await self.refusal(self.scope, self.receive, self.send)

    async def guarded_receive(self) -> Message:
        if self.refusal is not None:
            raise _Stop
        if self.body_done:  # after the body: waiting for a disconnect, which may take any time
            return await self.receive()
        door = self.door
        late_in = self.since + door.body_deadline + self.received / door.body_min_rate - time.monotonic()
        try:
            if late_in <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(self.receive(), min(door.body_timeout, late_in))
        except TimeoutError:
            if late_in <= door.body_timeout:
                self.refusal = error_response(
                    408,
                    f"the request body arrived too slowly ({self.received:,} bytes in "
                    f"{time.monotonic() - self.since:.0f} s)",
                    hint=f"the server allows {door.body_deadline:g} s plus 1 s per {door.body_min_rate:,} bytes",
                    close=True,
                )
            else:
                self.refusal = error_response(408, f"the request body stalled for {door.body_timeout:g} s", close=True)
            raise _Stop from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.door.max_body:
                self.refusal = self.door._too_large()
                raise _Stop
            self.body_done = not message.get("more_body", False)
        else:
            self.body_done = True
        return message

    async def guarded_send(self, message: Message) -> None:
        if self.refusal is not None:
            return  # the app's own answer to a refused body is replaced by the refusal
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
