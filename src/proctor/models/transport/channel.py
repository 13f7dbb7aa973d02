"""The job's side of the job channel: a private role's model calls over one WebSocket.

The proctor server points a proctor job's private roles at its model facade and marks them
``transport: tunnel``; the engine then sends their calls over one WebSocket to
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
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from proctor.tunnel import protocol
from proctor.tunnel.protocol import Envelope, FrameWriter, Inbox, Kind

__all__ = ["ChannelAnswer", "ChannelError", "TunnelChannel", "channel_url"]


def channel_url(facade_base_url: str) -> str:
    """``http://host:port/internal/jobs/<id>/v1`` -> ``ws://host:port/internal/jobs/<id>/v1/channel``."""
    base = facade_base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/channel"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/channel"
    raise ValueError(f"not an http(s) URL: {facade_base_url!r}")


class ChannelError(ConnectionError):
    """The channel broke (or was refused) while a call used it.

    ``refused`` holds the HTTP status when the server refused the handshake: retrying cannot
    help then. Otherwise the call may be retried.
    """

    def __init__(self, message: str, *, refused: int | None = None) -> None:
        super().__init__(message)
        self.refused = refused


class _Pending:
    """One call on the channel, from its request until its answer is complete."""

    __slots__ = ("future", "head", "parts", "stream")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.head: dict[str, Any] | None = None
        self.parts: list[bytes] | None = None
        self.stream: Inbox | None = None


class ChannelAnswer:
    """An answer's status and headers, with its body, or its chunks as they arrive."""

    __slots__ = ("_conn", "_deadline", "_rid", "_stream", "body", "headers", "status")

    def __init__(
        self,
        conn: _Connection,
        rid: int,
        head: dict[str, Any],
        body: bytes,
        stream: Inbox | None,
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
                if event[0] == "fail":
                    raise ChannelError(event[1])
                if event[1]:
                    yield event[1]
                if event[2]:
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
                pending.stream = Inbox()
                _resolve(pending.future, (head, env.body, pending.stream))
            else:
                pending.head = head
                pending.parts = [env.body]
        elif env.kind == Kind.DATA:
            if pending.stream is not None:
                if env.meta and "error" in env.meta:
                    del self.pending[env.rid]
                    pending.stream.put_nowait(("fail", str(env.meta["error"])))
                    return
                if env.fin:
                    del self.pending[env.rid]
                pending.stream.put_nowait(("data", env.body, env.fin))
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
                call.stream.put_nowait(("fail", why))

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
