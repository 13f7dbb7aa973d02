"""The hub's side of the job channel: a proctor job's model calls over one WebSocket.

Why a second way in beside the HTTP facade: on the facade every private call costs an HTTP
request in the job's process and an HTTP parse and response in the server, which together are
half the CPU the whole tunnel spends per call. A proctor job instead keeps one WebSocket open to
``/internal/jobs/<id>/v1/channel`` and sends its calls as the tunnel's own envelopes
(``protocol.py``), many per message under load; the hub relays them to the agent and the answers
back without an HTTP request in between. Command jobs, and anything else that speaks only the
OpenAI API, keep using the facade; both paths share the hub's calls, replay, deadlines and cap.

The channel answers exactly like the facade: the same refusals (loopback callers only, not
through a proxy, with the job's internal token: otherwise HTTP 403 at the handshake), the same
allowed paths and forwarded headers, the same 413/502/503/504 answers with OpenAI-shaped error
bodies, and the same rule that a started stream cannot be replayed.

Per-call work here is callback-driven: no task per call. A call's events (``calls.CallEvent``) go
straight to ``_ChannelCall.put_nowait``, which writes the answer to the job's connection.

Messages, job -> hub: ``REQUEST`` (meta ``{"m", "p", "q", "h", "d", "r"}`` where ``d`` is the
caller's own deadline in seconds and ``r`` the private role) with ``DATA`` continuations, and ``CANCEL`` (the caller gave up). Hub ->
job: ``RESPONSE`` (meta ``{"s", "h", "stream"}``) with ``DATA`` continuations; a ``DATA`` whose meta
holds ``"error"`` ends a stream that broke off.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from starlette.websockets import WebSocket

from proctor.server.tunnel.calls import EXPIRE, Call, CallEvent, Data, Dispatcher, Expire, Fail, Head, Job, Reset
from proctor.server.tunnel.rules import (
    JSON_HEADERS,
    call_timeout,
    close_websocket,
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
from proctor.tunnel.protocol import Envelope, FrameWriter, Kind, forwarded_method

__all__ = ["JobChannel", "channel_endpoint"]

log = logging.getLogger("proctor.tunnel")


async def channel_endpoint(hub: Dispatcher, ws: WebSocket) -> None:
    """Authenticate a job's channel at the handshake, then relay its calls until it closes."""
    client = ws.client
    headers = ws.headers
    job = None
    if local_caller(client.host if client else None, proxied="x-forwarded-for" in headers or "forwarded" in headers):
        job = job_for_token(hub, ws.path_params["job_id"], headers.get("authorization"))
    if job is None or job.closed:
        # Refused before accepting: the server answers HTTP 403 and nothing is exchanged.
        log.info("job channel refused for %s", ws.url.path)
        await ws.close(protocol.CLOSE_FORBIDDEN)
        return
    await ws.accept()
    channel = JobChannel(hub, job, ws)
    await channel.serve()


