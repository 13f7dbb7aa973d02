"""``busy_numeric``: the numeric scorer plus a fixed cost of CPU per sample (benchmarks, tests).

Scoring that burns CPU on the event loop (parsing, checking, trajectory handling) is what one
process cannot scale past one core; ``bench/scale.py`` uses this scorer to measure what spreading
samples over Ray actors buys. Registered by name (``scorer: {type: busy_numeric, cpu_ms: 5}``),
so an actor on any node resolves it like a built-in, with no plugin path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from proctor.errors import SpecError
from proctor.evals.scorers import numeric
from proctor.evals.types import Sample, Score, Scorer, SolveContext, SolveResult, register_scorer


class BusyScorer:
    """Spins for ``seconds`` of this thread's CPU time, then scores as ``inner`` does."""

    needs_models = False

    def __init__(self, inner: Scorer, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds

    async def __call__(self, sample: Sample, result: SolveResult, ctx: SolveContext) -> Score:
        end = time.thread_time() + self._seconds
        while time.thread_time() < end:
            pass
        return await self._inner(sample, result, ctx)


@register_scorer("busy_numeric")
def busy_numeric(options: Mapping[str, Any]) -> BusyScorer:
    rest = dict(options)
    cpu_ms = rest.pop("cpu_ms", 5.0)
    if not isinstance(cpu_ms, int | float) or isinstance(cpu_ms, bool) or not 0 <= cpu_ms <= 10_000:
        raise SpecError(f"scorer.cpu_ms: a number of milliseconds from 0 to 10000 (got {cpu_ms!r})")
    return BusyScorer(numeric(rest), cpu_ms / 1000.0)
