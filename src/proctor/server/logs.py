"""Job logs: paging by byte offset, and live following over Server-Sent Events.

An SSE event's id is the byte offset just past its data, so a client that reconnects with
``Last-Event-ID`` resumes exactly where it stopped, with nothing lost or repeated. The job writes
its log file directly; one tail task per running job watches the file and wakes every follower
at once, so 50 followers cost one ``stat`` per tick, not 50.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from proctor.evals.progress import progress_record

log = logging.getLogger("proctor.server")

MAX_CHUNK = 64 * 1024
KEEPALIVE_SECONDS = 15.0


class Watch:
    """A broadcast 'something changed' signal with a version number.

    A waiter passes the version it saw before looking; if anything changed since, it returns at
    once. Without the version, a change between "read: nothing new" and "wait" would be missed.
    """

    def __init__(self) -> None:
        self.version = 0
        self._future: asyncio.Future[None] | None = None

    def notify(self) -> None:
        self.version += 1
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self, seen: int, timeout: float) -> bool:
        """True when the version moved past ``seen`` (now or within ``timeout``), else False."""
        if self.version != seen:
            return True
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # asyncio.wait adds a callback to the shared future: no task per waiter, no cancellation.
        done, _ = await asyncio.wait({self._future}, timeout=timeout)
        return bool(done)


class LogTail:
    """Watches one running job's log: wakes followers and keeps the latest progress line."""

    def __init__(
        self,
        path: Path,
        watch: Watch,
        *,
        interval: float,
        on_progress: Callable[[dict[str, Any]], None],
    ) -> None:
        self.path = path
        self.watch = watch
        self.interval = interval
        self.on_progress = on_progress
        self._offset = _size(path)
        self._partial = b""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._poll()
        self.watch.notify()

    async def _run(self) -> None:
        while True:
            self._poll()
            await asyncio.sleep(self.interval)

    def _poll(self) -> None:
        size = _size(self.path)
        if size <= self._offset:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(size - self._offset)
        except OSError:
            return
        self._offset += len(data)
        self._scan_progress(data)
        self.watch.notify()

    def _scan_progress(self, data: bytes) -> None:
        text = self._partial + data
        lines = text.split(b"\n")
        self._partial = lines.pop()[-4096:]
        for line in reversed(lines):
            progress = progress_record(line)
            if progress is not None:
                self.on_progress(progress)
                break


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_page(path: Path, offset: int, limit: int) -> tuple[bytes, int]:
    """Up to ``limit`` bytes from ``offset``, cut back to a whole line when possible."""
    size = _size(path)
    if offset >= size:
        return b"", size
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(min(limit, size - offset))
    if len(data) == limit:
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
    return data, size


def sse_event(data: str, *, event: str | None = None, event_id: int | None = None) -> bytes:
    parts = []
    if event_id is not None:
        parts.append(f"id: {event_id}")
    if event:
        parts.append(f"event: {event}")
    for line in data.split("\n"):
        parts.append(f"data: {line}")
    return ("\n".join(parts) + "\n\n").encode()


async def follow(
    path: Path,
    offset: int,
    watch: Watch,
    is_finished: Callable[[], str | None],
    *,
    poll: float | None = None,
) -> AsyncIterator[bytes]:
    """SSE stream of the log from ``offset`` until the job ends (then an ``end`` event).

    ``is_finished`` returns the final state once the job is over (None while it may still write).
    Only whole lines are sent while the job runs, so an event never splits a line. ``poll``: look
    at the file this often even when ``watch`` says nothing, for a job another server of a fleet
    runs (its tail task, which notifies ``watch``, is on that server).
    """
    yield b"retry: 1000\n\n"
    quiet_since = asyncio.get_running_loop().time()
    while True:
        seen = watch.version
        final = is_finished()
        data, size = read_page(path, offset, MAX_CHUNK)
        if data and final is None and not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            data = data[: cut + 1] if cut >= 0 else b""
        if data:
            offset += len(data)
            text = data.decode("utf-8", errors="replace")
            yield sse_event(text.removesuffix("\n"), event="log", event_id=offset)
            continue
        if final is not None and offset >= size:
            yield sse_event(json.dumps({"state": final}), event="end", event_id=offset)
            return
        if await watch.wait(seen, poll or KEEPALIVE_SECONDS):
            continue
        now = asyncio.get_running_loop().time()
        if now - quiet_since >= KEEPALIVE_SECONDS:
            quiet_since = now
            yield b": keepalive\n\n"