class JobChannel:
    """One open channel of one job: its writer, its calls, and calls waiting for a tunnel slot."""

    def __init__(self, hub: Dispatcher, job: Job, ws: WebSocket) -> None:
        self.hub = hub
        self.job = job
        self.ws = ws
        self.writer = FrameWriter(ws.send_bytes)
        self.calls: dict[int, _ChannelCall] = {}
        """By the job's request id."""
        self.partial: dict[int, tuple[dict[str, Any], list[bytes], int]] = {}
        """Requests whose body is still arriving: meta, pieces, size so far (held against the
        job's budget from the first piece)."""
        self.backlog: deque[_ChannelCall] = deque()
        """Calls waiting for one of the job's ``max_inflight`` slots, in arrival order."""
        self._pump: asyncio.Task[None] | None = None
        self.closed = False

    async def serve(self) -> None:
        job = self.job
        job.channels.append(self)
        writer_task = asyncio.create_task(self.writer.run())
        close_code = 1000
        try:
            if not await self._read():
                close_code = protocol.CLOSE_MALFORMED
        finally:
            self.close_calls()
            if self in job.channels:
                job.channels.remove(self)
            self.writer.close()
            writer_task.cancel()
            await close_websocket(self.ws, close_code, "")

    async def _read(self) -> bool:
        """Take the job's messages until it leaves (True) or sends a malformed one (False)."""
        async for data in protocol.binary_messages(self.ws.receive):
            try:
                for env in protocol.decode(data):
                    self._on_envelope(env)
            except ValueError as exc:
                log.warning("job channel of %s: malformed message (%s); closing it", self.job.job_id, exc)
                return False
        return True

    def _on_envelope(self, env: Envelope) -> None:
        kind = env.kind
        if kind == Kind.REQUEST:
            self._drop_partial(env.rid)  # a request id used again: what arrived under it is void
            if self._take(env.rid, 0, len(env.body)):
                if env.fin:
                    self._start(env.rid, env.meta or {}, env.body, len(env.body))
                else:
                    self.partial[env.rid] = (env.meta or {}, [env.body], len(env.body))
        elif kind == Kind.DATA:
            entry = self.partial.get(env.rid)
            if entry is None:
                return
            meta, pieces, size = entry
            if not self._take(env.rid, size, len(env.body)):
                del self.partial[env.rid]
                return
            size += len(env.body)
            pieces.append(env.body)
            if env.fin:
                del self.partial[env.rid]
                self._start(env.rid, meta, b"".join(pieces), size)
            else:
                self.partial[env.rid] = (meta, pieces, size)
        elif kind == Kind.CANCEL:
            self._drop_partial(env.rid)
            call = self.calls.get(env.rid)
            if call is not None:
                call.end()

    def _take(self, rid: int, held: int, size: int) -> bool:
        """Hold ``size`` more bytes of request ``rid`` (``held`` so far), checked as they arrive;
        past the cap or the job's budget the request is answered 413 and nothing of it is held."""
        hub = self.hub
        budget = self.job.budget
        if held + size <= hub.max_body and budget.take(size):
            return True
        budget.give(held)
        message = too_large(hub.max_body, "request") if held + size > hub.max_body else over_budget(budget)
        self.send_error(rid, 413, message, "body_too_large")
        return False

    def _drop_partial(self, rid: int) -> None:
        entry = self.partial.pop(rid, None)
        if entry is not None:
            self.job.budget.give(entry[2])

    def send_error(self, rid: int, status: int, message: str, code: str, retry_after: bool = False) -> None:
        headers = {**JSON_HEADERS, "retry-after": "5"} if retry_after else JSON_HEADERS
        self.hub.channel_answers[status] += 1
        self.writer.put(
            protocol.encode(Kind.RESPONSE, rid, {"s": status, "h": headers}, json_error(status, message, code))
        )

    def _start(self, rid: int, meta: dict[str, Any], body: bytes, held: int) -> None:
        """Validate one complete request (``held`` bytes of the job's budget) and hand it to the
        hub (or the backlog)."""
        hub = self.hub
        job = self.job
        method = meta.get("m", "POST")
        path = str(meta.get("p", "")).lstrip("/")
        if forwarded_method(path) != method:
            job.budget.give(held)
            self.send_error(rid, 404, not_forwarded(str(method), path), "not_found")
            return
        if rid in self.calls:
            job.budget.give(held)
            self.send_error(rid, 400, f"request id {rid} is already in use on this channel", "bad_request")
            return
        timeout = call_timeout(hub.request_deadline, meta.get("d"))
        given = meta.get("h")
        query = meta.get("q")
        out = request_meta(
            str(method),
            path,
            query if isinstance(query, str) else None,
            given if isinstance(given, dict) else {},
            meta.get("r"),
            job,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hub_rid = hub.next_rid()
        call = _ChannelCall(self, rid, timeout)
        frames = protocol.encode_body(Kind.REQUEST, hub_rid, out, body)
        call.call = hub.new_call(job, hub_rid, frames, deadline, call, held)
        call.timer = loop.call_at(deadline, call.put_nowait, EXPIRE)
        self.calls[rid] = call
        slots = job.semaphore()
        if not self.backlog and slots.try_acquire():
            call.holds_slot = True
            hub.submit(job, call.call)
            return
        self.backlog.append(call)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._drain_backlog())

    async def _drain_backlog(self) -> None:
        """Hand waiting calls their slots in order (backpressure: they wait, none fails)."""
        slots = self.job.semaphore()
        backlog = self.backlog
        while backlog:
            await slots.acquire()
            while backlog and backlog[0].ended:
                backlog.popleft()
            if not backlog or self.closed:
                slots.release()
                return
            call = backlog.popleft()
            call.holds_slot = True
            self.hub.submit(self.job, call.call)

    def close_calls(self) -> None:
        """The job's side went away: every call of this channel is over (the agent is told)."""
        self.closed = True
        if self._pump is not None:
            self._pump.cancel()
        for call in list(self.calls.values()):
            call.end()
        for rid in list(self.partial):
            self._drop_partial(rid)
        self.backlog.clear()


