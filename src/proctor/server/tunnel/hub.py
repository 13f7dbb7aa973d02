"""Server side of the tunnel: authenticated agent connections, request dispatch and replay.

A private-mode job's model calls arrive at the facade (``facade.py``) and become ``Call`` objects
that the hub hands to one of the job's connected agents. The hub owns everything that must
survive an agent going away: the unanswered calls are kept and replayed to the next agent that
attaches, so a flaky laptop connection costs time, never samples.

Security model, in one place:

* An agent proves two things before any traffic: who it is (the user token, checked by the
  server's authenticator) and that it is the submitter of *this* job (the per-job tunnel secret,
  returned only in the submission response). The user must be the job's owner. Unknown job,
  wrong secret and another user's token are refused alike, so the job id alone is worth nothing.
* The hub stores only SHA-256 digests of the tunnel secret and of the job's internal token and
  compares digests with ``hmac.compare_digest``.
* Nothing secret is logged: not the tokens, not the secret, and the agent never tells the hub
  its model URL or key (it adds the key itself on the submitter's machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import itertools
import logging
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from proctor.errors import AuthenticationError, NotFoundError, PermissionDeniedError, ProctorError
from proctor.server.bearer import parse_bearer
from proctor.server.tunnel.calls import (
    RESET,
    Agent,
    Call,
    CallEvents,
    Data,
    Fail,
    Head,
    Job,
    Slots,
)
from proctor.server.tunnel.channel import channel_endpoint
from proctor.server.tunnel.facade import FacadeApp, FastPath
from proctor.server.tunnel.rules import close_websocket, over_budget, too_large
from proctor.tunnel import protocol
from proctor.tunnel.protocol import CHANNEL_ROUTE, FACADE_ROUTE, Budget, Envelope, Kind

__all__ = ["Budget", "Call", "CallEvents", "Job", "Slots", "TunnelHub", "TunnelStateCallback"]

log = logging.getLogger("proctor.tunnel")

TunnelStateCallback = Callable[[str, bool], Awaitable[None] | None]
"""``on_tunnel_state(job_id, connected)``: False once a job has had no agent for ``grace``
seconds while it needed one; True when an agent attaches again after that."""

Authenticator = Callable[..., Any]
"""``fn(token)`` or ``fn(token, client_host)`` -> user or None; may be async."""

_rid_counter = itertools.count(1)


def digest(secret: str) -> bytes:
    """What the hub keeps instead of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def identity(user: Any) -> Any:
    """The value of a user object that is compared with a job's ``owner``.

    The server's ``Principal`` has ``.name``; strings and other shapes are accepted so the hub
    does not depend on the server's classes.
    """
    if isinstance(user, str):
        return user
    for attr in ("name", "id", "username", "user_id"):
        value = getattr(user, attr, None)
        if value is not None:
            return value
    if isinstance(user, dict):
        for key in ("name", "id", "username"):
            if key in user:
                return user[key]
    return user


