"""The tunnel's wire format: small binary envelopes, several per WebSocket message.

Why binary envelopes rather than JSON text frames plus separate binary body frames: a model call
is usually one small request and one small answer, so the cheapest thing on the hot path is one
WebSocket message each way carrying header *and* body. The header is a tiny JSON object (method,
path, status, a few HTTP headers); the body rides raw, never base64-encoded or re-parsed.

Envelope layout (network byte order)::

    kind:u8  flags:u8  rid:u32  meta_len:u32  body_len:u32  meta[meta_len]  body[body_len]

``meta`` is UTF-8 JSON (or empty); ``rid`` is the request id that multiplexes concurrent calls
over one connection (0 for connection-level messages). A WebSocket message holds one or more
envelopes back to back: under load the sender coalesces whatever is queued into one message,
which is what keeps throughput up at high concurrency; at concurrency 1 nothing waits.

Bodies larger than ``CHUNK`` are split into a first envelope and ``DATA`` continuations, so no
WebSocket message ever exceeds about ``MAX_MESSAGE`` bytes whatever the body cap is: the
connection survives a 64 MiB body even through servers and proxies with a 1-16 MiB message limit.

Message kinds
-------------
``HELLO``    agent -> hub   ``{"token", "secret"}`` when they could not go in the handshake headers
``WELCOME``  hub -> agent   ``{"heartbeat", "max_body", "max_inflight", "roles"}`` after auth
``REQUEST``  hub -> agent   ``{"m": method, "p": path, "q": query, "h": headers, "r": role}`` + body
                            piece; ``r`` (optional) names the private role, for an agent that
                            serves each role from its own local model
``RESPONSE`` agent -> hub   ``{"s": status, "h": headers, "stream": bool}`` + body piece
``DATA``     both           continuation of a request or response body
``CANCEL``   hub -> agent   the caller is gone or its deadline passed: stop working on ``rid``
``PING``     hub -> agent   ``{"t": sent_at}``; the agent answers ``PONG`` with the same meta
``PONG``     agent -> hub

Flag ``FIN`` marks the last piece of a body; a ``REQUEST`` or ``RESPONSE`` with ``FIN`` set is
complete in one envelope (the common case).
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from enum import IntEnum
from typing import Any, Generic, NamedTuple, TypeVar
from urllib.parse import unquote

__all__ = [
    "Budget",
    "CHANNEL_ROUTE",
    "CHUNK",
    "FACADE_PATHS",
    "FACADE_ROUTE",
    "FORWARDED_REQUEST_HEADERS",
    "DEADLINE_HEADER",
    "ROLE_HEADER",
    "CLOSE_FORBIDDEN",
    "CLOSE_JOB_FINISHED",
    "CLOSE_MALFORMED",
    "CLOSE_UNAUTHENTICATED",
    "FIN",
    "binary_messages",
    "MAX_MESSAGE",
    "SECRET_HEADER",
    "Envelope",
    "FrameWriter",
    "Inbox",
    "Kind",
    "decode",
    "encode",
    "encode_body",
    "channel_url",
    "facade_base_url",
    "facade_job_path",
    "forwarded_method",
]

T = TypeVar("T")

HEADER = struct.Struct("!BBIII")
"""kind, flags, rid, meta length, body length."""

CHUNK = 512 * 1024
"""Largest body piece in one envelope: far below every common WebSocket message limit."""

MAX_MESSAGE = 1024 * 1024
"""The sender stops coalescing envelopes into one WebSocket message beyond this size."""

FIN = 0x01

# One reusable encoder and decoder: ``json.dumps(..., separators=...)`` builds a new encoder per
# call, which costs more than encoding a small header.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode

SECRET_HEADER = "x-proctor-tunnel-secret"
"""Handshake header carrying the per-job tunnel secret (the user token goes in Authorization)."""

CLOSE_UNAUTHENTICATED = 4401
"""Close code: the user token is missing or unknown. Retrying with the same token cannot help."""
CLOSE_FORBIDDEN = 4403
"""Close code: the token, job id and tunnel secret do not open this tunnel."""
CLOSE_JOB_FINISHED = 4010
"""Close code: the job ended; the agent's work is done and it exits without reconnecting."""
CLOSE_MALFORMED = 4400
"""Close code: the peer sent a message that is not valid tunnel protocol (a broken or hostile
peer); the hub says so in one log line and drops the connection."""


