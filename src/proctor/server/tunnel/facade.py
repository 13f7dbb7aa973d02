"""The job-facing side: an OpenAI-compatible endpoint whose calls travel over the job's tunnel.

A private-mode job's process is given ``http://127.0.0.1:<port>/internal/jobs/<id>/v1`` as the
base URL of its private roles and the job's internal token as their API key, so the engine (or
any OpenAI client in a command job) needs no idea that a tunnel exists.

The facade is a raw ASGI app rather than a FastAPI path operation: this is the hot path of every
private model call, and dependency injection, Request/Response objects and response validation
would cost more CPU than the tunnel itself. They are left out of the OpenAPI schema because nobody outside the
server may call them.

Refusals, in order: a caller that is not on the loopback interface (or that came through a
proxy) gets 403; a wrong internal token 401, whether or not the job exists; an unsupported path
404; a body over the cap 413. A call that finds no agent waits (the job is paused, not failed)
until its deadline, then gets 503; a call an agent took but did not answer in time gets 504.
Both carry an OpenAI-shaped error body that says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from proctor.tunnel import protocol
from proctor.tunnel.protocol import FACADE_PATHS, FORWARDED_REQUEST_HEADERS, Inbox, Kind, forwarded_method

if TYPE_CHECKING:
    from proctor.server.tunnel.hub import Call, Slots, TunnelHub, _Job
    from proctor.tunnel.protocol import Budget

__all__ = [
    "DEADLINE_HEADER",
    "FACADE_PATHS",
    "ROLE_HEADER",
    "FacadeApp",
    "FastPath",
    "build_router",
    "facade_url",
    "forwarded_method",
]

log = logging.getLogger("proctor.tunnel")

DEADLINE_HEADER = "x-proctor-deadline"
"""A caller may ask for a shorter deadline (seconds) than the hub's default."""

ROLE_HEADER = "x-proctor-role"
"""Which private role a call is for (the engine sends it); the agent picks that role's model."""
ROLE_HEADER_B = ROLE_HEADER.encode()

FORWARDED_REQUEST_HEADERS_B = tuple((name, name.encode()) for name in FORWARDED_REQUEST_HEADERS)
DEADLINE_HEADER_B = DEADLINE_HEADER.encode()


def facade_url(host: str, port: int, job_id: str) -> str:
    """The base URL a job's process uses for its private roles."""
    return f"http://{host}:{port}/internal/jobs/{job_id}/v1"


def build_router(hub: TunnelHub) -> APIRouter:
    """The tunnel WebSocket, the job channel and the facade routes bound to ``hub``."""
    from proctor.server.tunnel.channel import CHANNEL_PATH  # it builds on this module

    router = APIRouter()
    router.add_websocket_route("/v1/jobs/{job_id}/tunnel", hub.websocket_endpoint, name="tunnel")
    router.add_websocket_route(CHANNEL_PATH, hub.channel_endpoint, name="tunnel_channel")
    # An ASGI object (not a function) as endpoint: Starlette then skips its Request/Response
    # wrapping, which is a third of the facade's CPU per call.
    router.add_route(
        "/internal/jobs/{job_id}/v1/{path:path}",
        FacadeApp(hub),  # type: ignore[arg-type]  # an ASGI app is a valid endpoint
        methods=["GET", "POST"],
        name="tunnel_facade",
        include_in_schema=False,
    )
    return router


class FastPath:
    """ASGI wrapper that answers facade calls before the wrapped app's middleware and routing.

    Optional: ``hub.router`` alone serves the same URLs. Wrapping (``uvicorn.run(hub.wrap_app(app))``)
    skips FastAPI's middleware stack and route matching on every private model call, which is
    about a quarter of the server's CPU per call. Everything else goes to ``app`` untouched.
    """

    def __init__(
        self, app: ASGIApp, hub: TunnelHub, *, wrap_facade: Callable[[ASGIApp], ASGIApp] | None = None
    ) -> None:
        self.app = app
        facade: ASGIApp = FacadeApp(hub)
        # e.g. the server's request metrics, which the wrapped app's middleware no longer sees
        self.facade = wrap_facade(facade) if wrap_facade is not None else facade

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/internal/jobs/"):
            match = _FACADE_PATH.match(scope["path"])
            if match is not None:
                scope["path_params"] = {"job_id": match[1], "path": match[2]}
                await self.facade(scope, receive, send)
                return
        await self.app(scope, receive, send)


_FACADE_PATH = re.compile(r"^/internal/jobs/([^/]+)/v1/(.*)$")


