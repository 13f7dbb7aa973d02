"""The concurrency plot's data: calls in flight per target, exactly, from a fixture's events.

``tests/fixtures/events_c32.jsonl`` is a run at concurrency 32: 32 workers, each making 12 calls
back to back (a call starts the moment the worker's previous one ends), so exactly 32 calls are
in flight at the busiest moment and never more. Its ``python`` tool calls are four hand-checkable
spans, [0, 2), [1, 3), [2, 4) and [2, 2.5): three in flight from 2 s to 2.5 s.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_proctor

from proctor.profiling.analysis import concurrency_timeline
from proctor.profiling.events import read_events

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "events_c32.jsonl"
ENDPOINT = "http://127.0.0.1:9001/v1"


def _in_flight_at(spans: list[tuple[float, float]], moment: float) -> int:
    """Brute force: calls whose half-open span [start, end) holds the moment."""
    return sum(1 for start, end in spans if start <= moment < end)


def test_in_flight_is_an_exact_integer_step_function_with_the_true_peak() -> None:
    events = read_events(FIXTURE)
    timelines = concurrency_timeline(events)
    assert set(timelines) == {ENDPOINT, "python"}
    assert timelines[ENDPOINT].peak == 32
    assert timelines["python"].peak == 3
    t0 = min(e["start"] for e in events)
    python = timelines["python"]
    assert python.times == [0.0, 1.0, 2.0, 2.5, 3.0, 4.0] and python.counts == [1, 2, 3, 2, 1, 0]
    for target, line in timelines.items():
        spans = [
            (e["start"], e["start"] + e["duration"]) for e in events if (e.get("endpoint") or e.get("tool")) == target
        ]
        assert all(type(c) is int for c in line.counts)
        assert line.counts[-1] == 0 and line.times == sorted(line.times)
        # Every step equals the count of overlapping calls at that moment, and nothing between
        # two steps differs from the step before it (checked at every call's start and end).
        for moment in sorted({t for span in spans for t in span}):
            i = max(k for k, t in enumerate(line.times) if t <= moment - t0 + 1e-12)
            assert line.counts[i] == _in_flight_at(spans, moment), (target, moment)


def test_analyze_reports_the_peak_and_draws_the_plot(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(FIXTURE.read_bytes())
    result = run_proctor("analyze", run_dir, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["peak_in_flight"] == {ENDPOINT: 32, "python": 3}
    result = run_proctor("analyze", run_dir, "--plots")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "analysis" / "concurrency.png").stat().st_size > 1000