FACADE_PATHS = {"chat/completions": "POST", "completions": "POST", "models": "GET"}
"""What travels over the tunnel (plus ``GET models/<name>``): the facade and the job channel
answer anything else 404, and the agent refuses anything else the server sends it."""

DEADLINE_HEADER = "x-proctor-deadline"
"""A job's caller may ask for a shorter deadline (seconds) than the hub's default."""

ROLE_HEADER = "x-proctor-role"
"""Which private role a call is for (the engine sends it); the agent picks that role's model."""

JOBS_PREFIX = "/internal/jobs/"
"""Where a server's job-facing routes live; the one owner of this path (server and engine use it)."""

FACADE_ROUTE = JOBS_PREFIX + "{job_id}/v1/{path:path}"
"""The facade's route: a job's OpenAI-compatible base URL is ``JOBS_PREFIX<job_id>/v1``."""

CHANNEL_ROUTE = JOBS_PREFIX + "{job_id}/v1/channel"
"""Where a job's process opens its channel: the facade's base URL plus ``/channel``."""

_FACADE_PATH = re.compile("^" + re.escape(JOBS_PREFIX) + r"([^/]+)/v1/(.*)$")


def facade_base_url(host: str, port: int, job_id: str) -> str:
    """The base URL a job's process uses for its private roles."""
    return f"http://{host}:{port}{JOBS_PREFIX}{job_id}/v1"


def facade_job_path(path: str) -> tuple[str, str] | None:
    """``(job_id, path after /v1/)`` of a facade URL path, or None when it is not one."""
    match = _FACADE_PATH.match(path)
    return (match[1], match[2]) if match is not None else None


def channel_url(facade_base: str) -> str:
    """``http://host:port/internal/jobs/<id>/v1`` -> ``ws://host:port/internal/jobs/<id>/v1/channel``."""
    base = facade_base.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/channel"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/channel"
    raise ValueError(f"not an http(s) URL: {facade_base!r}")


FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "x-request-id", "x-proctor-sample-id")
"""Request headers passed to the private model. Never ``authorization``: the internal token stays
on the server, and the agent adds the model's own key on the submitter's machine."""

_UNSAFE_IN_PATH = re.compile(r"[\\?#\x00-\x20\x7f]")


def forwarded_method(path: str) -> str | None:
    """The one method with which ``path`` (relative to ``/v1``) is forwarded, or None.

    Both ends use it: the hub for what a job may send, the agent for what a server may make it
    fetch from the local model with the local key. For ``models/<name>``, a name whose decoded
    form holds ``.`` or ``..`` segments, empty segments, a backslash, ``?``, ``#``, spaces or
    control characters is refused: nobody may reach other URLs of the submitter's model server
    (``/v1/models/../../metrics``, ``/v1/models/%2e%2e/secret``) through the agent.
    """
    method = FACADE_PATHS.get(path)
    if method is not None:
        return method
    if not path.startswith("models/"):
        return None
    decoded = unquote(path)
    if _UNSAFE_IN_PATH.search(path) or _UNSAFE_IN_PATH.search(decoded):
        return None
    if any(part in ("", ".", "..") for part in decoded.split("/")):
        return None
    return "GET"


class Kind(IntEnum):
    """What an envelope carries; see the module docstring."""

    HELLO = 1
    WELCOME = 2
    REQUEST = 3
    RESPONSE = 4
    DATA = 5
    CANCEL = 6
    PING = 7
    PONG = 8


class Envelope(NamedTuple):
    """One decoded envelope."""

    kind: int
    flags: int
    rid: int
    meta: dict[str, Any] | None
    body: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)


def encode(
    kind: int, rid: int = 0, meta: dict[str, Any] | None = None, body: bytes = b"", *, fin: bool = True
) -> bytes:
    """One envelope as bytes; ``body`` must fit in one piece (use ``encode_body`` otherwise)."""
    raw = _encode_json(meta).encode() if meta is not None else b""
    return HEADER.pack(kind, FIN if fin else 0, rid, len(raw), len(body)) + raw + body


def encode_body(kind: int, rid: int, meta: dict[str, Any] | None, body: bytes) -> list[bytes]:
    """A header envelope of ``kind`` plus as many ``DATA`` pieces as ``body`` needs."""
    if len(body) <= CHUNK:
        return [encode(kind, rid, meta, body)]
    view = memoryview(body)
    out = [encode(kind, rid, meta, bytes(view[:CHUNK]), fin=False)]
    for start in range(CHUNK, len(body), CHUNK):
        piece = bytes(view[start : start + CHUNK])
        out.append(encode(Kind.DATA, rid, None, piece, fin=start + CHUNK >= len(body)))
    return out


