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
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proctor.server.tunnel.calls import EXPIRE, Call, Data, Dispatcher, Expire, Fail, Head, Job, Reset, Slots
from proctor.server.tunnel.calls import CallEvent as Event
from proctor.server.tunnel.rules import (
    call_timeout,
    header_seconds,
    job_for_token,
    json_error,
    local_caller,
    not_forwarded,
    over_budget,
    request_meta,
    timeout_answer,
    too_large,
)
from proctor.tunnel import protocol
from proctor.tunnel.protocol import (
    DEADLINE_HEADER,
    FORWARDED_REQUEST_HEADERS,
    JOBS_PREFIX,
    ROLE_HEADER,
    Budget,
    Inbox,
    Kind,
    facade_job_path,
    forwarded_method,
)

__all__ = ["FacadeApp", "FastPath"]

log = logging.getLogger("proctor.tunnel")

ROLE_HEADER_B = ROLE_HEADER.encode()
FORWARDED_REQUEST_HEADERS_B = tuple((name, name.encode()) for name in FORWARDED_REQUEST_HEADERS)
DEADLINE_HEADER_B = DEADLINE_HEADER.encode()


class FastPath:
    """ASGI wrapper that answers facade calls before the wrapped app's middleware and routing.

    Optional: ``hub.router`` alone serves the same URLs. Wrapping (``uvicorn.run(hub.wrap_app(app))``)
    skips FastAPI's middleware stack and route matching on every private model call, which is
    about a quarter of the server's CPU per call. Everything else goes to ``app`` untouched.
    """

    def __init__(
        self, app: ASGIApp, hub: Dispatcher, *, wrap_facade: Callable[[ASGIApp], ASGIApp] | None = None
    ) -> None:
        self.app = app
        facade: ASGIApp = FacadeApp(hub)
        # e.g. the server's request metrics, which the wrapped app's middleware no longer sees
        self.facade = wrap_facade(facade) if wrap_facade is not None else facade

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(JOBS_PREFIX):
            match = facade_job_path(scope["path"])
            if match is not None:
                scope["path_params"] = {"job_id": match[0], "path": match[1]}
                await self.facade(scope, receive, send)
                return
        await self.app(scope, receive, send)


_JSON = [(b"content-type", b"application/json")]


