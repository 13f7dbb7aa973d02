"""The events log: one JSON line per model call and tool call.

Events are appended, not rewritten: across resumptions the file is the whole history of a run's
calls. Lines are buffered in memory and written every ``flush_interval`` seconds (and at close),
so the hot path is a list append; a crash loses at most the last interval, and a reader skips a
torn last line.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Buffered JSONL appender; ``write`` is safe to call from the event loop at any rate."""

    def __init__(self, path: Path, *, flush_interval: float = 0.5) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self._last_flush = time.monotonic()
        self.model_durations: list[float] = []
        """Durations of this process's model calls (for the latency summary)."""
        self.count = 0

    def write(self, event: dict[str, Any]) -> None:
        self.count += 1
        if event.get("kind") == "model" and event.get("duration") is not None:
            self.model_durations.append(event["duration"])
        self._buffer.append(event)

    def flush(self) -> None:
        with self._lock:
            buffer, self._buffer = self._buffer, []
            if buffer:
                try:
                    self._file.write("".join(json.dumps(e, default=str) + "\n" for e in buffer))
                    self._file.flush()
                except OSError:
                    self._buffer[:0] = buffer  # nothing is lost: they go out with the next flush
                    raise
            self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._file.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events of a log; a torn last line (a crash, or a run still writing) is skipped.

    So is any line that is not a JSON object, and bytes that are not UTF-8 only spoil their line.
    """
    events: list[dict[str, Any]] = []
    if not path.exists():
        return events
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events
