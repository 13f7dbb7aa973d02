"""Where the time went: latency tables and plots built from a run's ``events.jsonl``.

Every model and tool call left one event. Grouping them by what was called (role and replica, or
tool) answers the questions people ask of a slow run: which endpoint is slow, how much time goes
to tools versus models, how often calls were retried, and how busy each endpoint was over time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctor._files import ensure_directory
from proctor.evals.reports import percentiles
from proctor.profiling.events import read_events


@dataclass
class CallGroup:
    """All calls of one kind to one target."""

    kind: str
    name: str
    target: str
    durations: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "target": self.target,
            "calls": len(self.durations),
            "errors": self.errors,
            "retries": self.retries,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "duration_s": percentiles(self.durations),
            "ttft_s": percentiles(self.ttfts),
            "total_s": round(sum(self.durations), 3),
        }


def group_events(events: Iterable[dict[str, Any]]) -> list[CallGroup]:
    groups: dict[tuple[str, str, str], CallGroup] = {}
    for e in events:
        kind = e.get("kind", "model")
        if kind == "tool":
            key = (kind, str(e.get("tool")), str(e.get("expert_model") or ""))
        else:
            key = (kind, str(e.get("role")), str(e.get("endpoint")))
        group = groups.get(key)
        if group is None:
            group = groups[key] = CallGroup(*key)
        if e.get("duration") is not None:
            group.durations.append(float(e["duration"]))
        if e.get("ttft") is not None:
            group.ttfts.append(float(e["ttft"]))
        if e.get("status") not in (None, "ok"):
            group.errors += 1
        group.retries += int(e.get("retries") or 0)
        group.tokens_in += int(e.get("tokens_in") or 0)
        group.tokens_out += int(e.get("tokens_out") or 0)
    return sorted(groups.values(), key=lambda g: -sum(g.durations))


def analyze(run_dir: Path) -> dict[str, Any]:
    events = read_events(run_dir / "events.jsonl")
    groups = group_events(events)
    model_time = sum(sum(g.durations) for g in groups if g.kind == "model")
    tool_time = sum(sum(g.durations) for g in groups if g.kind == "tool")
    starts = [e["start"] for e in events if e.get("start") is not None]
    ends = [e["start"] + e["duration"] for e in events if e.get("start") is not None and e.get("duration") is not None]
    return {
        "events": len(events),
        "span_s": round(max(ends) - min(starts), 3) if starts and ends else None,
        "model_time_s": round(model_time, 3),
        "tool_time_s": round(tool_time, 3),
        "groups": [g.summary() for g in groups],
        "peak_in_flight": {target: line.peak for target, line in concurrency_timeline(events).items()},
    }


@dataclass(frozen=True)
class InFlight:
    """Calls in flight at one target as a step function: ``counts[i]`` from ``times[i]`` on."""

    times: list[float]
    """Seconds since the run's first call at which the count changes."""
    counts: list[int]

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)


def concurrency_timeline(events: Iterable[dict[str, Any]]) -> dict[str, InFlight]:
    """Exactly how many calls each target had in flight, from every call's start and end.

    A call is in flight over ``[start, start + duration)``: one that ends at the moment another
    starts (a worker's next call) does not overlap it, and all changes at one moment are applied
    together, so the count is never a transient or a fraction. Counting a call in every time
    bucket it touches instead overstated a run at concurrency 32 as about 79.
    """
    changes: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    first: float | None = None
    for e in events:
        if e.get("start") is None or e.get("duration") is None:
            continue
        start = float(e["start"])
        end = start + float(e["duration"])
        first = start if first is None else min(first, start)
        steps = changes[str(e.get("endpoint") or e.get("tool"))]
        steps[start] += 1
        steps[end] -= 1
    timelines: dict[str, InFlight] = {}
    for target, steps in changes.items():
        times: list[float] = []
        counts: list[int] = []
        level = 0
        for moment in sorted(steps):
            level += steps[moment]
            if counts and counts[-1] == level:
                continue
            times.append(moment - (first or 0.0))
            counts.append(level)
        timelines[target] = InFlight(times, counts)
    return timelines


def write_plots(run_dir: Path, out_dir: Path) -> list[Path]:
    """Histograms of call durations per group, and in-flight calls over time per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    events = read_events(run_dir / "events.jsonl")
    groups = group_events(events)
    ensure_directory(out_dir, what="plot directory")
    written: list[Path] = []
    if not groups:
        return written
    fig, ax = plt.subplots(figsize=(9, 5))
    for g in groups[:8]:
        if g.durations:
            ax.hist(g.durations, bins=40, alpha=0.6, label=f"{g.kind} {g.name} {g.target}"[:60])
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("calls")
    ax.set_title("call durations")
    ax.legend(fontsize=7)
    path = out_dir / "durations.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    timelines = concurrency_timeline(events)
    if timelines:
        fig, ax = plt.subplots(figsize=(9, 4))
        for target, line in list(timelines.items())[:8]:
            ax.step(line.times, line.counts, where="post", label=f"{target[:60]} (peak {line.peak})")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("time since first call (s)")
        ax.set_ylabel("calls in flight")
        ax.set_title("concurrency per target")
        ax.legend(fontsize=7)
        path = out_dir / "concurrency.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