def json_error(status: int, message: str, code: str) -> bytes:
    """OpenAI's error shape, so the engine's client classifies it like any endpoint's error."""
    return json.dumps({"error": {"message": message, "type": "tunnel_error", "code": code}}).encode()


def is_loopback(host: str) -> bool:
    """Whether a peer address is this machine's own (the facade and the job channel serve no one else)."""
    return host == "::1" or host.startswith(("127.", "::ffff:127."))


_JSON = [(b"content-type", b"application/json")]
_EXPIRED = ("expire",)


class FacadeApp:
    """The facade as a raw ASGI app: one model call per HTTP request, answered over the tunnel."""

    def __init__(self, hub: TunnelHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, headers, body, stream = await self._handle(scope, receive)
        if stream is None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self._stream(status, headers, stream, receive, send)

    async def _handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, _Stream | None]:
        """Everything up to the response head; the body too unless the answer streams."""
        hub = self.hub
        client = scope.get("client")
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if not client or not is_loopback(client[0]) or b"x-forwarded-for" in headers or b"forwarded" in headers:
            return (
                403,
                _JSON,
                json_error(403, "the private-model facade only answers the server's own job processes", "forbidden"),
                None,
            )
        params = scope["path_params"]
        job_id: str = params["job_id"]
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        job = hub.check_internal_token(job_id, token.strip() if scheme.lower() == "bearer" else None)
        if job is None:
            return 401, _JSON, json_error(401, "the internal token is not valid for this job", "invalid_api_key"), None
        path: str = params["path"]
        method: str = scope["method"]
        if forwarded_method(path) != method:
            return (
                404,
                _JSON,
                json_error(404, f"{method} /{path} is not forwarded to the private model", "not_found"),
                None,
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > hub.max_body:
            return 413, _JSON, json_error(413, too_large(hub.max_body, "request"), "body_too_large"), None
        body = await _read_body(receive, hub.max_body, job.budget)
        if isinstance(body, str):
            return 413, _JSON, json_error(413, body, "body_too_large"), None

        loop = asyncio.get_running_loop()
        timeout = hub.request_deadline
        asked = headers.get(DEADLINE_HEADER_B)
        if asked:
            try:
                timeout = min(timeout, max(0.0, float(asked)))
            except ValueError:
                pass
        deadline = loop.time() + timeout
        rid = hub.next_rid()
        meta: dict[str, Any] = {"m": method, "p": "/" + path}
        query = scope.get("query_string")
        if query:
            meta["q"] = query.decode("latin-1")
        forwarded = {
            name: headers[raw].decode("latin-1") for name, raw in FORWARDED_REQUEST_HEADERS_B if raw in headers
        }
        if forwarded:
            meta["h"] = forwarded
        role = headers.get(ROLE_HEADER_B, b"").decode("latin-1")
        if role in job.roles:
            meta["r"] = role
        inbox = Inbox()
        call = hub.new_call(job, rid, protocol.encode_body(Kind.REQUEST, rid, meta, body), deadline, inbox, len(body))

        slots = job.semaphore()
        acquired = False
        handed_off = False
        # The deadline arrives as an event in the call's inbox: cheaper than a timeout scope.
        timer = loop.call_at(deadline, inbox.put_nowait, _EXPIRED)
        try:
            if not slots.try_acquire():
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            acquired = True
            hub.submit(job, call)
            while True:
                event = await inbox.get()
                tag = event[0]
                if tag == "expire":
                    raise TimeoutError
                if tag == "fail":
                    return event[1], _JSON, json_error(event[1], event[2], event[3]), None
                if tag != "head":
                    continue  # a reset before any answer, or stray data of a reset answer
                head: dict[str, Any] = event[1]
                status = int(head.get("s", 502))
                out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (head.get("h") or {}).items()]
                if event[3]:
                    return status, out, event[2], None
                if head.get("stream"):
                    # From here on bytes reach the caller: a lost agent can no longer be hidden.
                    call.replayable = False
                    handed_off = True
                    return status, out, b"", _Stream(job, call, inbox, slots, event[2])
                # The hub caps the answer as its pieces arrive (a 502 "fail" event past the cap).
                full = await _collect(inbox, event[2])
                if full is None:
                    continue  # the agent went away mid-body; the call was replayed
                return status, out, full, None
        except _CallFailed as exc:
            return exc.status, _JSON, json_error(exc.status, str(exc), exc.code), None
        except TimeoutError:
            status = 504 if call.dispatched and job.agents else 503
            code = "waiting_for_tunnel" if status == 503 else "tunnel_timeout"
            message = f"tunnel call timed out after {timeout:g} s: {hub.waiting_reason(job)}"
            headers_out = _JSON + [(b"retry-after", b"5")] if status == 503 else _JSON
            return status, headers_out, json_error(status, message, code), None
        finally:
            timer.cancel()
            if not handed_off:
                hub.finish(job, call)
                if acquired:
                    slots.release()

    async def _stream(
        self, status: int, headers: list[tuple[bytes, bytes]], stream: _Stream, receive: Receive, send: Send
    ) -> None:
        """Relay a streamed answer chunk by chunk; stop early if the caller goes away."""

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.create_task(watch_disconnect())
        relay = asyncio.create_task(self._relay(status, headers, stream, send))
        try:
            await asyncio.wait([watcher, relay], return_when=asyncio.FIRST_COMPLETED)
            if relay.done() and not relay.cancelled() and relay.exception() is not None:
                exc = relay.exception()
                if not isinstance(exc, _CallFailed | TimeoutError):
                    raise exc  # type: ignore[misc]
                # Returning before the last chunk makes the server close the connection: the
                # job's client sees a truncated stream, the only honest signal once headers are sent.
                log.warning("private-model stream cut short for job %s: %s", stream.job.job_id, exc or "deadline")
        finally:
            watcher.cancel()
            relay.cancel()
            stream.release(self.hub)

    async def _relay(self, status: int, headers: list[tuple[bytes, bytes]], stream: _Stream, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        call = stream.call
        inbox = stream.inbox
        release = self.hub.release
        if stream.first:
            await send({"type": "http.response.body", "body": stream.first, "more_body": True})
            release(call, len(stream.first))
        async with asyncio.timeout_at(call.deadline):
            while True:
                event = await inbox.get()
                tag = event[0]
                if tag == "data":
                    if event[2]:
                        await send({"type": "http.response.body", "body": event[1], "more_body": False})
                        return
                    if event[1]:
                        await send({"type": "http.response.body", "body": event[1], "more_body": True})
                        # Relayed: no longer held here (a job that reads slowly holds the rest).
                        release(call, len(event[1]))
                elif tag == "fail":
                    # Headers are sent: the only honest signal left is a truncated stream.
                    raise _CallFailed(event[1], event[2], event[3])


class _Stream:
    """A streamed answer handed from ``_handle`` to ``_stream``, with the slot it holds."""

    __slots__ = ("call", "first", "inbox", "job", "slots")

    def __init__(self, job: _Job, call: Call, inbox: Inbox, slots: Slots, first: bytes) -> None:
        self.job = job
        self.call = call
        self.inbox = inbox
        self.slots = slots
        self.first = first

    def release(self, hub: TunnelHub) -> None:
        if not self.call.done:
            hub.finish(self.job, self.call)
            self.slots.release()


def too_large(cap: int, what: str) -> str:
    """Why a request or response body was refused for its size (the 413/502 message)."""
    return f"{what} body over the tunnel cap of {cap} bytes"


def over_budget(budget: Budget) -> str:
    """Why a request was refused because the job's calls already hold too many bytes."""
    return f"the job's calls hold more than the tunnel's budget of {budget.limit} bytes of bodies"


async def _read_body(receive: Receive, cap: int, budget: Budget) -> bytes | str:
    """The request body, taken from the job's ``budget`` piece by piece as it arrives.

    Past ``cap`` or the budget, reading stops and the reason comes back as a string (nothing is
    held then); a caller that leaves mid-body is treated like one over the cap.
    """
    parts = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                budget.give(size)
                return "the caller left before its request body ended"
            piece = message.get("body", b"")
            if size + len(piece) > cap or not budget.take(len(piece)):
                budget.give(size)
                return too_large(cap, "request") if size + len(piece) > cap else over_budget(budget)
            size += len(piece)
            parts.append(piece)
            if not message.get("more_body"):
                return parts[0] if len(parts) == 1 else b"".join(parts)
    except BaseException:  # cancelled mid-body (the server is stopping): nothing stays held
        budget.give(size)
        raise


async def _collect(inbox: Inbox, first: bytes) -> bytes | None:
    """The rest of a non-streamed answer; None if the agent was lost (the call is replayed)."""
    parts = [first]
    while True:
        event = await inbox.get()
        tag = event[0]
        if tag == "data":
            parts.append(event[1])
            if event[2]:
                return b"".join(parts)
        elif tag == "reset":
            return None
        elif tag == "fail":
            raise _CallFailed(event[1], event[2], event[3])
        elif tag == "expire":
            raise TimeoutError


class _CallFailed(Exception):
    """Ends a call whose answer can no longer arrive."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