class FacadeApp:
    """The facade as a raw ASGI app: one model call per HTTP request, answered over the tunnel."""

    def __init__(self, hub: Dispatcher) -> None:
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
        params = scope["path_params"]
        job_id: str = params["job_id"]
        proxied = b"x-forwarded-for" in headers or b"forwarded" in headers
        if not local_caller(client[0] if client else None, proxied=proxied):
            return (
                403,
                _JSON,
                json_error(403, "the private-model facade only answers the server's own job processes", "forbidden"),
                None,
            )
        job = job_for_token(hub, job_id, headers.get(b"authorization", b"").decode("latin-1"))
        if job is None:
            return 401, _JSON, json_error(401, "the internal token is not valid for this job", "invalid_api_key"), None
        path: str = params["path"]
        method: str = scope["method"]
        if forwarded_method(path) != method:
            return 404, _JSON, json_error(404, not_forwarded(method, path), "not_found"), None
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > hub.max_body:
            return 413, _JSON, json_error(413, too_large(hub.max_body, "request"), "body_too_large"), None
        body = await _read_body(receive, hub.max_body, job.budget)
        if isinstance(body, str):
            return 413, _JSON, json_error(413, body, "body_too_large"), None

        loop = asyncio.get_running_loop()
        timeout = call_timeout(hub.request_deadline, header_seconds(headers.get(DEADLINE_HEADER_B)))
        deadline = loop.time() + timeout
        rid = hub.next_rid()
        query = scope.get("query_string")
        forwarded = {
            name: headers[raw].decode("latin-1") for name, raw in FORWARDED_REQUEST_HEADERS_B if raw in headers
        }
        role = headers.get(ROLE_HEADER_B, b"").decode("latin-1")
        meta = request_meta(method, path, query.decode("latin-1") if query else None, forwarded, role, job)
        inbox: Inbox[Event] = Inbox()
        call = hub.new_call(job, rid, protocol.encode_body(Kind.REQUEST, rid, meta, body), deadline, inbox, len(body))

        slots = job.semaphore()
        acquired = False
        handed_off = False
        # The deadline arrives as an event in the call's inbox: cheaper than a timeout scope.
        timer = loop.call_at(deadline, inbox.put_nowait, EXPIRE)
        try:
            if not slots.try_acquire():
                async with asyncio.timeout_at(deadline):
                    await slots.acquire()
            acquired = True
            hub.submit(job, call)
            while True:
                event = await inbox.get()
                if isinstance(event, Expire):
                    raise TimeoutError
                if isinstance(event, Fail):
                    return event.status, _JSON, json_error(event.status, event.message, event.code), None
                if not isinstance(event, Head):
                    continue  # a reset before any answer, or stray data of a reset answer
                head = event.meta
                status = int(head.get("s", 502))
                out = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (head.get("h") or {}).items()]
                if event.fin:
                    return status, out, event.body, None
                if head.get("stream"):
                    # From here on bytes reach the caller: a lost agent can no longer be hidden.
                    call.replayable = False
                    handed_off = True
                    return status, out, b"", _Stream(job, call, inbox, slots, event.body)
                # The hub caps the answer as its pieces arrive (a 502 ``Fail`` past the cap).
                full = await _collect(inbox, event.body)
                if full is None:
                    continue  # the agent went away mid-body; the call was replayed
                return status, out, full, None
        except _CallFailed as exc:
            return exc.status, _JSON, json_error(exc.status, str(exc), exc.code), None
        except TimeoutError:
            answer = timeout_answer(hub, job, dispatched=call.dispatched, timeout=timeout)
            headers_out = _JSON + [(b"retry-after", b"5")] if answer.retry_after else _JSON
            return answer.status, headers_out, json_error(answer.status, answer.message, answer.code), None
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
            exc = relay.exception() if relay.done() and not relay.cancelled() else None
            if exc is not None:
                if not isinstance(exc, _CallFailed | TimeoutError):
                    raise exc
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
                if isinstance(event, Data):
                    if event.fin:
                        await send({"type": "http.response.body", "body": event.body, "more_body": False})
                        return
                    if event.body:
                        await send({"type": "http.response.body", "body": event.body, "more_body": True})
                        # Relayed: no longer held here (a job that reads slowly holds the rest).
                        release(call, len(event.body))
                elif isinstance(event, Fail):
                    # Headers are sent: the only honest signal left is a truncated stream.
                    raise _CallFailed(event.status, event.message, event.code)


class _Stream:
    """A streamed answer handed from ``_handle`` to ``_stream``, with the slot it holds."""

    __slots__ = ("call", "first", "inbox", "job", "slots")

    def __init__(self, job: Job, call: Call, inbox: Inbox[Event], slots: Slots, first: bytes) -> None:
        self.job = job
        self.call = call
        self.inbox = inbox
        self.slots = slots
        self.first = first

    def release(self, hub: Dispatcher) -> None:
        if not self.call.done:
            hub.finish(self.job, self.call)
            self.slots.release()


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


async def _collect(inbox: Inbox[Event], first: bytes) -> bytes | None:
    """The rest of a non-streamed answer; None if the agent was lost (the call is replayed)."""
    parts = [first]
    while True:
        event = await inbox.get()
        if isinstance(event, Data):
            parts.append(event.body)
            if event.fin:
                return b"".join(parts)
        elif isinstance(event, Reset):
            return None
        elif isinstance(event, Fail):
            raise _CallFailed(event.status, event.message, event.code)
        elif isinstance(event, Expire):
            raise TimeoutError


class _CallFailed(Exception):
    """Ends a call whose answer can no longer arrive."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