class TunnelHub:
    """Routes a private-mode job's model calls over its submitter's WebSocket(s).

    Args:
        authenticator: ``fn(token)`` returning the user or None; sync or async. See
            ``set_authenticator`` (also for IP-identified open servers).
        on_tunnel_state: called with ``(job_id, connected)`` when a job loses its agents for
            longer than ``grace`` while it needs them (False) and when one attaches again (True).
        grace: seconds without any agent before the job is reported as waiting for its tunnel.
        request_deadline: default seconds a call may wait in total (queueing, no agent, the model)
            before the facade answers 503/504; a caller may ask for less with the
            ``X-Proctor-Deadline`` header.
        max_body: cap on a request or response body, in bytes (default 64 MiB), enforced as the
            bytes arrive.
        max_job_bytes: cap on the bytes of bodies one job's calls hold at once (requests and
            answers not yet relayed; default 256 MiB). A request past it is refused with 413,
            an answer with 502.
        max_inflight: calls forwarded at once per job; further calls wait (backpressure).
        heartbeat: seconds between pings; an agent silent for three of them is dropped.
        auth_timeout: seconds an agent that authenticates by first message has to send it.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator | None = None,
        on_tunnel_state: TunnelStateCallback | None = None,
        grace: float = 30.0,
        request_deadline: float = 900.0,
        max_body: int = 64 * 1024 * 1024,
        max_job_bytes: int = 256 * 1024 * 1024,
        max_inflight: int = 256,
        heartbeat: float = 15.0,
        auth_timeout: float = 10.0,
    ) -> None:
        self.on_tunnel_state = on_tunnel_state
        self.grace = grace
        self.request_deadline = request_deadline
        self.max_body = max_body
        self.max_job_bytes = max(max_job_bytes, max_body)
        self.max_inflight = max_inflight
        self.heartbeat = heartbeat
        self.auth_timeout = auth_timeout
        self._authenticator: Authenticator | None = authenticator
        self._auth_takes_host = False
        self._jobs: dict[str, Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self.channel_answers: Counter[int] = Counter()
        """Answers given over job channels, by HTTP status (for the server's metrics)."""
        self.router: APIRouter = self._build_router()
        """Include in the server app: the tunnel WebSocket, the job channel and the job-facing facade."""

    def _build_router(self) -> APIRouter:
        router = APIRouter()
        router.add_websocket_route("/v1/jobs/{job_id}/tunnel", self.websocket_endpoint, name="tunnel")
        router.add_websocket_route(CHANNEL_ROUTE, self.channel_endpoint, name="tunnel_channel")
        # An ASGI object (not a function) as endpoint: Starlette then skips its Request/Response
        # wrapping, which is a third of the facade's CPU per call. Left out of the OpenAPI schema
        # because nobody outside the server may call it.
        router.add_route(
            FACADE_ROUTE,
            FacadeApp(self),  # type: ignore[arg-type]  # an ASGI app is a valid endpoint
            methods=["GET", "POST"],
            name="tunnel_facade",
            include_in_schema=False,
        )
        return router

    # ------------------------------------------------------------------ server-facing API

    def set_authenticator(self, authenticator: Authenticator, *, with_client_host: bool = False) -> None:
        """Identify agents with ``authenticator(token)``, sync or async, returning a user or None.

        With ``with_client_host=True`` it is called as ``authenticator(token, client_host)``,
        for servers that identify users by IP (open mode), where the token may be None.
        """
        self._authenticator = authenticator
        self._auth_takes_host = with_client_host

    def register_job(
        self,
        job_id: str,
        *,
        owner: Any,
        roles: Iterable[str] = ("subject",),
        max_inflight: int | None = None,
    ) -> tuple[str, str]:
        """Open a tunnel slot for a job; returns ``(tunnel_secret, internal_token)``.

        The tunnel secret goes to the submitter (once, in the submission response); the internal
        token is the API key of the job's private roles (child environment only). Only their
        digests are kept, so the caller must hand them on now. Registering an id again replaces
        its secrets (e.g. after a server restart, when the submitter reconnects with a new one).
        """
        tunnel_secret = secrets.token_urlsafe(32)
        return tunnel_secret, self._register(job_id, owner, roles, digest(tunnel_secret), max_inflight)

    def restore_job(
        self,
        job_id: str,
        *,
        owner: Any,
        secret_digest: str,
        roles: Iterable[str] = ("subject",),
        max_inflight: int | None = None,
    ) -> str:
        """Open a job's tunnel again after a server restart; returns the new internal token.

        ``secret_digest`` is what ``secret_digest(job_id)`` gave before the restart (hex), so the
        submitter's agent, still holding the secret, is let back in when it reconnects.
        """
        return self._register(job_id, owner, roles, bytes.fromhex(secret_digest), max_inflight)

    def new_secret(self, job_id: str) -> str:
        """Replace a live job's tunnel secret (its submitter lost it); the job runs on untouched.

        Agents already connected stay; new connections need the new secret. The internal token,
        which the running job process holds, is kept.
        """
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} has no tunnel")
        tunnel_secret = secrets.token_urlsafe(32)
        job.secret_digest = digest(tunnel_secret)
        return tunnel_secret

    def secret_digest(self, job_id: str) -> str | None:
        """The hex digest of a job's tunnel secret, for a store to keep across restarts."""
        job = self._jobs.get(job_id)
        return job.secret_digest.hex() if job is not None else None

    def _register(
        self, job_id: str, owner: Any, roles: Iterable[str], secret_digest: bytes, max_inflight: int | None
    ) -> str:
        internal_token = "pti_" + secrets.token_urlsafe(32)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = Job(
                    job_id=job_id,
                    owner=None,
                    roles=[],
                    secret_digest=b"",
                    token_digest=b"",
                    max_inflight=0,
                    budget=Budget(self.max_job_bytes),
                )
            # A job registered again is the same object, changed in place: its agents, channels,
            # waiting calls and the bytes they hold stay with it, and nothing sees a stale copy.
            job.rekey(
                owner=owner,
                roles=list(roles),
                secret_digest=secret_digest,
                token_digest=digest(internal_token),
                max_inflight=max_inflight or self.max_inflight,
            )
        return internal_token

    def unregister_job(self, job_id: str) -> None:
        """The job ended: close its agents (they exit) and fail whatever still waits.

        Safe to call from any thread and for unknown ids.
        """
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._close_job(job)
        else:
            loop.call_soon_threadsafe(self._close_job, job)

    def wrap_app(self, app: ASGIApp, *, wrap_facade: Callable[[ASGIApp], ASGIApp] | None = None) -> ASGIApp:
        """``app`` with a fast path for facade calls (optional; see ``facade.FastPath``).

        Facade calls no longer pass through ``app``'s middleware; ``wrap_facade`` (e.g. a metrics
        middleware) is applied to the facade alone instead.
        """
        return FastPath(app, self, wrap_facade=wrap_facade)

    def is_connected(self, job_id: str) -> bool:
        """Whether the job has at least one authenticated agent right now."""
        job = self._jobs.get(job_id)
        return bool(job and job.agents)

    def agent_count(self, job_id: str) -> int:
        job = self._jobs.get(job_id)
        return len(job.agents) if job else 0

    def stats(self, job_id: str) -> dict[str, Any]:
        """Connected agents, calls in progress and waiting, calls served per agent, and the bytes
        of bodies its calls hold against the job's budget."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id} has no tunnel")
        return {
            "agents": len(job.agents),
            "channels": len(job.channels),
            "calls": len(job.calls),
            "waiting": len(job.waiting),
            "served": [a.served for a in job.agents],
            "messages": {
                "sent": sum(a.writer.messages for a in job.agents),
                "sent_envelopes": sum(a.writer.envelopes for a in job.agents),
                "received": sum(a.received_messages for a in job.agents),
                "received_envelopes": sum(a.received_envelopes for a in job.agents),
            },
            "waiting_for_tunnel": job.reported_down,
            "held_bytes": job.budget.held,
        }

    # ------------------------------------------------------------------ facade-facing API

    def check_internal_token(self, job_id: str, token: str | None) -> Job | None:
        """The job if ``token`` is its internal token, else None (same answer for unknown jobs)."""
        job = self._jobs.get(job_id)
        given = digest(token or "")
        expected = job.token_digest if job is not None else b"\0" * 32
        if not hmac.compare_digest(given, expected) or job is None or token is None:
            return None
        return job

    def new_call(self, job: Job, rid: int, frames: list[bytes], deadline: float, events: CallEvents, held: int) -> Call:
        """A call whose request body (``held`` bytes, already taken from the job's budget) is
        given back to the budget when the call ends."""
        return Call(rid=rid, frames=frames, deadline=deadline, budget=job.budget, held=held, events=events)

    def release(self, call: Call, size: int) -> None:
        """``size`` bytes of ``call``'s answer were relayed: they no longer count against its caps."""
        size = min(size, call.answer)
        call.answer -= size
        call.held -= size
        call.budget.give(size)

    @staticmethod
    def next_rid() -> int:
        """A request id unique among the calls in flight (u32 on the wire, 0 is reserved)."""
        return next(_rid_counter) % 0xFFFFFFFF + 1

    def submit(self, job: Job, call: Call) -> None:
        """Hand a call to the job's least-busy agent, or queue it until one attaches."""
        self._loop = self._loop or asyncio.get_running_loop()
        job.calls[call.rid] = call
        self._dispatch(job, call)

    def finish(self, job: Job, call: Call) -> None:
        """The caller is done with ``call`` (answered, timed out or gone): forget it everywhere."""
        if call.done:
            return
        call.done = True
        call.budget.give(call.held)
        call.held = call.answer = 0
        job.calls.pop(call.rid, None)
        agent = call.agent
        if agent is not None:
            if agent.calls.pop(call.rid, None) is not None and not agent.gone:
                agent.writer.put(protocol.encode(Kind.CANCEL, call.rid))
            call.agent = None
        elif job.waiting and not job.agents:
            with contextlib.suppress(ValueError):  # gave up while waiting for an agent
                job.waiting.remove(call)

    def waiting_reason(self, job: Job) -> str:
        if job.closed:
            return "the job has finished"
        if not job.agents:
            return (
                f"no tunnel client has been connected for job {job.job_id} (waiting_for_tunnel): "
                "run `proctor tunnel` (or keep `proctor submit --private` running) on the machine "
                "that holds the model"
            )
        return "the private model did not answer before the deadline"

    # ------------------------------------------------------------------ dispatch internals

    def _dispatch(self, job: Job, call: Call) -> None:
        agent = self._pick(job)
        if agent is None:
            if not job.waiting and job.reported_down:
                # Still no agent, and calls wait again (e.g. the job has just started): say so
                # again, since the job may have been queued when the tunnel was first reported down.
                self._report(job.job_id, False)
            job.waiting.append(call)
            self._arm_grace(job)
            return
        call.agent = agent
        call.dispatched = True
        agent.calls[call.rid] = call
        put = agent.writer.put
        for frame in call.frames:
            put(frame)

    @staticmethod
    def _pick(job: Job) -> Agent | None:
        agents = job.agents
        if not agents:
            return None
        if len(agents) == 1:
            return agents[0]
        # Least pending; ties broken round-robin so equal agents alternate.
        job.rr = (job.rr + 1) % len(agents)
        best = None
        for i in range(len(agents)):
            agent = agents[(job.rr + i) % len(agents)]
            if best is None or len(agent.calls) < len(best.calls):
                best = agent
        return best

    def _arm_grace(self, job: Job) -> None:
        if job.agents or job.grace_timer is not None or job.reported_down or job.closed:
            return
        loop = asyncio.get_running_loop()
        job.grace_timer = loop.call_later(self.grace, self._grace_expired, job)

    def _grace_expired(self, job: Job) -> None:
        job.grace_timer = None
        if job.agents or job.closed:
            return
        job.reported_down = True
        log.warning("tunnel of job %s: no client for %.0f s; the job waits for its tunnel", job.job_id, self.grace)
        self._report(job.job_id, False)

    def _report(self, job_id: str, connected: bool) -> None:
        callback = self.on_tunnel_state
        if callback is None:
            return
        try:
            result = callback(job_id, connected)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        except Exception:  # a broken callback must not take the tunnel down
            log.exception("on_tunnel_state callback failed for job %s", job_id)

    def _attach(self, job: Job, agent: Agent) -> None:
        job.agents.append(agent)
        if job.grace_timer is not None:
            job.grace_timer.cancel()
            job.grace_timer = None
        if job.reported_down:
            job.reported_down = False
            self._report(job.job_id, True)
        waiting, job.waiting = job.waiting, deque()
        replayed = 0
        for call in waiting:
            if not call.done:
                self._dispatch(job, call)
                replayed += 1
        log.info(
            "tunnel of job %s: client connected (%d connected, %d calls replayed)",
            job.job_id,
            len(job.agents),
            replayed,
        )

    def _detach(self, agent: Agent) -> None:
        if agent.gone:
            return
        agent.gone = True
        agent.writer.close()
        job = agent.job
        if agent in job.agents:
            job.agents.remove(agent)
        orphans = list(agent.calls.values())
        agent.calls.clear()
        for call in orphans:
            call.agent = None
            if call.done:
                continue
            if call.replayable:
                self.release(call, call.answer)  # what arrived of the answer is void
                call.events.put_nowait(RESET)
                self._dispatch(job, call)
            else:
                call.events.put_nowait(
                    Fail(502, "the tunnel client disconnected in the middle of a stream", "tunnel_failed")
                )
        if not job.agents:
            self._arm_grace(job)
        log.info(
            "tunnel of job %s: client disconnected after serving %d calls (%d still connected, %d calls to replay)",
            job.job_id,
            agent.served,
            len(job.agents),
            len(orphans),
        )

    def _close_job(self, job: Job) -> None:
        if job.grace_timer is not None:
            job.grace_timer.cancel()
            job.grace_timer = None
        for call in list(job.calls.values()):
            call.events.put_nowait(Fail(503, "the job has finished", "tunnel_failed"))
        job.waiting.clear()
        sockets = [agent.ws for agent in job.agents] + [channel.ws for channel in job.channels]
        for ws in sockets:
            task = asyncio.ensure_future(self.close_websocket(ws, protocol.CLOSE_JOB_FINISHED, "job finished"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    close_websocket = staticmethod(close_websocket)
    """Close a WebSocket if it is still open (``rules.close_websocket``)."""

    # ------------------------------------------------------------------ WebSocket endpoint

    async def _authenticate(self, ws: WebSocket, job_id: str, token: str | None, secret: str | None) -> Job:
        """The job whose tunnel this connection may serve; raises 401/403 ``ProctorError``s."""
        user = None
        if self._authenticator is not None and (token or self._auth_takes_host):
            host = ws.client.host if ws.client else None
            result = self._authenticator(token, host) if self._auth_takes_host else self._authenticator(token)
            user = await result if inspect.isawaitable(result) else result
        if user is None:
            raise AuthenticationError("the user token is missing or not valid")
        job = self._jobs.get(job_id)
        given = digest(secret or "")
        expected = job.secret_digest if job is not None else b"\0" * 32
        secret_ok = hmac.compare_digest(given, expected) and secret is not None
        if job is None or not secret_ok or not (user == job.owner or identity(user) == identity(job.owner)):
            raise PermissionDeniedError(
                f"this token and tunnel secret do not open the tunnel of job {job_id}",
                hint="use the tunnel secret printed by `proctor submit --private`, with the submitter's token",
            )
        if job.closed:
            raise PermissionDeniedError(f"job {job_id} has finished")
        return job

    async def websocket_endpoint(self, ws: WebSocket) -> None:
        """``/v1/jobs/{job_id}/tunnel``: authenticate, then serve until either side leaves."""
        self._loop = self._loop or asyncio.get_running_loop()
        job_id = ws.path_params["job_id"]
        token = parse_bearer(ws.headers.get("authorization"))
        secret = ws.headers.get(protocol.SECRET_HEADER)
        if token is not None or secret is not None:
            # Credentials in the handshake: refuse before accepting, so nothing is exchanged.
            try:
                job = await self._authenticate(ws, job_id, token, secret)
            except ProctorError as exc:
                await _deny(ws, exc)
                return
            await ws.accept()
        else:
            # Clients that cannot set headers send HELLO first; nothing else is read before it.
            await ws.accept()
            try:
                async with asyncio.timeout(self.auth_timeout):
                    message = await ws.receive_bytes()
                hello = next(protocol.decode(message))
                if hello.kind != Kind.HELLO or hello.meta is None:
                    raise AuthenticationError("the first tunnel message must be HELLO with token and secret")
                token, secret = hello.meta.get("token"), hello.meta.get("secret")
                if not isinstance(token, str | None) or not isinstance(secret, str | None):
                    raise ValueError("HELLO's token and secret must be strings")
                job = await self._authenticate(ws, job_id, token, secret)
            except ProctorError as exc:
                log.info("tunnel HELLO refused for %s: %s", ws.url.path, exc.message)
                code = protocol.CLOSE_UNAUTHENTICATED if exc.http_status == 401 else protocol.CLOSE_FORBIDDEN
                await self.close_websocket(ws, code, exc.message[:120])
                return
            except (ValueError, StopIteration) as exc:
                # A malformed first message (not the protocol, wrong JSON types): refused in one
                # line, never a traceback, whoever sends it.
                reason = str(exc) or "empty message"
                log.warning("tunnel HELLO refused for %s: malformed (%s)", ws.url.path, reason[:200])
                await self.close_websocket(ws, protocol.CLOSE_MALFORMED, "malformed HELLO")
                return
            except (TimeoutError, KeyError, WebSocketDisconnect, RuntimeError):
                await self.close_websocket(ws, protocol.CLOSE_UNAUTHENTICATED, "authentication expected first")
                return
        await self._serve(ws, job)

    async def channel_endpoint(self, ws: WebSocket) -> None:
        """``/internal/jobs/{job_id}/v1/channel``: a proctor job's own calls (see ``channel.py``)."""
        self._loop = self._loop or asyncio.get_running_loop()
        await channel_endpoint(self, ws)

    async def _serve(self, ws: WebSocket, job: Job) -> None:
        agent = Agent(ws, job)
        writer_task = asyncio.create_task(agent.writer.run())
        agent.writer.put(
            protocol.encode(
                Kind.WELCOME,
                0,
                {
                    "heartbeat": self.heartbeat,
                    "max_body": self.max_body,
                    "max_inflight": job.max_inflight,
                    "roles": job.roles,
                },
            )
        )
        heartbeat_task = asyncio.create_task(self._heartbeat(agent))
        self._attach(job, agent)
        close_code = 1000
        try:
            if not await self._read(agent):
                close_code = protocol.CLOSE_MALFORMED
        finally:
            heartbeat_task.cancel()
            self._detach(agent)
            writer_task.cancel()
            await self.close_websocket(ws, close_code, "")

    async def _read(self, agent: Agent) -> bool:
        """Take the agent's messages until it leaves (True) or sends a malformed one (False)."""
        async for data in protocol.binary_messages(agent.ws.receive):
            agent.last_seen = time.monotonic()
            agent.received_messages += 1
            try:
                for env in protocol.decode(data):
                    agent.received_envelopes += 1
                    self._on_envelope(agent, env)
            except ValueError as exc:
                log.warning("tunnel of job %s: malformed message (%s); dropping the client", agent.job.job_id, exc)
                return False
        return True

    def _on_envelope(self, agent: Agent, env: Envelope) -> None:
        kind = env.kind
        # A finished answer leaves ``agent.calls`` before its event is delivered: a job channel's
        # call acts on the event at once, and must not find itself still at the agent (which
        # would send the agent a needless CANCEL).
        if kind == Kind.RESPONSE or kind == Kind.DATA:
            call = agent.calls.get(env.rid)
            if call is None:
                return  # e.g. pieces still in flight of an answer refused below: dropped as they come
            if kind == Kind.RESPONSE:
                meta = response_meta(env.meta)  # before anything is held: a bad head drops the agent
            size = len(env.body)
            if size:
                # Capped as the bytes arrive, not when the last piece does: an answer that never
                # ends must not grow the server without bound.
                over_cap = call.answer + size > self.max_body
                if over_cap or not call.budget.take(size):
                    self._refuse_answer(agent, call, over_cap)
                    return
                call.answer += size
                call.held += size
            if env.fin:
                del agent.calls[env.rid]
                agent.served += 1
            if kind == Kind.RESPONSE:
                call.events.put_nowait(Head(meta, env.body, env.fin))
            elif env.meta and "error" in env.meta:  # the model broke off mid-stream
                call.events.put_nowait(Fail(502, str(env.meta["error"])[:500], "tunnel_failed"))
            else:
                call.events.put_nowait(Data(env.body, env.fin))
        elif kind == Kind.PONG or kind == Kind.PING:
            pass  # last_seen is already updated
        # Unknown kinds are ignored so that newer agents can talk to older hubs.

    def _refuse_answer(self, agent: Agent, call: Call, over_cap: bool) -> None:
        """An answer past ``max_body`` or the job's budget: the job's call gets 502 at once, the
        agent is told to stop, and whatever more it sends of that answer is dropped on arrival."""
        agent.calls.pop(call.rid, None)
        call.agent = None
        agent.writer.put(protocol.encode(Kind.CANCEL, call.rid))
        self.release(call, call.answer)
        message = too_large(self.max_body, "response") if over_cap else over_budget(call.budget)
        log.warning("tunnel of job %s: answer refused: %s", agent.job.job_id, message)
        call.events.put_nowait(Fail(502, message, "body_too_large"))

    async def _heartbeat(self, agent: Agent) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if time.monotonic() - agent.last_seen > 3 * self.heartbeat:
                log.warning(
                    "tunnel of job %s: client silent for %.0f s; dropping it", agent.job.job_id, 3 * self.heartbeat
                )
                self._detach(agent)  # replay its calls now, not after a close handshake that may never end
                await self.close_websocket(agent.ws, 1001, "heartbeat timeout")
                return
            agent.writer.put(protocol.encode(Kind.PING, 0, {"t": time.time()}))


def response_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """An agent's ``RESPONSE`` meta, checked: it becomes an HTTP status line and headers.

    Raises ``ValueError`` (the agent is dropped) unless ``s`` is an HTTP status, ``h`` maps
    header names to values that HTTP can carry, and ``stream`` is a boolean.
    """
    if meta is None:
        raise ValueError("RESPONSE without meta")
    status = meta.get("s", 502)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("RESPONSE status is not an HTTP status")
    headers = meta.get("h") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _HEADER_NAME.fullmatch(k) and _HEADER_VALUE.fullmatch(v)
        for k, v in headers.items()
    ):
        raise ValueError("RESPONSE headers are not HTTP headers")
    if not isinstance(meta.get("stream", False), bool):
        raise ValueError("RESPONSE stream flag is not a boolean")
    return meta


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,8192}")


async def _deny(ws: WebSocket, exc: ProctorError) -> None:
    """Refuse a handshake: the server answers HTTP 403 and no WebSocket is opened.

    One status for every reason (bad token, wrong secret, unknown job) tells a prober nothing,
    and unlike an ASGI denial response it does not make uvicorn's default WebSocket protocol log
    an error for every refused attempt. The reason is logged here, without any secret.
    """
    log.info("tunnel handshake refused for %s: %s", ws.url.path, exc.message)
    await ws.close(protocol.CLOSE_UNAUTHENTICATED if exc.http_status == 401 else protocol.CLOSE_FORBIDDEN)
