"""Where the time went: latency tables built from a run's ``events.jsonl``.

Every model and tool call left one event, and the agent one ``sample`` event per finished sample.
Grouping them answers the questions people ask of a slow run: which tool is slow end to end,
which expert model inside it, which role and replica (the orchestrator is often the bottleneck),
how the time splits between models, tools and waiting for a free replica, which samples were
slowest and which limits they hit, and how busy each endpoint was over time. Two runs can be put
side by side with the difference per group.

The log is read as it is, so a run still in progress can be analysed: a torn last line is skipped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctor.errors import InputError
from proctor.profiling.events import read_events
from proctor.profiling.stats import SLOWEST, histogram, latency_summary

SECTIONS = ("tool", "expert", "model")
"""Group kinds: a tool end to end; an expert model's own calls inside a tool; a role at one replica."""

STAT_KEYS = ("count", "mean", "std", "min", "max", "p10", "p25", "p50", "p90", "p95", "p99", "under_share", "over_long")
"""The numeric columns of a latency table, in order (also the CSV's and the deltas')."""


@dataclass(frozen=True)
class Options:
    """The thresholds and bin count of one analysis (``--under``, ``--long``, ``--bins``)."""

    under: float = 5.0
    long: float = 300.0
    bins: int = 10


@dataclass
class Group:
    """The calls of one kind to one target, with each call's sample id (for "slowest")."""

    section: str
    name: str
    target: str
    durations: list[float] = field(default_factory=list)
    sample_ids: list[str | None] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0

    def add(self, event: dict[str, Any]) -> None:
        if event.get("duration") is not None:
            self.durations.append(float(event["duration"]))
            self.sample_ids.append(event.get("sample_id"))
        status = event.get("status")
        if status not in (None, "ok"):
            self.errors[str(status)] += 1
        self.retries += int(event.get("retries") or 0)

    def summary(self, opts: Options) -> dict[str, Any]:
        ranked = sorted(zip(self.durations, self.sample_ids, strict=True), key=lambda pair: -pair[0])
        return {
            "section": self.section,
            "name": self.name,
            "target": self.target,
            **latency_summary(self.durations, under=opts.under, long=opts.long),
            "errors": sum(self.errors.values()),
            "retries": self.retries,
            "total_s": round(sum(self.durations), 3),
            "slowest": [{"sample_id": sid, "duration": round(d, 4)} for d, sid in ranked[:SLOWEST]],
            "histogram": histogram(self.durations, opts.bins).as_dict(),
            "histogram_log": histogram(self.durations, opts.bins, log=True).as_dict(),
        }


