"""Progress of a run: a rich bar on a terminal, plain periodic lines otherwise.

With ``PROCTOR_PROGRESS=json`` in the environment (set by the server for its jobs) a
machine-readable line ``PROCTOR_PROGRESS {...}`` is printed about once a second as well, so a
remote client can draw its own bar from the job's log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from types import TracebackType
from typing import Any

PROGRESS_PREFIX = "PROCTOR_PROGRESS "
"""Starts a machine-readable progress line in a job's log. Owned here, where the lines are written;
the server (log follower, crash note) and the remote CLI read them back with ``progress_record``."""


def progress_record(line: str | bytes) -> dict[str, Any] | None:
    """The progress record of a ``PROCTOR_PROGRESS {...}`` line (text or bytes), else None."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.startswith(PROGRESS_PREFIX):
        return None
    try:
        value = json.loads(text[len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(record: dict[str, Any]) -> str:
    """A progress record (``Progress.snapshot``, or a job's progress on a server) as one line.

    One rendering for the engine's plain lines and ``proctor status``, so both read the same.
    """
    done, total = record.get("done") or 0, record.get("total")
    parts = [f"{done}/{total if total is not None else '?'}" + (f" ({done / total:.0%})" if total else "")]
    parts.append(f"{record.get('errors') or 0} errors")
    accuracy = record.get("accuracy")
    parts.append(f"acc {'-' if accuracy is None else f'{accuracy:.1%}'}")
    if record.get("rate") is not None:
        parts.append(f"{record['rate']:.1f} samples/s")
    parts.append(f"ETA {_fmt_eta(record.get('eta'))}")
    return ", ".join(parts)


class Progress:
    """Tracks done/total, errors, running accuracy and rate; renders them in the chosen mode."""

    def __init__(
        self,
        *,
        total: int,
        done: int,
        errors: int,
        mode: str = "auto",
        console: Any = None,
        plain_interval: float = 5.0,
        label: str = "samples",
    ) -> None:
        self.total = total
        self.label = label
        """What is counted: ``samples``, or an lm-eval phase such as ``loglikelihood requests``."""
        self.initial_done = done
        self.done = done
        self.errors = errors
        self.accuracy: float | None = None
        self.json_lines = os.environ.get("PROCTOR_PROGRESS") == "json"
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.plain_interval = plain_interval
        self.interval = 0.25 if mode == "rich" else 1.0
        self.console = console
        self._window: deque[tuple[float, int]] = deque(maxlen=64)
        self._start = time.monotonic()
        self._last_plain = self._start
        self._bar: Any = None
        self._task: Any = None

    # rate over the last ~30 s, so a resumed run's ETA is not skewed by the work done before
    def rate(self) -> float:
        now = time.monotonic()
        self._window.append((now, self.done))
        while len(self._window) > 2 and now - self._window[0][0] > 30:
            self._window.popleft()
        t0, d0 = self._window[0]
        if now - t0 < 1e-6:
            elapsed = now - self._start
            return (self.done - self.initial_done) / elapsed if elapsed > 0 else 0.0
        return (self.done - d0) / (now - t0)

    def snapshot(self) -> dict[str, Any]:
        rate = self.rate()
        remaining = self.total - self.done
        eta = remaining / rate if rate > 0 else None
        return {
            "done": self.done,
            "total": self.total,
            "errors": self.errors,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
            "rate": round(rate, 2),
            "eta": None if eta is None else round(eta, 1),
        }

    def __enter__(self) -> Progress:
        if self.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[red]{task.fields[errors]} err[/red]"),
                TextColumn("acc {task.fields[acc]}"),
                TextColumn("{task.fields[rate]}/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.label, total=self.total, completed=self.done, errors=self.errors, acc="-", rate="-"
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None

    def update(self, done: int, errors: int, accuracy: float | None, *, final: bool = False) -> None:
        self.done, self.errors, self.accuracy = done, errors, accuracy
        snap = self.snapshot()
        if self.json_lines:
            print(PROGRESS_PREFIX + json.dumps(snap), flush=True)
        if self.mode == "rich" and self._bar is not None:
            self._bar.update(
                self._task,
                completed=done,
                errors=errors,
                acc="-" if accuracy is None else f"{accuracy:.1%}",
                rate=f"{snap['rate']:.1f}",
            )
        elif self.mode == "plain":
            now = time.monotonic()
            if final or now - self._last_plain >= self.plain_interval:
                self._last_plain = now
                what = "" if self.label == "samples" else f" ({self.label})"
                print(f"progress{what}: {describe(snap)}", flush=True)
