"""The analysis tables and PNG plots of a run, computed once per state of its ``events.jsonl``.

``proctor analyze``'s own functions make them (``profiling.analysis`` and ``profiling.plots``);
this module only remembers the result while the log has not grown, so reloading a job page does
not re-read a large log, and keeps the plots in the dashboard's cache directory: never in the run
directory, which a viewer must not change.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from proctor.errors import NotFoundError
from proctor.profiling.analysis import Options, analyze_events, load_events

MAX_CACHED = 16
_PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.png$")


def _stamp(run_dir: Path) -> str:
    try:
        st = (run_dir / "events.jsonl").stat()
    except OSError:
        return "none"
    return f"{st.st_size}-{st.st_mtime_ns}"


class AnalysisCache:
    """Analyses keyed by (run directory, size and mtime of its events log); plots under ``cache_dir``."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._results: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def analysis(self, run_dir: Path) -> dict[str, Any]:
        """``proctor analyze --json``'s result (an ``InputError`` when there are no calls yet)."""
        key = (str(run_dir), _stamp(run_dir))
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
        result = analyze_events(load_events(run_dir), Options())
        with self._lock:
            self._results[key] = result
            while len(self._results) > MAX_CACHED:
                self._results.popitem(last=False)
        return result

    def _plot_dir(self, job_id: str, run_dir: Path) -> Path:
        return self.cache_dir / "plots" / re.sub(r"[^A-Za-z0-9_-]", "_", job_id) / _stamp(run_dir)

    def plots(self, job_id: str, run_dir: Path) -> list[str]:
        """The PNG file names for the log as it is now, drawn on first request."""
        from proctor.profiling.plots import write_plots

        target = self._plot_dir(job_id, run_dir)
        with self._lock:  # matplotlib's pyplot is not thread-safe: one drawing at a time
            if not target.is_dir():
                events = load_events(run_dir)
                result = analyze_events(events, Options())
                shutil.rmtree(target.parent, ignore_errors=True)  # older states of this job's log
                tmp = target.with_name(target.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                write_plots(result, events, tmp)
                tmp.rename(target)
        return sorted(p.name for p in target.glob("*.png"))

    def plot_path(self, job_id: str, run_dir: Path, name: str) -> Path:
        path = self._plot_dir(job_id, run_dir) / name
        if not _PLOT_NAME.match(name) or not path.is_file():
            raise NotFoundError("not found")
        return path
