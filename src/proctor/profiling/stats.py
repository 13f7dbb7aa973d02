"""Latency statistics and histograms over a list of call durations, in plain Python.

The definitions are fixed so that a table can be checked by hand and compared across runs:
``std`` is the population standard deviation (numpy's default, ``ddof=0``); percentiles
interpolate linearly between the two nearest ranks (numpy's default ``linear`` method), so the
p50 of an even count is the midpoint of the middle pair; "under" is the share of calls strictly
shorter than the threshold and "over" the count strictly longer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PERCENTILES = (10, 25, 50, 90, 95, 99)
"""The percentiles every latency table shows."""

SLOWEST = 5
"""How many of the slowest calls (with their sample ids) a group keeps."""


def quantile(ordered: list[float], p: float) -> float:
    """The ``p`` quantile (0..1) of sorted values, linearly interpolated between ranks."""
    if not ordered:
        raise ValueError("quantile of no values")
    position = p * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values: list[float], *, under: float, long: float) -> dict[str, float | int | None]:
    """count, mean, std, min, max, the percentiles, the share under ``under`` and count over ``long``."""
    n = len(values)
    if n == 0:
        empty: dict[str, float | int | None] = {"count": 0}
        for key in ("mean", "std", "min", "max", *(f"p{p}" for p in PERCENTILES), "under_share"):
            empty[key] = None
        empty["over_long"] = 0
        return empty
    ordered = sorted(values)
    mean = sum(ordered) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in ordered) / n)
    out: dict[str, float | int | None] = {
        "count": n,
        "mean": round(mean, 4),
        "std": round(std, 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
    }
    for p in PERCENTILES:
        out[f"p{p}"] = round(quantile(ordered, p / 100), 4)
    out["under_share"] = round(sum(1 for v in ordered if v < under) / n, 4)
    out["over_long"] = sum(1 for v in ordered if v > long)
    return out


@dataclass(frozen=True)
class Histogram:
    """``counts[i]`` values fell in ``[edges[i], edges[i + 1])``; the last bin includes its right edge."""

    edges: list[float]
    counts: list[int]

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {"edges": [round(e, 6) for e in self.edges], "counts": self.counts}


def _bin_counts(scaled: list[float], lo: float, hi: float, bins: int) -> list[int]:
    """Counts per equal-width bin of [lo, hi]; the maximum lands in the last bin."""
    counts = [0] * bins
    width = (hi - lo) / bins
    for v in scaled:
        i = bins - 1 if width == 0 else min(bins - 1, max(0, int((v - lo) / width)))
        counts[i] += 1
    return counts


def histogram(values: list[float], bins: int, *, log: bool = False) -> Histogram:
    """Equal-width bins over [min, max], or equal-ratio bins (equal width in log10) when ``log``.

    When every value is the same there is one bin. On the log scale values at or below zero (which a wall clock can produce for an instant call)
    are counted in the first bin, whose left edge is the smallest positive value.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if not values:
        return Histogram([], [])
    if min(values) == max(values):  # one value, however often: one bin, not ten empty ones
        return Histogram([values[0], values[0]], [len(values)])
    if log:
        positive = [v for v in values if v > 0]
        if not positive:
            return Histogram([], [])
        lo, hi = math.log10(min(positive)), math.log10(max(positive))
        scaled = [math.log10(v) if v > 0 else lo for v in values]
        edges = [10 ** (lo + (hi - lo) * i / bins) for i in range(bins + 1)]
    else:
        lo, hi = min(values), max(values)
        scaled = list(values)
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    return Histogram(edges, _bin_counts(scaled, lo, hi, bins))
