"""The run directory's outputs, all derived from the ledger.

Because every output is a pure function of the ledger, they can be rebuilt at any time (during
the run, at its end, after a crash, after re-scoring) and are written atomically (temp file +
rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from proctor.evals.ledger import Ledger, LedgerRow

INFRA_CLASSES = frozenset({"connection", "timeout", "http_5xx", "rate_limited", "tool_crash", "tunnel", "time_limit"})
"""Error classes that are the infrastructure's fault, reported apart from everything else."""


def atomic_write(path: Path, data: str | Iterable[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(data, str):
                f.write(data)
            else:
                f.writelines(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval: sensible even at 0% or 100% and small n."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    data = sorted(values)

    def q(p: float) -> float:
        return round(data[min(len(data) - 1, int(p * len(data)))], 4)

    return {
        "n": len(data),
        "mean": round(sum(data) / len(data), 4),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": round(data[-1], 4),
    }


def _accuracy(scores: list[float]) -> dict[str, Any]:
    n = len(scores)
    total = sum(scores)
    return {
        "value": round(total / n, 4) if n else None,
        "correct": round(total, 4),
        "denominator": n,
        "ci95": wilson_interval(total, n),
    }


def compute_stats(
    rows: list[LedgerRow],
    *,
    name: str,
    model: str,
    wall_time: float,
    model_durations: list[float] | None = None,
    resumed: int = 0,
    final: bool,
) -> dict[str, Any]:
    """The run's figures from its ledger rows.

    Counts, accuracy and tokens cover the whole run; ``wall_time_s`` and the model-call latencies
    cover this session only, and ``resumed_samples`` says how many samples an earlier session
    had finished, so a reader can tell the two apart.
    """
    states = Counter(r.state for r in rows)
    scored = [r for r in rows if r.state == "scored" and r.score is not None]
    errors = [r for r in rows if r.state == "error" and r.error_class != "skipped"]
    skipped = Counter((r.error or "skipped") for r in rows if r.state == "error" and r.error_class == "skipped")
    by_category: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        if r.category is not None:
            by_category[r.category].append(r.score)  # type: ignore[arg-type]
    error_classes = Counter(r.error_class or "unknown" for r in errors)
    infra = sum(n for c, n in error_classes.items() if c in INFRA_CLASSES)
    durations = [
        r.finished - r.started for r in rows if r.finished and r.started and r.state in ("scored", "generated")
    ]
    return {
        "name": name,
        "model": model,
        "final": final,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {
            "total": len(rows),
            **{s: states.get(s, 0) for s in ("pending", "running", "generated", "scored", "error")},
            "skipped": sum(skipped.values()),
        },
        "accuracy": _accuracy([r.score for r in scored]),  # type: ignore[misc]
        "by_category": {c: _accuracy(v) for c, v in sorted(by_category.items())},
        "errors": {
            "total": len(errors),
            "infra": infra,
            "other": len(errors) - infra,
            "by_class": dict(error_classes.most_common()),
        },
        "skipped": dict(skipped),
        "outcomes": dict(Counter(r.outcome for r in rows if r.outcome).most_common()),
        "tokens": {
            "in": sum(r.tokens_in or 0 for r in rows),
            "out": sum(r.tokens_out or 0 for r in rows),
        },
        "wall_time_s": round(wall_time, 3),
        "resumed_samples": resumed,
        "latency": {
            "sample_s": percentiles(durations),
            "model_call_s": percentiles(model_durations or []),
        },
    }


def _sample_record(r: LedgerRow) -> dict[str, Any]:
    error = None
    if r.state == "error":
        error = {"class": r.error_class, "message": r.error, "infra": r.error_class in INFRA_CLASSES}
    return {
        "id": r.id,
        "category": r.category,
        "input": r.input,
        "target": r.target,
        "output": r.output,
        "state": r.state,
        "attempt": r.dispatches,
        "score": r.score,
        "answer": r.answer,
        "outcome": r.outcome,
        "error": error,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "duration": r.duration,
    }


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str) + "\n"


def write_reports(
    ledger: Ledger,
    run_dir: Path,
    *,
    name: str,
    model: str,
    wall_time: float,
    model_durations: list[float] | None = None,
    resumed: int = 0,
    final: bool,
) -> dict[str, Any]:
    """Rebuild eval_stats.json, samples.jsonl and traj_log_all.jsonl from the ledger."""
    rows = list(ledger.rows())
    stats = compute_stats(
        rows, name=name, model=model, wall_time=wall_time, model_durations=model_durations, resumed=resumed, final=final
    )
    atomic_write(run_dir / "samples.jsonl", (_line(_sample_record(r)) for r in rows))
    atomic_write(run_dir / "traj_log_all.jsonl", ledger.trajectory_lines())
    atomic_write(run_dir / "eval_stats.json", json.dumps(stats, indent=2) + "\n")
    return stats
