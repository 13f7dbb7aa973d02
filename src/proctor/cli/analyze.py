"""``proctor analyze RUN_DIR [RUN_DIR_B]``: where a run's time went, or how two runs differ."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from proctor.cli._console import make_console


def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `proctor run` (may still be running).")],
    run_dir_b: Annotated[
        Path | None, typer.Argument(help="A second run: show both side by side with B - A per group.")
    ] = None,
    under: Annotated[
        float, typer.Option("--under", min=0, help="Report the share of calls shorter than this (s).")
    ] = 5.0,
    long: Annotated[float, typer.Option("--long", min=0, help="Count calls longer than this (s).")] = 300.0,
    bins: Annotated[int, typer.Option("--bins", min=1, max=200, help="Histogram bins (linear and log scale).")] = 10,
    plots: Annotated[bool, typer.Option("--plots", help="Also write PNG plots into RUN_DIR/analysis/.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the analysis as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the latency tables as CSV.")] = False,
) -> None:
    """Latency per tool, expert, role and replica; samples; model vs tool vs queueing; retries, errors."""
    from proctor.errors import InputError
    from proctor.profiling.analysis import Options, analyze_events, compare, load_events
    from proctor.profiling.report import render, render_comparison, to_csv

    if as_json and as_csv:
        raise InputError("--json and --csv are alternatives: give one")
    opts = Options(under=under, long=long, bins=bins)
    events_a = load_events(run_dir)
    result = {"run": str(run_dir), **analyze_events(events_a, opts)}
    cmp = None
    if run_dir_b is not None:
        cmp = compare(result, {"run": str(run_dir_b), **analyze_events(load_events(run_dir_b), opts)})
    if as_json:
        print(json.dumps(cmp if cmp is not None else result, indent=2))
    elif as_csv:
        print(to_csv(result, cmp), end="")
    else:
        console = make_console()
        if cmp is not None:
            render_comparison(console, cmp)
        else:
            render(console, result)
    if plots:
        from proctor.profiling.plots import write_plots

        for path in write_plots(result, events_a, run_dir / "analysis"):
            # Machine-readable output stays alone on stdout.
            print(f"wrote {path}", file=sys.stderr if (as_json or as_csv) else sys.stdout)


def register(app: typer.Typer) -> None:
    app.command("analyze", no_args_is_help=True)(analyze)
