"""Connection-level limits uvicorn does not have: a header-read timeout, a head-size cap, a send
timeout and a cap on open sockets.

uvicorn closes a keep-alive connection that stays idle after an answer (``timeout_keep_alive``),
but a connection that never sends a complete request head is kept forever, and it accepts
sockets until the process runs out of file descriptors. Then ``accept()`` fails with EMFILE and
every new client, ``/health`` included, is turned away (1,100 idle sockets under a 1,024
open-files limit made ``/health`` fail 10 of 10). ``limit_concurrency`` does not help: it answers
503 to requests but keeps the idle sockets.

uvicorn's httptools protocol (the one ``uvicorn[standard]`` picks) also keeps every header of a
request head, however many: 190 MiB of 1 KB headers sent within the header timeout grew the
server by 223 MiB (h11, the fallback, has ``h11_max_incomplete_event_size``; httptools has nothing).

And an answer the client does not read waits for it forever: a client that asks for a large
download and reads nothing keeps its connection busy (and so never shed) for as long as it likes.

``guarded_protocol`` subclasses uvicorn's own HTTP protocol with four rules:

* a connection has ``header_timeout`` seconds to send a request head, counted from connecting
  and again from the end of each answer; then it is closed;
* a request head larger than ``max_head_bytes`` is answered 431 and the connection closed (counted
  per piece the socket delivers, so the server holds at most that plus one piece of it);
* an answer whose bytes wait ``send_timeout`` seconds for the client (the send buffer stays over
  its high-water mark) has its connection cut (aborted: a close would wait for the unsent bytes);
* past ``max_connections`` open connections, the connection idle the longest (no request in
  progress) is closed to make room, or the new one when every connection is busy. A stranger's
  idle sockets therefore never lock out a client that actually sends a request.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from proctor.server.frontdoor import error_response

LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
"""After a 431, what the server still reads and drops (at most) before it closes the socket."""
FD_RESERVE = 128
"""Open files kept back from connections for the job store, logs, job processes and the listener."""


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one (a default soft limit of 1,024 is far below
    what a server holding hundreds of connections needs); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(max_connections: int, open_files: int) -> int:
    """``max_connections``, lowered so that connections can never use up the open-files limit."""
    return max(8, min(max_connections, open_files - FD_RESERVE))


def guarded_protocol(
    *, header_timeout: float, max_connections: int, max_head_bytes: int, send_timeout: float
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the header timeout, the head-size cap, the send timeout
    and the connection cap."""

    class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _header_timer: asyncio.TimerHandle | None = None
        _idle_since: float = 0.0
        _in_head = False
        _head_bytes = 0
        _lingering = False
        _send_timer: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout, self._send_deadline)

        def resume_writing(self) -> None:
            self._stop_send_timer()
            super().resume_writing()

        def _stop_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_deadline(self) -> None:
            self._send_timer = None
            if self in self.connections and not self.transport.is_closing():
                self.transport.abort()  # uvicorn then tells the app the client is gone

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                self._head_bytes += len(data)  # the refused head's rest, read and dropped
                if self._head_bytes > LINGER_BYTES:
                    self.transport.close()
                return
            super().data_received(data)
            # Counted after parsing, and only while a head is still unfinished: a piece that ends
            # a head and starts its body is not head bytes (h11 parses otherwise: it never sets
            # _in_head, and its own limit applies).
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._refuse_head()

        def _refuse_head(self) -> None:
            """Answer 431, then close the way that lets the client read it: a close with unread
            bytes is a TCP reset, which can destroy the answer before the client reads it. So
            only the sending side is shut, and what still comes is dropped for a little while."""
            self._in_head = False
            self._disarm()
            self.transport.write(_head_too_large(max_head_bytes))
            if not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()
            self._lingering, self._head_bytes = True, 0
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes = True, 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._idle_since = time.monotonic()
            self._arm()
            if len(self.connections) > max_connections and _open_count(self.connections) > max_connections:
                _shed(self.connections, newcomer=self)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._stop_send_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._idle_since = time.monotonic()
            self._arm()

        def waiting_for_head(self) -> bool:
            """True when no request is in progress: before the first head, or after an answer."""
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(cycle.response_complete)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_deadline(self) -> None:
            self._header_timer = None
            # Not ours any more (upgraded to a WebSocket), or a request is being served.
            if self not in self.connections or self.transport.is_closing() or not self.waiting_for_head():
                return
            self.transport.close()

    return GuardedHTTPProtocol


def _head_too_large(limit: int) -> bytes:
    """A 431 in the server's error shape, as bytes for the socket: the head never reached the app,
    so the app cannot answer."""
    answer = error_response(431, f"the request head is larger than this server accepts ({limit:,} bytes)", close=True)
    head = "".join(f"{name.decode('latin-1')}: {value.decode('latin-1')}\r\n" for name, value in answer.raw_headers)
    return f"HTTP/1.1 431 Request Header Fields Too Large\r\n{head}\r\n".encode("latin-1") + bytes(answer.body)


def _open_count(connections: set[Any]) -> int:
    """Connections not already closing (a closed one leaves the set only when the loop says so)."""
    return sum(1 for c in connections if not c.transport.is_closing())


def _shed(connections: set[Any], *, newcomer: Any) -> None:
    """Close the longest-idle connection other than ``newcomer``; if none is idle, ``newcomer``."""
    idle = [
        c
        for c in connections
        if c is not newcomer
        and hasattr(c, "waiting_for_head")
        and c.waiting_for_head()
        and not c.transport.is_closing()
    ]
    victim = min(idle, key=lambda c: c._idle_since) if idle else newcomer
    victim.transport.close()
