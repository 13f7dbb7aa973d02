"""PNG plots of an analysis: duration histograms (linear and log scale) and calls in flight.

The histograms are drawn from the same bins as the tables (``--bins``), so a plot and its table
never disagree. matplotlib is imported here only, when ``--plots`` asks for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from proctor._files import ensure_directory
from proctor.profiling.analysis import concurrency_timeline

_TITLES = {
    "tool": "tool {name} (end to end)",
    "expert": "expert {target} in tool {name}",
    "model": "role {name} at {target}",
}


def group_title(group: dict[str, Any]) -> str:
    return _TITLES[group["section"]].format(name=group["name"], target=group["target"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:80] or "_"


def write_plots(result: dict[str, Any], events: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per group (linear and log histogram side by side), sample wall times, concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 200, not 2×10²

    ensure_directory(out_dir, what="plot directory")
    written: list[Path] = []

    def histograms(title: str, linear: dict[str, Any], log: dict[str, Any], xlabel: str, name: str) -> None:
        if not linear["counts"]:
            return
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for ax, hist, scale in ((left, linear, "linear"), (right, log, "log")):
            if not hist["counts"]:
                ax.set_visible(False)
                continue
            edges = hist["edges"]
            ax.stairs(hist["counts"], edges, fill=True, alpha=0.7)
            if scale == "log":
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(plain)
                ax.xaxis.set_minor_formatter(plain)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(f"{xlabel} ({scale} scale)")
            ax.set_ylabel("count")
            ax.set_title(f"{len(hist['counts'])} bins, {scale}", fontsize=9)
        fig.suptitle(title)
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for g in result["groups"]:
        name = "-".join(_slug(part) for part in (g["section"], g["name"], g["target"]) if part)
        histograms(
            f"{group_title(g)}: {g['count']} calls",
            g["histogram"],
            g["histogram_log"],
            "call duration (s)",
            f"hist-{name}",
        )
    s = result["samples"]
    histograms(
        f"samples: wall time of {s['count']}",
        s["histogram"],
        s["histogram_log"],
        "sample wall time (s)",
        "hist-samples",
    )
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