class _ChannelCall:
    """Receives one call's events from the hub (as ``Call.events``) and answers the job at once.

    Non-streamed answers are relayed when complete, so a replayed call (its agent went away
    mid-body) never shows the job a partial answer; streamed ones chunk by chunk.
    """

    __slots__ = (
        "call",
        "channel",
        "ended",
        "head",
        "holds_slot",
        "parts",
        "rid",
        "streaming",
        "timeout",
        "timer",
    )

    def __init__(self, channel: JobChannel, rid: int, timeout: float) -> None:
        self.channel = channel
        self.rid = rid
        self.timeout = timeout
        self.call: Call = None  # type: ignore[assignment]  # set right after construction
        self.timer: asyncio.TimerHandle | None = None
        self.holds_slot = False
        self.ended = False
        self.streaming = False
        self.parts: list[bytes] | None = None
        """A non-streamed answer that arrives in pieces, kept until its last piece."""
        self.head: dict[str, Any] = {}

    def put_nowait(self, event: CallEvent) -> None:
        if self.ended:
            return
        put = self.channel.writer.put
        rid = self.rid
        if isinstance(event, Head):
            meta = event.meta
            body = event.body
            if event.fin or meta.get("stream"):
                self.channel.hub.channel_answers[meta.get("s", 0)] += 1
            if event.fin:
                put(protocol.encode(Kind.RESPONSE, rid, meta, body))
                self.end()
            elif meta.get("stream"):
                # From here on bytes reach the caller: a lost agent can no longer be hidden.
                self.call.replayable = False
                self.streaming = True
                put(protocol.encode(Kind.RESPONSE, rid, meta, body, fin=False))
                self.channel.hub.release(self.call, len(body))
            else:
                self.parts = [body]
                self.head = meta
        elif isinstance(event, Data):
            body, fin = event.body, event.fin
            if self.streaming:
                if body or fin:
                    put(protocol.encode(Kind.DATA, rid, None, body, fin=fin))
                    self.channel.hub.release(self.call, len(body))
                if fin:
                    self.end()
                return
            if self.parts is None:
                return  # stray data of an answer that was reset
            # The hub caps the answer as its pieces arrive (a 502 ``Fail`` past the cap).
            self.parts.append(body)
            if fin:
                self.channel.hub.channel_answers[self.head.get("s", 0)] += 1
                whole = b"".join(self.parts)
                for frame in protocol.encode_body(Kind.RESPONSE, rid, self.head, whole):
                    put(frame)
                self.end()
        elif isinstance(event, Reset):
            self.parts = None  # the call is replayed; what arrived of it is void
        elif isinstance(event, Fail):
            if self.streaming:
                put(protocol.encode(Kind.DATA, rid, {"error": event.message}, fin=True))
            else:
                self.channel.send_error(rid, event.status, event.message, event.code)
            self.end()
        elif isinstance(event, Expire):
            self._expire()

    def _expire(self) -> None:
        channel = self.channel
        if self.streaming:
            channel.writer.put(
                protocol.encode(Kind.DATA, self.rid, {"error": "the stream passed its tunnel deadline"}, fin=True)
            )
        else:
            answer = timeout_answer(channel.hub, channel.job, dispatched=self.call.dispatched, timeout=self.timeout)
            channel.send_error(self.rid, answer.status, answer.message, answer.code, retry_after=answer.retry_after)
        self.end()

    def end(self) -> None:
        """Forget the call everywhere: hub, agent (cancelled if still working), slot, timer."""
        if self.ended:
            return
        self.ended = True
        channel = self.channel
        channel.calls.pop(self.rid, None)
        if self.timer is not None:
            self.timer.cancel()
        call = self.call
        if call is not None and not call.done:
            channel.hub.finish(channel.job, call)
        if self.holds_slot:
            self.holds_slot = False
            channel.job.semaphore().release()
