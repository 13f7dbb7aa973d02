"""The job's side of the job channel: a private role's model calls over one WebSocket.

A proctor server points a proctor job's private roles at its model facade with a typed run option
(``proctor.models.private``), which gives them this transport; the engine then sends their calls over one WebSocket to
``<facade base URL>/channel`` instead of one HTTP request each (see ``proctor.server.tunnel.channel`` for why). The
answers come back exactly as the facade would give them (status, headers, body, or a stream of
chunks), so the engine's client interprets both paths with the same code.

One connection serves every call of a role; it is opened at the first call and again after it
breaks. A broken connection fails the calls it carried with :class:`ChannelError`, a transient
connection failure the engine retries: the hub keeps nothing for a job channel that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from proctor.errors import ModelAbortError
from proctor.models.client import SAMPLE_ID_HEADER, AttemptFailure, classify_status, parse_body, read_stream
from proctor.models.types import ChatResult
from proctor.tunnel import protocol
from proctor.tunnel.protocol import Envelope, FrameWriter, Inbox, Kind, channel_url

__all__ = ["ChannelAnswer", "ChannelError", "ChannelTransport", "TunnelChannel", "channel_url"]


class ChannelError(ConnectionError):
    """The channel broke (or was refused) while a call used it.

    ``refused`` holds the HTTP status when the server refused the handshake: retrying cannot
    help then. Otherwise the call may be retried.
    """

    def __init__(self, message: str, *, refused: int | None = None) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(slots=True)
class _Piece:
    """More bytes of a streamed answer; ``fin`` on the last."""

    body: bytes
    fin: bool


@dataclass(slots=True)
class _Broken:
    """The stream broke off (the model, the agent or the connection): why."""

    why: str


_StreamEvent = _Piece | _Broken


class _Pending:
    """One call on the channel, from its request until its answer is complete."""

    __slots__ = ("future", "head", "parts", "stream")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.head: dict[str, Any] | None = None
        self.parts: list[bytes] | None = None
        self.stream: Inbox[_StreamEvent] | None = None


class ChannelAnswer:
    """An answer's status and headers, with its body, or its chunks as they arrive."""

    __slots__ = ("_conn", "_deadline", "_rid", "_stream", "body", "headers", "status")

    def __init__(
        self,
        conn: _Connection,
        rid: int,
        head: dict[str, Any],
        body: bytes,
        stream: Inbox[_StreamEvent] | None,
        deadline: float,
    ) -> None:
        self._conn = conn
        self._rid = rid
        self._stream = stream
        self._deadline = deadline
        self.status = int(head.get("s", 502))
        self.headers: dict[str, str] = {k.lower(): v for k, v in (head.get("h") or {}).items()}
        self.body = body
        """The whole body; for a stream, the first chunk."""

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece (a non-streamed answer is one piece)."""
        if self.body:
            yield self.body
        stream = self._stream
        if stream is None:
            return
        async with asyncio.timeout_at(self._deadline):
            while True:
                event = await stream.get()
                if isinstance(event, _Broken):
                    raise ChannelError(event.why)
                if event.body:
                    yield event.body
                if event.fin:
                    self._stream = None
                    return

    async def read(self) -> bytes:
        """The whole body, even of a stream (e.g. an error answered as a stream)."""
        if self._stream is None:
            return self.body
        return b"".join([piece async for piece in self.chunks()])

    def release(self) -> None:
        """Done with the answer: if a stream is still running, tell the hub to stop it."""
        if self._stream is not None:
            self._stream = None
            self._conn.cancel(self._rid)


class _Connection:
    """One open WebSocket: its writer, its reader and the calls waiting on it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.writer = FrameWriter(ws.send_bytes)
        self.pending: dict[int, _Pending] = {}
        self.closed = False
        self._writer_task = asyncio.create_task(self.writer.run())
        self._reader_task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        why = "the server closed the job channel"
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.BINARY:
                    continue
                for env in protocol.decode(message.data):
                    self._on_envelope(env)
            if self.ws.close_code is not None:
                why += f" (code {self.ws.close_code})"
        except ValueError:
            why = "malformed message on the job channel"
        except (aiohttp.ClientError, OSError) as exc:
            why = f"the job channel failed ({type(exc).__name__})"
        finally:
            self._fail_all(why)

    def _on_envelope(self, env: Envelope) -> None:
        pending = self.pending.get(env.rid)
        if pending is None:
            return
        if env.kind == Kind.RESPONSE:
            head = env.meta or {}
            if env.fin:
                del self.pending[env.rid]
                _resolve(pending.future, (head, env.body, None))
            elif head.get("stream"):
                pending.stream = Inbox[_StreamEvent]()
                _resolve(pending.future, (head, env.body, pending.stream))
            else:
                pending.head = head
                pending.parts = [env.body]
        elif env.kind == Kind.DATA:
            if pending.stream is not None:
                if env.meta and "error" in env.meta:
                    del self.pending[env.rid]
                    pending.stream.put_nowait(_Broken(str(env.meta["error"])))
                    return
                if env.fin:
                    del self.pending[env.rid]
                pending.stream.put_nowait(_Piece(env.body, env.fin))
            elif pending.parts is not None:
                pending.parts.append(env.body)
                if env.fin:
                    del self.pending[env.rid]
                    _resolve(pending.future, (pending.head or {}, b"".join(pending.parts), None))

    def cancel(self, rid: int) -> None:
        """The caller gave up on ``rid``: forget it and let the hub stop the model's work."""
        if self.pending.pop(rid, None) is not None and not self.closed:
            self.writer.put(protocol.encode(Kind.CANCEL, rid))

    def _fail_all(self, why: str) -> None:
        self.closed = True
        self.writer.close()
        self._writer_task.cancel()
        pending, self.pending = self.pending, {}
        for call in pending.values():
            if not call.future.done():
                call.future.set_exception(ChannelError(why))
            elif call.stream is not None:
                call.stream.put_nowait(_Broken(why))

    async def aclose(self) -> None:
        self._fail_all("the job channel was closed")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await self.ws.close()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader_task


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class TunnelChannel:
    """A private role's calls over one WebSocket to the server's hub.

    ``headers`` authenticate the connection (the job's internal token as a bearer token); they
    are sent once, in the handshake, never with each call.
    """

    def __init__(self, url: str, headers: Mapping[str, str], session: aiohttp.ClientSession) -> None:
        self.url = url
        self._headers = dict(headers)
        self._session = session
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:  # never show the token
        return f"<TunnelChannel {self.url}>"

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                try:
                    ws = await self._session.ws_connect(
                        self.url, headers=self._headers, max_msg_size=8 * protocol.MAX_MESSAGE, compress=0
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    raise ChannelError(
                        f"the server refused the job channel (HTTP {exc.status})", refused=exc.status
                    ) from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise ChannelError(f"cannot open the job channel ({type(exc).__name__}: {exc})") from None
                conn = self._conn = _Connection(ws)
            return conn

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        *,
        timeout: float,
        role: str | None = None,
    ) -> ChannelAnswer:
        """Send one call; wait for its status and headers (and whole body unless it streams).

        ``role`` names the private role the call is for: an agent serving several local models
        picks that role's. Raises ``TimeoutError`` after ``timeout`` seconds (the hub is told to stop the call) and
        :class:`ChannelError` if the connection cannot be opened or breaks first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._connection()
        rid = next(self._ids) % 0xFFFFFFFF + 1
        meta: dict[str, Any] = {"m": method, "p": path, "d": timeout}
        if headers:
            meta["h"] = headers
        if role is not None:
            meta["r"] = role
        pending = _Pending(loop.create_future())
        conn.pending[rid] = pending
        put = conn.writer.put
        for frame in protocol.encode_body(Kind.REQUEST, rid, meta, body):
            put(frame)
        timer = loop.call_at(deadline, _expire, pending.future)
        try:
            if len(body) > protocol.CHUNK:
                await conn.writer.drain()
            head, first, stream = await pending.future
        except BaseException:
            conn.cancel(rid)
            raise
        finally:
            timer.cancel()
        return ChannelAnswer(conn, rid, head, first, stream, deadline)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()


_JSON_HEADERS = {"Content-Type": "application/json"}


class ChannelTransport:
    """A private role's replica reached over its job channel: same answers, same exceptions as
    :class:`~proctor.models.transport.http.HttpTransport`.

    The internal token authenticated the channel once, at its handshake; the calls carry only
    their own headers and the role's name (an agent serving several local models picks that
    role's).
    """

    __slots__ = ("_api_key_env", "_channel", "_endpoint", "_model", "_request_timeout", "_role")

    def __init__(
        self,
        channel: TunnelChannel,
        base_url: str,
        *,
        role: str,
        model: str,
        api_key_env: str | None,
        request_timeout: float,
    ) -> None:
        self._channel = channel
        self._endpoint = base_url
        self._role = role
        self._model = model
        self._api_key_env = api_key_env
        self._request_timeout = request_timeout

    def __repr__(self) -> str:
        return f"<ChannelTransport {self._channel.url}>"

    @property
    def channel(self) -> TunnelChannel:
        """The connection this transport sends over (one per replica)."""
        return self._channel

    async def send(
        self, data: bytes, sample_id: str | None, timeout: aiohttp.ClientTimeout, *, stream: bool, completions: bool
    ) -> ChatResult:
        endpoint = self._endpoint
        path = "/completions" if completions else "/chat/completions"
        headers = _JSON_HEADERS if sample_id is None else {**_JSON_HEADERS, SAMPLE_ID_HEADER: sample_id}
        seconds = timeout.total or self._request_timeout
        t0 = time.perf_counter()
        try:
            answer = await self._channel.request("POST", path, data, headers, timeout=seconds, role=self._role)
            try:
                if answer.status == 200:
                    if stream:
                        return await read_stream(answer.chunks(), endpoint, t0)
                    return parse_body(await answer.read(), endpoint)
                body = (await answer.read()).decode("utf-8", "replace")
            finally:
                answer.release()
        except TimeoutError:
            raise AttemptFailure("timeout", f"no complete answer from {endpoint} within {seconds}s") from None
        except ChannelError as exc:
            if exc.refused in (401, 403, 404):
                # Every call would be refused the same way: stop the run rather than error each sample.
                abort = ModelAbortError(
                    f"{endpoint}: {exc} (the role's transport is 'tunnel')",
                    hint="transport 'tunnel' is for the private roles of jobs a proctor server runs; "
                    "its base_url must be that server's facade, and the key its internal token",
                )
                abort.status = exc.refused
                raise abort from None
            raise AttemptFailure("connection", f"connection to {endpoint} failed: {exc}") from None
        raise classify_status(
            answer.status,
            body,
            url=endpoint + path,
            model=self._model,
            api_key_env=self._api_key_env,
            retry_after=answer.headers.get("retry-after"),
        )

    async def aclose(self) -> None:
        await self._channel.aclose()
