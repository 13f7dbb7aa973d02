"""Submitter side of the tunnel: answer a job's model calls from the submitter's own model.

The agent opens a WebSocket to the server (outbound only, so it works from behind a firewall or
NAT), authenticates with the user token and the job's tunnel secret, and forwards every call it
receives to the local OpenAI-compatible model through one pooled aiohttp session. The model's URL
and API key stay in this process: the key is added here, to requests that leave this machine for
the model only, and neither is ever sent to the server or written to the log.

It keeps going through network trouble: a lost connection is retried with capped exponential
backoff, and the server replays the calls that were not answered. It stops when the job ends
(the server closes with ``CLOSE_JOB_FINISHED``), when ``stop_event`` is set, or on a refusal that
retrying cannot fix (bad token or secret), which it raises as ``AuthenticationError`` /
``PermissionDeniedError``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from proctor._loop import run as run_loop
from proctor.errors import AuthenticationError, InputError, PermissionDeniedError
from proctor.tunnel import protocol
from proctor.tunnel.protocol import (
    CHUNK,
    FORWARDED_REQUEST_HEADERS,
    Budget,
    Envelope,
    FrameWriter,
    Kind,
    forwarded_method,
)

__all__ = ["AgentStats", "TunnelAgent", "run_agent", "run_agent_sync", "tunnel_ws_url"]

_logger = logging.getLogger("proctor.tunnel.agent")

KEPT_RESPONSE_HEADERS = ("content-type", "retry-after", "x-request-id")
"""Response headers relayed to the job (plus ``x-ratelimit-*``/``openai-*``): what an OpenAI
client looks at. Hop-by-hop and encoding headers are not, since the body is re-framed."""


@dataclass(slots=True)
class AgentStats:
    """What the agent did; also what its log reports."""

    served: int = 0
    """Calls answered by the model (any status, including the model's own errors)."""
    failed: int = 0
    """Calls the model could not be reached for (answered 502 to the job)."""
    refused: int = 0
    """Calls the server sent that are not on the allow-list (answered 403; the model not called)."""
    connects: int = 0
    reconnects: int = 0
    in_flight: int = 0


def tunnel_ws_url(server_url: str, job_id: str) -> str:
    """``http(s)://host[:port][/prefix]`` -> ``ws(s)://host[:port][/prefix]/v1/jobs/<id>/tunnel``."""
    parts = urlsplit(server_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise InputError(f"server URL must be http(s)://host[:port], got {server_url!r}")
    path = f"{parts.path}/v1/jobs/{quote(job_id, safe='')}/tunnel"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class _Refused(Exception):
    """The server refused the handshake with this HTTP status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class TunnelAgent:
    """Serves one job's tunnel from a local model.

    Args:
        server_url: the proctor server, ``http(s)://host:port``.
        job_id: the private-mode job.
        token: the submitter's user token.
        tunnel_secret: the job's tunnel secret from the submission response.
        model_url: the local model's base URL, ending ``/v1`` (calls arrive as ``/chat/completions``).
        api_key: the local model's key, if it needs one.
        role_models: ``{role: (base_url, api_key)}`` when the job's private roles are different
            local models; a call naming one of these roles goes to its model, any other call
            to ``model_url``.
        connections: parallel WebSockets to open; the server spreads calls over them.
        log: where progress lines go (default: the ``proctor.tunnel.agent`` logger).
        max_backoff: cap, in seconds, of the wait between reconnection attempts.
        refused_patience: after having been connected, how long a refusal (403) is retried
            before giving up, since a restarting server refuses until it has restored the job.
        report_every: seconds between "served N calls" log lines while calls are flowing.
        model_connections: connection cap of the pooled session to the local model.
        max_request_body: cap on one request body the server sends (default 64 MiB, the hub's
            default ``max_body``); checked as its pieces arrive, whatever the server says.
        max_partial_bytes: cap on the request bodies still arriving on one connection together
            (default 256 MiB). A request past either is answered 413 and not forwarded.
    """

    def __init__(
        self,
        server_url: str,
        job_id: str,
        token: str,
        tunnel_secret: str,
        model_url: str,
        api_key: str | None = None,
        *,
        role_models: Mapping[str, tuple[str, str | None]] | None = None,
        connections: int = 1,
        log: Callable[[str], None] | None = None,
        max_backoff: float = 10.0,
        refused_patience: float = 120.0,
        report_every: float = 30.0,
        model_connections: int = 512,
        max_request_body: int = 64 * 1024 * 1024,
        max_partial_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.ws_url = tunnel_ws_url(server_url, job_id)
        self.job_id = job_id
        self._headers = {"Authorization": f"Bearer {token}", protocol.SECRET_HEADER: tunnel_secret}
        self._default_route = _route(model_url, api_key)
        self._routes = {role: _route(url, key) for role, (url, key) in (role_models or {}).items()}
        """Per private role: the local model's base URL and Authorization header."""
        self.connections = max(1, connections)
        self._log = log or _logger.info
        self.max_backoff = max_backoff
        self.refused_patience = refused_patience
        self.report_every = report_every
        self.model_connections = model_connections
        self.max_request_body = max_request_body
        self.max_partial_bytes = max_partial_bytes
        self.stats = AgentStats()
        self._model: aiohttp.ClientSession | None = None
        self._sockets: set[aiohttp.ClientWebSocketResponse] = set()
        self._finished = asyncio.Event()

    def __repr__(self) -> str:  # never show the token, secret, model URL or key
        return f"TunnelAgent(job_id={self.job_id!r}, connections={self.connections})"

    async def run(self, stop_event: asyncio.Event | None = None) -> AgentStats:
        """Serve until the job ends or ``stop_event`` is set; returns the final counts."""
        self._finished = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=self.model_connections, limit_per_host=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as model,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as ws_session,
        ):
            self._model = model
            loops = [asyncio.create_task(self._connection_loop(ws_session)) for _ in range(self.connections)]
            stoppers = [asyncio.create_task(self._finished.wait())]
            if stop_event is not None:
                stoppers.append(asyncio.create_task(stop_event.wait()))
            reporter = asyncio.create_task(self._report())
            try:
                done, _ = await asyncio.wait([*loops, *stoppers], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task in loops and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in [*loops, *stoppers, reporter]:
                    task.cancel()
                await asyncio.gather(*loops, *stoppers, reporter, return_exceptions=True)
        s = self.stats
        self._log(f"tunnel for job {self.job_id} closed: served {s.served} calls, {s.failed} failed to reach the model")
        return self.stats

    def drop_connections(self) -> None:
        """Cut every WebSocket as a network failure would (no close handshake); the agent
        reconnects and the server replays what was unanswered. Used by tests and drills."""
        for ws in list(self._sockets):
            sock = ws.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # ------------------------------------------------------------------ connection handling

    async def _connection_loop(self, ws_session: aiohttp.ClientSession) -> None:
        failures = 0
        connected_before = False
        refused_since: float | None = None
        while True:
            try:
                ws = await self._connect(ws_session)
            except _Refused as exc:
                if exc.status == 401:
                    raise AuthenticationError(
                        "the server did not accept the user token", hint="check PROCTOR_TOKEN / --token-env"
                    ) from None
                now = time.monotonic()
                refused_since = refused_since or now
                if not connected_before or now - refused_since > self.refused_patience:
                    raise PermissionDeniedError(
                        f"the server refused the tunnel of job {self.job_id}: the job is unknown or finished, "
                        "the tunnel secret is wrong, or the token is not valid or not the submitter's",
                    ) from None
                failures += 1
                await self._backoff(failures, "refused (server restarting?)")
                continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                await self._backoff(failures, type(exc).__name__)
                continue
            refused_since = None
            self.stats.connects += 1
            if connected_before:
                self.stats.reconnects += 1
                self._log(f"tunnel for job {self.job_id}: reconnected (served {self.stats.served} calls so far)")
            else:
                self._log(f"tunnel for job {self.job_id}: connected")
            connected_before = True
            self._sockets.add(ws)
            since = time.monotonic()
            try:
                code = await self._serve(ws)
            finally:
                self._sockets.discard(ws)
                await ws.close()
            if time.monotonic() - since > 10.0:
                failures = 0  # a connection that lived is a fresh start; one that flaps backs off
            if code == protocol.CLOSE_JOB_FINISHED:
                self._log(f"tunnel for job {self.job_id}: the job has finished")
                self._finished.set()
                return
            if code == protocol.CLOSE_UNAUTHENTICATED:
                raise AuthenticationError("the server no longer accepts the user token")
            failures += 1
            self._log(f"tunnel for job {self.job_id}: connection lost (code {code}); reconnecting")
            await self._backoff(failures, None)

    async def _connect(self, ws_session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        try:
            return await ws_session.ws_connect(
                self.ws_url,
                headers=self._headers,
                max_msg_size=8 * protocol.MAX_MESSAGE,
                heartbeat=20.0,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403, 404):
                raise _Refused(exc.status) from None
            raise

    async def _backoff(self, failures: int, why: str | None) -> None:
        delay = min(self.max_backoff, 0.1 * 2 ** min(failures - 1, 10)) * random.uniform(0.5, 1.0)
        if why is not None and (failures == 1 or failures % 10 == 0):
            self._log(f"tunnel for job {self.job_id}: cannot connect ({why}); retrying (attempt {failures})")
        await asyncio.sleep(delay)

    async def _report(self) -> None:
        last = 0
        while True:
            await asyncio.sleep(self.report_every)
            s = self.stats
            if s.served != last:
                last = s.served
                counts = f"{s.failed} failed, {s.in_flight} in flight"
                self._log(f"tunnel for job {self.job_id}: served {s.served} calls ({counts})")

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        """Answer calls on one connection until it closes; returns the close code."""
        writer = FrameWriter(ws.send_bytes)
        writer_task = asyncio.create_task(writer.run())
        tasks: dict[int, asyncio.Task[None]] = {}
        partial: dict[int, tuple[dict[str, Any], list[bytes], int]] = {}
        held = Budget(self.max_partial_bytes)

        def start(rid: int, meta: dict[str, Any], body: bytes) -> None:
            task = asyncio.create_task(self._forward(writer, rid, meta, body))
            tasks[rid] = task
            task.add_done_callback(functools.partial(_forget_task, tasks, rid))

        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    if message.type == aiohttp.WSMsgType.ERROR:
                        break
                    continue
                for env in protocol.decode(message.data):
                    self._on_envelope(env, writer, start, tasks, partial, held)
        except ValueError:
            self._log(f"tunnel for job {self.job_id}: malformed message from the server; reconnecting")
        finally:
            # Calls in progress will be replayed by the server: stop spending the model on them.
            for task in list(tasks.values()):
                task.cancel()
            writer.close()
            writer_task.cancel()
        return ws.close_code

    def _on_envelope(
        self,
        env: Envelope,
        writer: FrameWriter,
        start: Callable[[int, dict[str, Any], bytes], None],
        tasks: dict[int, asyncio.Task[None]],
        partial: dict[int, tuple[dict[str, Any], list[bytes], int]],
        held: Budget,
    ) -> None:
        kind = env.kind
        if kind == Kind.REQUEST:
            dropped = partial.pop(env.rid, None)  # a request id used again: what arrived is void
            if dropped is not None:
                held.give(dropped[2])
            if env.fin:
                start(env.rid, env.meta or {}, env.body)
            elif self._take(writer, held, env.rid, 0, len(env.body)):
                partial[env.rid] = (env.meta or {}, [env.body], len(env.body))
        elif kind == Kind.DATA:
            entry = partial.pop(env.rid, None)
            if entry is None:
                return
            meta, pieces, size = entry
            if not self._take(writer, held, env.rid, size, len(env.body)):
                return
            pieces.append(env.body)
            size += len(env.body)
            if env.fin:
                held.give(size)
                start(env.rid, meta, b"".join(pieces))
            else:
                partial[env.rid] = (meta, pieces, size)
        elif kind == Kind.PING:
            writer.put(protocol.encode(Kind.PONG, 0, env.meta))
        elif kind == Kind.CANCEL:
            dropped = partial.pop(env.rid, None)
            if dropped is not None:
                held.give(dropped[2])
            task = tasks.pop(env.rid, None)
            if task is not None:
                task.cancel()
        # WELCOME and unknown kinds need no action.

    def _take(self, writer: FrameWriter, held: Budget, rid: int, so_far: int, size: int) -> bool:
        """Hold ``size`` more bytes of request ``rid`` (``so_far`` held): the server is not trusted
        to keep its own caps. Past them the request is answered 413 and nothing of it is kept."""
        if so_far + size <= self.max_request_body and held.take(size):
            return True
        held.give(so_far)
        self.stats.refused += 1
        cap = "its cap" if so_far + size > self.max_request_body else "its cap for bodies arriving at once"
        reason = f"request body over the tunnel client's {cap}"
        self._log(f"tunnel for job {self.job_id}: refused a call from the server: {reason}")
        writer.put(_error_answer(rid, 413, reason, "tunnel_refused", "body_too_large"))
        return False

    async def _forward(self, writer: FrameWriter, rid: int, meta: dict[str, Any], body: bytes) -> None:
        """One call: local model -> relayed answer, chunk by chunk when it streams."""
        assert self._model is not None
        refusal = refused_call(meta)
        if refusal is not None:
            # The server asked for something a job never needs: the local model (and its key)
            # is not called. One line, without the query (it may carry anything).
            self.stats.refused += 1
            self._log(f"tunnel for job {self.job_id}: refused a call from the server: {refusal}")
            writer.put(_error_answer(rid, 403, refusal, "tunnel_refused", "not_allowed"))
            return
        role = meta.get("r")
        base, auth = self._routes.get(role if isinstance(role, str) else "", self._default_route)
        url = base + meta["p"]
        if meta.get("q"):
            url += "?" + meta["q"]
        headers: dict[str, str] = dict(meta.get("h") or {})
        if auth:
            headers["Authorization"] = auth
        stats = self.stats
        stats.in_flight += 1
        head_sent = False
        try:
            async with self._model.request(meta["m"], url, data=body or None, headers=headers) as resp:
                out = {
                    k: v
                    for k, v in resp.headers.items()
                    if (lk := k.lower()) in KEPT_RESPONSE_HEADERS or lk.startswith(("x-ratelimit-", "openai-"))
                }
                if resp.content_type == "text/event-stream":
                    writer.put(
                        protocol.encode(Kind.RESPONSE, rid, {"s": resp.status, "h": out, "stream": True}, fin=False)
                    )
                    head_sent = True
                    async for chunk in resp.content.iter_any():
                        for start in range(0, len(chunk), CHUNK):
                            writer.put(protocol.encode(Kind.DATA, rid, None, chunk[start : start + CHUNK], fin=False))
                    writer.put(protocol.encode(Kind.DATA, rid, None, b"", fin=True))
                else:
                    data = await resp.read()
                    for frame in protocol.encode_body(Kind.RESPONSE, rid, {"s": resp.status, "h": out}, data):
                        writer.put(frame)
                    if len(data) > CHUNK:
                        await writer.drain()
            stats.served += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the job gets a 502 and the agent goes on
            stats.failed += 1
            # Only the exception's type: its text would name the model's host and port.
            reason = f"the tunnel client could not reach its model ({type(exc).__name__})"
            if head_sent:
                writer.put(protocol.encode(Kind.DATA, rid, {"error": reason}, fin=True))
            else:
                writer.put(_error_answer(rid, 502, reason, "tunnel_upstream_error", "upstream_unreachable"))
        finally:
            stats.in_flight -= 1


def _error_answer(rid: int, status: int, message: str, kind: str, code: str) -> bytes:
    """The agent's own answer to a call, in OpenAI's error shape so the job reads it as any error."""
    payload = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    return protocol.encode(Kind.RESPONSE, rid, {"s": status, "h": {"content-type": "application/json"}}, payload)


_SAFE_QUERY = re.compile(r"[!$&'()*+,;=:@/?%A-Za-z0-9._~-]{0,2048}")
_SAFE_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,1024}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def refused_call(meta: dict[str, Any]) -> str | None:
    """Why the agent will not forward a call the server sent, or None to forward it.

    The server is not trusted with the local model: only the facade's allow-list travels
    (``protocol.forwarded_method``: ``POST chat/completions``, ``POST completions``, ``GET
    models[/<name>]``), with a plain query string and only the forwarded request headers.
    """
    method, path = meta.get("m"), meta.get("p")
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        return "a call without a method and an absolute path"
    # As the log shows it: the server chose these characters, so no terminal escapes or newlines.
    shown = _UNPRINTABLE.sub("?", f"{method[:10]} {path[:100]}")
    if forwarded_method(path[1:]) != method:
        return f"{shown} is not one of the calls a job may make"
    query = meta.get("q")
    if query is not None and not (isinstance(query, str) and _SAFE_QUERY.fullmatch(query)):
        return f"{shown} with a query that is not a plain query string"
    headers = meta.get("h")
    if headers is not None and not (
        isinstance(headers, dict)
        and all(
            isinstance(k, str)
            and k.lower() in FORWARDED_REQUEST_HEADERS
            and isinstance(v, str)
            and _SAFE_HEADER_VALUE.fullmatch(v)
            for k, v in headers.items()
        )
    ):
        return f"{shown} with request headers other than {', '.join(FORWARDED_REQUEST_HEADERS)}"
    return None


def _route(model_url: str, api_key: str | None) -> tuple[str, str | None]:
    return model_url.rstrip("/"), f"Bearer {api_key}" if api_key else None


def _forget_task(tasks: dict[int, asyncio.Task[None]], rid: int, _task: asyncio.Task[None]) -> None:
    tasks.pop(rid, None)


async def run_agent(
    server_url: str,
    job_id: str,
    token: str,
    tunnel_secret: str,
    model_url: str,
    api_key: str | None = None,
    *,
    role_models: Mapping[str, tuple[str, str | None]] | None = None,
    stop_event: asyncio.Event | None = None,
    log: Callable[[str], None] | None = None,
    connections: int = 1,
) -> AgentStats:
    """Serve a private-mode job's tunnel until the job ends or ``stop_event`` is set.

    What ``proctor submit --private`` runs in-process next to its log follower, and what
    ``proctor tunnel`` runs alone.
    """
    agent = TunnelAgent(
        server_url,
        job_id,
        token,
        tunnel_secret,
        model_url,
        api_key,
        role_models=role_models,
        connections=connections,
        log=log,
    )
    return await agent.run(stop_event)


def run_agent_sync(
    server_url: str,
    job_id: str,
    token: str,
    tunnel_secret: str,
    model_url: str,
    api_key: str | None = None,
    *,
    role_models: Mapping[str, tuple[str, str | None]] | None = None,
    stop_event: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
    connections: int = 1,
) -> AgentStats:
    """``run_agent`` on a fresh event loop, for synchronous callers (e.g. a thread of the CLI).

    ``stop_event`` is a ``threading.Event``; setting it from any thread stops the agent.
    """
    agent = TunnelAgent(
        server_url,
        job_id,
        token,
        tunnel_secret,
        model_url,
        api_key,
        role_models=role_models,
        connections=connections,
        log=log,
    )

    async def main() -> AgentStats:
        stop = asyncio.Event()
        if stop_event is not None:
            loop = asyncio.get_running_loop()

            # A helper thread blocks on the threading.Event (no polling) and wakes the loop.
            def wake() -> None:
                stop_event.wait()
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:  # the loop already ended
                    pass

            threading.Thread(target=wake, name="proctor-tunnel-stop", daemon=True).start()
        return await agent.run(stop)

    return run_loop(main())
