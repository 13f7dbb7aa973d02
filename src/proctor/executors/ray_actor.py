"""The Ray actor that solves and scores samples for a driver, and the recorder it reports through.

An actor runs its own event loop, its own ``ModelRouter`` and the engine's one per-sample path
(``Runner.process_sample``). It never touches the ledger: each step the local runner would write
(generation, score, error, skip) is recorded as data and sent back with the batch, and the driver
replays it onto its ledger. So a result exists only once the driver holds it, which is what makes
a killed actor harmless: its batch is simply dispatched again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctor.evals.registry import build_scorer, build_solver
from proctor.evals.runner import Runner, RunOptions
from proctor.evals.spec import TaskSpec
from proctor.evals.types import Sample, Score, Scorer, SolveContext, Solver, SolveResult
from proctor.models.config import ModelConfig
from proctor.profiling.events import Event, stamp_attempt

log = logging.getLogger("proctor.ray")


@dataclass(slots=True)
class WorkItem:
    """One sample sent to an actor; ``stored`` is its generation when only scoring is left."""

    sample: Sample
    needs_generation: bool
    stored: SolveResult | None = None
    attempt: int | None = None
    """The driver's ledger count of this sample's dispatches, stamped on its events."""


@dataclass(slots=True)
class ItemResult:
    """What happened to one sample: the ledger steps to replay, in order, or why the run must abort."""

    sample_id: str
    steps: list[tuple[str, tuple[Any, ...]]]
    abort: str | None = None


@dataclass(slots=True)
class BatchReply:
    results: list[ItemResult]
    events: list[Event] = field(default_factory=list)
    """Events (model calls, tool calls) emitted since the actor's last reply, for events.jsonl."""


class StepRecorder:
    """Stands in for the ledger on an actor (``runner.SampleRecorder``): steps become data."""

    def __init__(self, item: WorkItem) -> None:
        self._item = item
        self.steps: list[tuple[str, tuple[Any, ...]]] = []

    def record_generation(self, sample_id: str, result: SolveResult, duration: float) -> None:
        self.steps.append(("record_generation", (sample_id, result, duration)))

    def record_score(self, sample_id: str, score: Score, scorer: str) -> None:
        self.steps.append(("record_score", (sample_id, score, scorer)))

    def record_done(self, sample_id: str, result: SolveResult, duration: float, score: Score, scorer: str) -> None:
        self.steps.append(("record_done", (sample_id, result, duration, score, scorer)))

    def record_error(
        self,
        sample_id: str,
        error_class: str,
        message: str,
        *,
        partial: SolveResult | None = None,
        duration: float | None = None,
    ) -> None:
        self.steps.append(("record_error", (sample_id, error_class, message, partial, duration)))

    def record_skip(self, sample_id: str, reason: str) -> None:
        self.steps.append(("record_skip", (sample_id, reason)))

    def generation(self, sample_id: str) -> SolveResult | None:
        return self._item.stored


class SampleActor:
    """One Ray async actor (wrapped with ``ray.remote`` by the driver): batches in, steps out."""

    def __init__(
        self,
        spec: TaskSpec,
        spec_dir: str,
        run_dir: str,
        models: dict[str, ModelConfig],
        keys: dict[str, str],
    ) -> None:
        self._spec = spec
        self._spec_dir = Path(spec_dir)
        self._run_dir = Path(run_dir)
        self._models = models
        # Keys travel in the actor's creation arguments (Ray's RPC), never in files or argv;
        # only this actor's router sees them, not its process environment.
        self._environ = {**os.environ, **keys}
        self._runner = Runner(spec, spec_dir=self._spec_dir, options=RunOptions(out=self._run_dir))
        self._solver: Solver = build_solver(spec.solver, base_dir=self._spec_dir)
        self._scorer: Scorer = build_scorer(spec.scorer)
        self._events: list[Event] = []
        self._ctx: SolveContext | None = None

    async def start(self) -> int:
        """Open the model router (health checks included); the answer is this actor's pid."""
        from proctor.models.router import ModelRouter

        router = ModelRouter(self._models, on_event=self._emit, environ=self._environ, base_dir=self._spec_dir)
        await router.start()
        self._ctx = SolveContext(models=router, emit=self._emit, run_dir=self._run_dir)
        return os.getpid()

    def _emit(self, event: Event) -> None:
        """Keep an event for the next reply, stamped with its sample's attempt (as ``EventLog`` does)."""
        self._events.append(stamp_attempt(event))

    async def solve(self, items: list[WorkItem]) -> BatchReply:
        """Solve and score a batch concurrently; every item gets its result, none is left out."""
        results = await asyncio.gather(*(self._one(item) for item in items))
        events, self._events[:] = list(self._events), []
        return BatchReply(list(results), events)

    async def _one(self, item: WorkItem) -> ItemResult:
        assert self._ctx is not None, "start() first"
        recorder = StepRecorder(item)
        ok = await self._runner.process_sample(
            item.sample,
            item.needs_generation,
            time.time(),
            recorder,
            self._solver,
            self._scorer,
            self._ctx,
            attempt=item.attempt,
        )
        abort = None if ok else str(self._runner._abort)
        return ItemResult(item.sample.id, recorder.steps, abort)

    async def close(self) -> None:
        for component in (self._solver, self._scorer):
            closer = getattr(component, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:  # closing is best effort; the actor is going away
                    log.debug("closing %r failed", component, exc_info=True)
        if self._ctx is not None:
            await self._ctx.models.aclose()