def load_events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events, or one clear ``InputError`` (exit 2) when there is nothing to analyse."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a directory: give a run directory made by `proctor run`")
    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise InputError(f"{run_dir} has no events.jsonl: is it a run directory made by `proctor run`?")
    try:
        events = read_events(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not any(e.get("kind", "model") in ("model", "tool") for e in events):
        raise InputError(f"{path} has no model or tool calls yet: nothing to analyse")
    return events


def expert_tools(events: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Which tool each expert role works for, from the tool events' ``expert_role``.

    A model event does not say which tool made it; its role does. A role shared by several tools
    is named after all of them (``a+b``), since its calls cannot be told apart.
    """
    tools: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("kind") == "tool" and e.get("expert_role"):
            tools[str(e["expert_role"])].add(str(e.get("tool")))
    return {role: "+".join(sorted(names)) for role, names in tools.items()}


def group_events(events: list[dict[str, Any]]) -> list[Group]:
    """Tools end to end, each expert model's own calls per tool, and model calls per role and replica."""
    experts = expert_tools(events)
    groups: dict[tuple[str, str, str], Group] = {}

    def add(key: tuple[str, str, str], event: dict[str, Any]) -> None:
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(*key)
        group.add(event)

    for e in events:
        kind = e.get("kind", "model")
        if kind == "tool":
            add(("tool", str(e.get("tool")), ""), e)
        elif kind == "model":
            role = str(e.get("role"))
            add(("model", role, str(e.get("endpoint"))), e)
            if role in experts:
                add(("expert", experts[role], str(e.get("model") or role)), e)
    order = {s: i for i, s in enumerate(SECTIONS)}
    return sorted(groups.values(), key=lambda g: (order[g.section], -sum(g.durations), g.name, g.target))


def time_split(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Model vs tool vs queueing time, summed over calls (concurrent calls each count in full).

    The top level is what the agent waits for: its own model calls (after getting a replica),
    the time they waited for a free replica (``queue_s``), and tool calls end to end. An expert's
    model calls happen inside a tool call, so they are part of ``tool_s`` and shown apart
    (``expert_model_s``, ``expert_queue_s``) rather than counted twice.
    """
    experts = expert_tools(events)
    split = dict.fromkeys(("model_s", "queue_s", "tool_s", "expert_model_s", "expert_queue_s"), 0.0)
    for e in events:
        kind = e.get("kind", "model")
        duration = float(e.get("duration") or 0.0)
        if kind == "tool":
            split["tool_s"] += duration
        elif kind == "model":
            queued = min(float(e.get("queue_s") or 0.0), duration)
            prefix = "expert_" if str(e.get("role")) in experts else ""
            split[f"{prefix}queue_s"] += queued
            split[f"{prefix}model_s"] += duration - queued
    top = split["model_s"] + split["queue_s"] + split["tool_s"]
    out: dict[str, Any] = {k: round(v, 3) for k, v in split.items()}
    out["share"] = {
        k.removesuffix("_s"): (round(split[k] / top, 4) if top else None) for k in ("model_s", "queue_s", "tool_s")
    }
    return out


def errors_and_retries(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Retries (extra attempts) and failed calls by error class, for model and tool calls apart."""
    out: dict[str, Any] = {}
    for kind in ("model", "tool"):
        calls = [e for e in events if e.get("kind", "model") == kind]
        out[kind] = {
            "calls": len(calls),
            "retries": sum(int(e.get("retries") or 0) for e in calls),
            "retried_calls": sum(1 for e in calls if int(e.get("retries") or 0) > 0),
            "errors_by_class": dict(
                Counter(str(e["status"]) for e in calls if e.get("status") not in (None, "ok")).most_common()
            ),
        }
    return out


def last_attempts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` without those of a sample's earlier attempts (events carry ``attempt`` since the
    engine numbers dispatches; a log written before that has none, and is kept whole)."""
    latest: dict[str, int] = {}
    for e in events:
        attempt, sid = e.get("attempt"), e.get("sample_id")
        if isinstance(attempt, int) and sid is not None:
            latest[str(sid)] = max(attempt, latest.get(str(sid), 0))
    if not latest:
        return events
    return [
        e
        for e in events
        if e.get("sample_id") is None
        or str(e["sample_id"]) not in latest
        or e.get("attempt") == latest[str(e["sample_id"])]
    ]


def samples(events: list[dict[str, Any]], opts: Options) -> dict[str, Any]:
    """Per sample: turns, tool calls, wall time and the limit it hit; the slowest samples.

    The agent's ``sample`` event (one per finished sample; the last one wins after a resume) gives
    turns, wall time and outcome. A sample without one (not an agent, or still running) is
    described from its calls: model calls as turns, and the span from its first call's start to
    its last call's end as wall time. A sample dispatched more than once is described by its last
    attempt alone (the one whose result the ledger holds), not by its calls summed over sessions.
    """
    events = last_attempts(events)
    derived: dict[str, dict[str, Any]] = {}
    for e in events:
        sid = e.get("sample_id")
        kind = e.get("kind", "model")
        if sid is None or kind not in ("model", "tool") or e.get("start") is None:
            continue
        row = derived.setdefault(str(sid), {"turns": 0, "tool_calls": 0, "first": float(e["start"]), "last": 0.0})
        row["turns" if kind == "model" else "tool_calls"] += 1
        row["first"] = min(row["first"], float(e["start"]))
        row["last"] = max(row["last"], float(e["start"]) + float(e.get("duration") or 0.0))
    rows: dict[str, dict[str, Any]] = {
        sid: {
            "sample_id": sid,
            "turns": d["turns"],
            "tool_calls": d["tool_calls"],
            "wall_s": round(d["last"] - d["first"], 4),
            "outcome": None,
            "finished": False,
        }
        for sid, d in derived.items()
    }
    for e in events:
        if e.get("kind") == "sample" and e.get("sample_id") is not None:
            sid = str(e["sample_id"])
            rows[sid] = {
                "sample_id": sid,
                "turns": int(e.get("turns") or 0),
                "tool_calls": int(e.get("tool_calls") or 0),
                "wall_s": round(float(e.get("duration") or 0.0), 4),
                "outcome": e.get("outcome"),
                "finished": True,
            }
    table = list(rows.values())
    walls = [r["wall_s"] for r in table]
    slowest = sorted(table, key=lambda r: (-r["wall_s"], r["sample_id"]))[:SLOWEST]
    return {
        "count": len(table),
        "finished": sum(1 for r in table if r["finished"]),
        "turns": latency_summary([float(r["turns"]) for r in table], under=opts.under, long=opts.long),
        "tool_calls": latency_summary([float(r["tool_calls"]) for r in table], under=opts.under, long=opts.long),
        "wall_s": latency_summary(walls, under=opts.under, long=opts.long),
        "limits_hit": dict(Counter(str(r["outcome"]) for r in table if r["outcome"]).most_common()),
        "slowest": slowest,
        "histogram": histogram(walls, opts.bins).as_dict(),
        "histogram_log": histogram(walls, opts.bins, log=True).as_dict(),
    }


def analyze_events(events: list[dict[str, Any]], opts: Options) -> dict[str, Any]:
    calls = [e for e in events if e.get("kind", "model") in ("model", "tool")]
    starts = [float(e["start"]) for e in calls if e.get("start") is not None]
    ends = [
        float(e["start"]) + float(e["duration"])
        for e in calls
        if e.get("start") is not None and e.get("duration") is not None
    ]
    return {
        "events": len(calls),
        "span_s": round(max(ends) - min(starts), 3) if starts and ends else None,
        "options": {"under_s": opts.under, "long_s": opts.long, "bins": opts.bins},
        "time": time_split(events),
        "retries_errors": errors_and_retries(events),
        "groups": [g.summary(opts) for g in group_events(events)],
        "samples": samples(events, opts),
        "peak_in_flight": {target: line.peak for target, line in concurrency_timeline(events).items()},
    }


def analyze(run_dir: Path, opts: Options | None = None) -> dict[str, Any]:
    """The whole analysis of one run directory, as plain data (what ``--json`` prints)."""
    result = analyze_events(load_events(run_dir), opts or Options())
    return {"run": str(run_dir), **result}


def group_key(group: dict[str, Any]) -> tuple[str, str, str]:
    return (group["section"], group["name"], group["target"])


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two analyses side by side: per group (matched by section, name and target) B minus A.

    A group present in only one run has ``None`` for the other and no deltas.
    """
    groups_a = {group_key(g): g for g in a["groups"]}
    groups_b = {group_key(g): g for g in b["groups"]}
    rows = []
    for key in [*groups_a, *(k for k in groups_b if k not in groups_a)]:
        ga, gb = groups_a.get(key), groups_b.get(key)
        delta = None
        if ga is not None and gb is not None:
            delta = {k: _minus(gb[k], ga[k]) for k in STAT_KEYS}
        rows.append({"section": key[0], "name": key[1], "target": key[2], "a": ga, "b": gb, "delta": delta})
    time_delta = {k: _minus(b["time"][k], a["time"][k]) for k in ("model_s", "queue_s", "tool_s")}
    wall_delta = {k: _minus(b["samples"]["wall_s"][k], a["samples"]["wall_s"][k]) for k in STAT_KEYS}
    return {"a": a, "b": b, "groups": rows, "time_delta": time_delta, "sample_wall_delta": wall_delta}


def _minus(b: Any, a: Any) -> Any:
    if a is None or b is None:
        return None
    return round(b - a, 4)


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
    bucket it touches instead overstated a run at concurrency 32 as about 79. Only model and tool
    calls count (a ``sample`` event spans a whole sample, not a call).
    """
    changes: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    first: float | None = None
    for e in events:
        if e.get("kind", "model") not in ("model", "tool") or e.get("start") is None or e.get("duration") is None:
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
