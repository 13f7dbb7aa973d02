"""The events log: one JSON line per model call, tool call and agent sample.

Events are appended, not rewritten: across resumptions the file is the whole history of a run's
calls. Lines are buffered in memory and written whenever the run's ticker calls ``flush`` (each
progress refresh: every 0.25 s with the rich display, 1 s otherwise; 0.5 s for lm-eval runs) and
at close, so the hot path is a list append; a crash loses at most the last interval, and a reader
skips a torn last line.
A sample dispatched more than once (``--retry-errors``, a resume after an interrupted attempt)
has the events of every attempt; each names its ``attempt``, and the analysis describes a sample
by its last one, the attempt whose result the ledger holds.

The records are typed here (``ModelEvent``, ``ToolEvent``, ``SampleEvent``): the model layer and
the agent build them, ``EventLog`` is their one serializer, ``proctor.profiling.analysis`` reads
them back. They are ``TypedDict``s, i.e. plain dicts at run time: an event costs nothing to build
on the hot path, its line is byte-for-byte what it always was, and every sink (a test's list, a
plugin) keeps reading ``event["kind"]``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast


class ModelEvent(TypedDict):
    """One model call (after its retries), emitted by ``proctor.models.router``."""

    kind: Literal["model"]
    role: str
    model: str
    endpoint: str | None
    sample_id: str | None
    start: float
    """Wall-clock time the call was asked for (queueing included)."""
    duration: float
    ttft: float | None
    tokens_in: int | None
    tokens_out: int | None
    attempts: int
    retries: int
    queue_s: float
    """Seconds spent waiting for a replica slot before the first attempt."""
    status: str
    """``ok``, an infra error class, ``cancelled`` or an exception's name."""
    http_status: int | None


class ToolEvent(TypedDict):
    """One tool call of the agent loop (``proctor.evals.agent.tools.base``)."""

    kind: Literal["tool"]
    tool: str
    sample_id: str
    call_id: str
    turn: int
    start: float
    duration: float
    status: str
    steps: dict[str, Any]
    expert_role: NotRequired[str]
    expert_model: NotRequired[str]
    fallback: NotRequired[str]
    error: NotRequired[str]
    """The first 500 characters of what went wrong, when ``status`` is not ``ok``."""


class SampleEvent(TypedDict):
    """One agent sample, when it ends (``proctor.evals.agent.loop``)."""

    kind: Literal["sample"]
    sample_id: str
    start: float
    duration: float
    turns: int
    tool_calls: int
    outcome: str | None


Event = ModelEvent | ToolEvent | SampleEvent
"""A line of ``events.jsonl``."""

EventSink = Callable[[Event], None]
"""Receives one event per model call, tool call or agent sample; must not block."""

current_attempt: ContextVar[int | None] = ContextVar("proctor_attempt", default=None)
"""The attempt (the ledger's dispatch count) of the sample whose calls run in this context.

The engine sets it around each sample (``Runner.process_sample``); ``stamp_attempt`` writes it
into the events those calls emit. A context variable, because the events are built deep in the
model layer and the tools, which know the sample's id but not how often it was dispatched.
"""


def stamp_attempt(event: Event) -> Event:
    """``event`` with the current sample's attempt, if any (an event that has one keeps it).

    ``attempt`` is a key of the line, not of the typed records: their emitters never set it, so
    the types stay exactly what each emitter builds, and only the log's writers add it.
    """
    attempt = current_attempt.get()
    if attempt is not None and "attempt" not in event:
        cast(dict[str, Any], event)["attempt"] = attempt
    return event


class EventLog:
    """Buffered JSONL appender; ``write`` is safe to call from the event loop at any rate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buffer: list[Event] = []
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self.model_durations: list[float] = []
        """Durations of this process's model calls (for the latency summary)."""
        self.count = 0

    def write(self, event: Event) -> None:
        stamp_attempt(event)
        self.count += 1
        if event["kind"] == "model" and event.get("duration") is not None:
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