async def binary_messages(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> AsyncIterator[bytes]:
    """The binary messages of an ASGI WebSocket until it closes.

    A text frame is not part of the protocol, so it ends the iteration too: the peer is dropped.
    """
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            return
        yield data


def decode(message: bytes) -> Iterator[Envelope]:
    """The envelopes of one WebSocket message, in order.

    Raises ``ValueError`` on a truncated or malformed message (also a ``meta`` that is not a JSON
    object): the peer is broken or hostile and the caller drops the connection.
    """
    offset = 0
    end = len(message)
    size = HEADER.size
    while offset < end:
        if end - offset < size:
            raise ValueError("truncated tunnel envelope header")
        kind, flags, rid, meta_len, body_len = HEADER.unpack_from(message, offset)
        offset += size
        stop = offset + meta_len + body_len
        if stop > end:
            raise ValueError("truncated tunnel envelope")
        meta = _decode_meta(message[offset : offset + meta_len]) if meta_len else None
        offset += meta_len
        yield Envelope(kind, flags, rid, meta, message[offset:stop])
        offset = stop


def _decode_meta(raw: bytes) -> dict[str, Any] | None:
    """An envelope's meta: a JSON object or null; anything else is a malformed message.

    Every reader of ``meta`` may then call ``.get`` on it; the values' types are still the
    reader's to check, since they come from a peer that may be hostile.
    """
    try:
        meta = _decode_json(raw.decode())
    except RecursionError:  # absurdly nested JSON: not ours
        raise ValueError("tunnel envelope meta nested too deeply") from None
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("tunnel envelope meta is not a JSON object")
    return meta


class FrameWriter:
    """The one task that writes to a WebSocket, coalescing queued envelopes into one message.

    Why a single writer: many request handlers answer over the same connection at once, and a
    WebSocket must not see interleaved sends. Why coalescing: under load each ``send`` costs a
    syscall and a frame; joining what queued up while the previous send was in progress turns
    64 small writes into one, with no added delay when the queue holds a single envelope.
    """

    HIGH_WATER = 16 * 1024 * 1024
    """Producers of large bodies wait (``drain``) while more than this many bytes are queued."""

    def __init__(self, send: Callable[[bytes], Awaitable[Any]]) -> None:
        self._send = send
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self.messages = 0
        """WebSocket messages sent; with ``envelopes``, shows how much coalescing happens."""
        self.envelopes = 0

    def put(self, envelope: bytes) -> None:
        """Queue one envelope; never blocks (see ``drain`` for large bodies)."""
        if self._closed:
            return
        self._queue.append(envelope)
        self._queued += len(envelope)
        if self._queued > self.HIGH_WATER:
            self._drained.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until the queue is below the high-water mark (backpressure for big bodies)."""
        await self._drained.wait()

    def close(self) -> None:
        """Stop accepting envelopes and let ``run`` return; pending envelopes are dropped."""
        self._closed = True
        self._queue.clear()
        self._wake.set()
        self._drained.set()

    async def run(self) -> None:
        """Send until ``close``; a send error ends the loop (the reader sees the close too)."""
        queue = self._queue
        while True:
            if not queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                # One more turn of the loop lets the other calls that became ready in this
                # burst (their sockets were readable together) queue up and share the message.
                await asyncio.sleep(0)
                continue
            first = queue.popleft()
            size = len(first)
            count = 1
            if queue and size < MAX_MESSAGE:
                parts = [first]
                while queue and size + len(queue[0]) <= MAX_MESSAGE:
                    piece = queue.popleft()
                    parts.append(piece)
                    size += len(piece)
                    count += 1
                message = b"".join(parts)
            else:
                message = first
            self._queued -= size
            self.messages += 1
            self.envelopes += count
            if self._queued <= self.HIGH_WATER // 2:
                self._drained.set()
            await self._send(message)


class Budget:
    """Bytes of bodies held in memory across many calls, and their cap.

    Why across calls and not only per call: a per-call cap alone lets a peer hold many calls'
    bodies at once, each just under the cap. The hub keeps one per job (request bodies from their
    first byte until the call ends, since they are kept for replay, and answers until relayed or
    the call ends); the agent one per connection (request bodies still arriving).
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.held = 0
        self.limit = limit

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes if the budget allows it."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class Inbox(Generic[T]):
    """A minimal single-consumer event queue: what ``asyncio.Queue`` does for this one use,
    without its bookkeeping (this is on the path of every call)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()
