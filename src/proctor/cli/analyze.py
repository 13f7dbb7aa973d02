"""``proctor analyze``: where a run's time went."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from proctor.cli._console import make_console
from proctor.errors import InputError


def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory made by `proctor run`."),
    plots: bool = typer.Option(False, "--plots", help="Also write PNG plots into RUN_DIR/analysis/."),
    as_json: bool = typer.Option(False, "--json", help="Print the analysis as JSON."),
) -> None:
    """Latency per role, replica and tool; model vs tool time; retries and errors."""
    from rich.table import Table

    from proctor.profiling.analysis import analyze as run_analysis
    from proctor.profiling.analysis import write_plots

    if not (run_dir / "events.jsonl").is_file():
        raise InputError(f"{run_dir} has no events.jsonl: is it a run directory made by `proctor run`?")
    result = run_analysis(run_dir)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console = make_console()
    table = Table(title=f"{result['events']} calls over {result['span_s']} s — model time {result['model_time_s']} s, "
                        f"tool time {result['tool_time_s']} s", title_justify="left")
    for col in ("kind", "role / tool", "replica / expert", "calls", "errors", "retries", "p50 s", "p90 s", "p99 s",
                "max s", "ttft p50", "total s"):
        table.add_column(col, justify="right" if col not in ("kind", "role / tool", "replica / expert") else "left")
    for g in result["groups"]:
        d = g["duration_s"] or {}
        t = g["ttft_s"] or {}
        table.add_row(g["kind"], g["name"], g["target"], str(g["calls"]), str(g["errors"]), str(g["retries"]),
                      f"{d.get('p50', 0):.3f}", f"{d.get('p90', 0):.3f}", f"{d.get('p99', 0):.3f}",
                      f"{d.get('max', 0):.3f}", f"{t['p50']:.3f}" if t else "-", f"{g['total_s']:.1f}")
    console.print(table)
    if plots:
        for path in write_plots(run_dir, run_dir / "analysis"):
            console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("analyze", no_args_is_help=True)(analyze)
