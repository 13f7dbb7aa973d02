"""An analysis as text: rich tables and bar histograms for the terminal, and one CSV table.

The numbers come from ``analysis`` untouched; this module only lays them out.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from rich import box

from proctor.profiling.analysis import STAT_KEYS
from proctor.profiling.plots import group_title

_SECTION_TITLES = {
    "tool": "Tools, end to end",
    "expert": "Expert models inside tools (their own calls)",
    "model": "Model calls per role and replica",
}
_BAR = 40

CSV_COLUMNS = ("run", "section", "name", "target", *STAT_KEYS, "errors", "retries", "total_s")


def _num(value: Any) -> str:
    """Three decimals for small values, fewer for large ones: the columns stay narrow."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    digits = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    return f"{value:.{digits}f}"


def _delta(value: Any) -> str:
    if value is None:
        return "-"
    text = _num(value)
    return text if text.startswith("-") else f"+{text}"


def render(console: Any, result: dict[str, Any]) -> None:
    """All tables and histograms of one run."""
    from rich.table import Table

    opts = result["options"]
    under, long = opts["under_s"], opts["long_s"]
    console.print(f"[bold]{result['run']}[/bold]: {result['events']} calls over {result['span_s']} s")
    for section in ("tool", "expert", "model"):
        groups = [g for g in result["groups"] if g["section"] == section]
        if not groups:
            continue
        table = Table(title=_SECTION_TITLES[section], title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("name", "target"):
            table.add_column(col, no_wrap=True)
        for col in (
            "n",
            "mean",
            "std",
            "min",
            "p10",
            "p25",
            "p50",
            "p90",
            "p95",
            "p99",
            "max",
            f"<{under:g}s",
            f">{long:g}s",
            "err",
            "retry",
        ):
            table.add_column(col, justify="right")
        for g in groups:
            share = "-" if g["under_share"] is None else f"{100 * g['under_share']:.1f}%"
            table.add_row(
                g["name"],
                g["target"],
                str(g["count"]),
                *(_num(g[k]) for k in ("mean", "std", "min", "p10", "p25", "p50", "p90", "p95", "p99", "max")),
                share,
                str(g["over_long"]),
                str(g["errors"]),
                str(g["retries"]),
            )
        console.print(table)
        for g in groups:
            slowest = ", ".join(f"{s['sample_id']} {_num(s['duration'])}s" for s in g["slowest"])
            console.print(f"  slowest calls of {g['name']} {g['target']}".rstrip() + f": {slowest}")
    _render_samples(console, result["samples"])
    _render_time(console, result["time"], result["retries_errors"])
    for g in result["groups"]:
        render_histogram(console, f"{group_title(g)}: call duration (s)", g["histogram"], g["histogram_log"])
    s = result["samples"]
    render_histogram(console, "samples: wall time (s)", s["histogram"], s["histogram_log"])
    peaks = ", ".join(f"{target} {peak}" for target, peak in result["peak_in_flight"].items())
    console.print(f"peak calls in flight: {peaks}")


def _render_samples(console: Any, s: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Samples: {s['count']} ({s['finished']} with a finished record)", title_justify="left")
    for col in ("", "mean", "std", "min", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right" if col else "left")
    for key, label in (("turns", "turns"), ("tool_calls", "tool calls"), ("wall_s", "wall time (s)")):
        row = s[key]
        table.add_row(label, *(_num(row[k]) for k in ("mean", "std", "min", "p50", "p90", "p99", "max")))
    console.print(table)
    limits = ", ".join(f"{k} {n}" for k, n in s["limits_hit"].items()) or "none recorded"
    console.print(f"limits / outcomes: {limits}")
    slow = Table(title="Slowest samples", title_justify="left")
    for col in ("sample", "wall s", "turns", "tool calls", "outcome"):
        slow.add_column(col, justify="left" if col in ("sample", "outcome") else "right")
    for r in s["slowest"]:
        slow.add_row(
            str(r["sample_id"]),
            _num(r["wall_s"]),
            str(r["turns"]),
            str(r["tool_calls"]),
            r["outcome"] or ("-" if r["finished"] else "(running)"),
        )
    console.print(slow)


def _render_time(console: Any, t: dict[str, Any], re: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Time split (summed over calls)", title_justify="left")
    for col in ("", "seconds", "share"):
        table.add_column(col, justify="right" if col else "left")
    for key, label in (("model", "model calls"), ("queue", "waiting for a replica"), ("tool", "tool calls")):
        share = t["share"][key]
        table.add_row(label, _num(t[f"{key}_s"]), "-" if share is None else f"{100 * share:.1f}%")
    table.add_row("  of which expert models", _num(t["expert_model_s"]), "")
    table.add_row("  of which expert queueing", _num(t["expert_queue_s"]), "")
    console.print(table)
    errors = Table(title="Retries and errors by class", title_justify="left")
    for col in ("kind", "calls", "retries", "retried calls", "errors by class"):
        errors.add_column(col, justify="left" if col in ("kind", "errors by class") else "right")
    for kind, row in re.items():
        classes = ", ".join(f"{c} {n}" for c, n in row["errors_by_class"].items()) or "none"
        errors.add_row(kind, str(row["calls"]), str(row["retries"]), str(row["retried_calls"]), classes)
    console.print(errors)


def render_histogram(console: Any, title: str, linear: dict[str, Any], log: dict[str, Any]) -> None:
    """Linear and log-scale histograms as bars, one line per bin: ``[lo, hi) count bar``."""
    from rich.table import Table

    if not linear["counts"]:
        return
    for scale, hist in (("linear", linear), ("log scale", log)):
        if not hist["counts"]:
            continue
        table = Table(title=f"{title}, {scale}", title_justify="left", show_edge=False, box=None)
        table.add_column("bin", justify="right")
        table.add_column("count", justify="right")
        table.add_column("")
        top = max(hist["counts"]) or 1
        edges = hist["edges"]
        for i, count in enumerate(hist["counts"]):
            close = "]" if i == len(hist["counts"]) - 1 else ")"
            table.add_row(f"[{edges[i]:.3g}, {edges[i + 1]:.3g}{close}", str(count), "█" * round(_BAR * count / top))
        console.print(table)


def render_comparison(console: Any, cmp: dict[str, Any]) -> None:
    """Two runs side by side: per group A, B and B - A for the main columns."""
    from rich.table import Table

    a, b = cmp["a"], cmp["b"]
    console.print(f"[bold]A[/bold] {a['run']}: {a['events']} calls · [bold]B[/bold] {b['run']}: {b['events']} calls")
    cols = ("count", "mean", "std", "p50", "p90", "p99", "max", "under_share", "over_long")
    table = Table(title="Per group: A, B and B - A", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("section", "name", "target", "run"):
        table.add_column(col, no_wrap=True)
    for col in cols:
        table.add_column(col, justify="right")
    for row in cmp["groups"]:
        label = [row["section"], row["name"], row["target"]]
        for run in ("a", "b", "delta"):
            values = row[run]
            fmt = _delta if run == "delta" else _num
            cells = [fmt(None if values is None else values[col]) for col in cols]
            table.add_row(*label, {"a": "A", "b": "B", "delta": "B - A"}[run], *cells, end_section=run == "delta")
            label = ["", "", ""]
    console.print(table)
    t = cmp["time_delta"]
    console.print("time split B - A: " + ", ".join(f"{k} {_delta(v)}" for k, v in t.items()))
    w = cmp["sample_wall_delta"]
    console.print("sample wall time B - A: " + ", ".join(f"{k} {_delta(w[k])}" for k in ("mean", "p50", "p90", "max")))


def to_csv(result: dict[str, Any] | None = None, cmp: dict[str, Any] | None = None) -> str:
    """One row per group (and one for sample wall time); with two runs, rows for A, B and the delta."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()

    def rows(run: str, res: dict[str, Any]) -> None:
        for g in res["groups"]:
            writer.writerow({"run": run, **g})
        writer.writerow({"run": run, "section": "samples", "name": "wall_s", "target": "", **res["samples"]["wall_s"]})

    if cmp is None:
        assert result is not None
        rows(result["run"], result)
        return out.getvalue()
    rows("a", cmp["a"])
    rows("b", cmp["b"])
    for row in cmp["groups"]:
        if row["delta"] is not None:
            writer.writerow(
                {
                    "run": "delta",
                    "section": row["section"],
                    "name": row["name"],
                    "target": row["target"],
                    **row["delta"],
                }
            )
    writer.writerow({"run": "delta", "section": "samples", "name": "wall_s", "target": "", **cmp["sample_wall_delta"]})
    return out.getvalue()
