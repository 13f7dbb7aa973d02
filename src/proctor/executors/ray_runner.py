"""``proctor run --executor ray``: the driver keeps the ledger; Ray actors solve and score.

The driver is the local ``Runner`` with one change: its worker coroutines are *lanes*. Each lane
belongs to one actor, pulls the next few samples from the run's one queue when its previous batch
came back, sends them to its actor, replays the returned ledger steps and waits until they are
durable before it pulls again. Work is stolen, never sharded: a slow actor simply asks less often.
Everything else (planning and resuming from the ledger, reports, progress, signals, the grace
period) is the local runner's own code.

An actor that dies (killed, OOM, node lost) fails its lanes' calls with ``RayActorError``: their
samples go back to the front of the queue and a replacement actor is started (a bounded number of
times). Results travel only in a call's reply, so a dead actor's samples are never recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from proctor.errors import ExecutorError, InputError, ModelAbortError
from proctor.evals.ledger import Ledger
from proctor.evals.progress import Progress
from proctor.evals.runner import Runner, RunOptions
from proctor.evals.spec import TaskSpec
from proctor.evals.types import Sample, Scorer, SolveContext, Solver
from proctor.executors.ray_actor import BatchReply, SampleActor, WorkItem
from proctor.executors.ray_cluster import RaySession
from proctor.models.config import ModelConfig

log = logging.getLogger("proctor.ray")

MAX_BATCH = 8
"""Samples per actor call: large enough to amortise Ray's per-call cost, small enough that a
batch's slowest sample keeps few slots idle and a dead actor costs few repeated calls."""
READY_TIMEOUT = 300.0
"""Seconds an actor may take to be placed and start (a busy cluster queues it)."""


def plan_lanes(concurrency: int, workers: int) -> list[tuple[int, int]]:
    """(actor index, batch size) for every lane: each actor's share of ``concurrency`` in batches."""
    lanes: list[tuple[int, int]] = []
    for index in range(workers):
        share = concurrency // workers + (1 if index < concurrency % workers else 0)
        if share == 0:
            continue
        batch = max(1, min(MAX_BATCH, share // 4))
        lanes += [(index, batch)] * math.ceil(share / batch)
    return lanes


class ActorLost(Exception):
    """The actor serving a lane died; its batch must be dispatched again."""


class ActorPool:
    """The run's actors, by index; a dead one is replaced at most ``replacements`` times in all."""

    def __init__(self, session: RaySession, make: Any, workers: int, lanes_per_actor: list[int]) -> None:
        self._ray = session.ray
        self._make = make
        self._workers = workers
        self._lanes_per_actor = lanes_per_actor
        self._actors: list[Any] = [None] * workers
        self._generation = [0] * workers
        self._locks = [asyncio.Lock() for _ in range(workers)]
        self.replacements_left = 2 * workers + 2
        self.pids: list[int] = [0] * workers

    async def start(self) -> None:
        await asyncio.gather(*(self._start_one(i) for i in range(self._workers)))

    async def _start_one(self, index: int) -> None:
        actor = self._make(self._lanes_per_actor[index])
        self._actors[index] = actor
        try:
            self.pids[index] = await asyncio.wait_for(self._await(actor.start.remote()), READY_TIMEOUT)
        except TimeoutError:
            raise ExecutorError(
                f"a Ray actor was not running after {READY_TIMEOUT:g} s (does the cluster have a free CPU per worker?)"
            ) from None
        log.info("ray: actor %d ready (pid %d)", index, self.pids[index])

    @staticmethod
    async def _await(ref: Any) -> Any:
        return await asyncio.wrap_future(ref.future())

    async def solve(self, index: int, items: list[WorkItem]) -> BatchReply:
        from ray.exceptions import RayActorError

        actor, generation = self._actors[index], self._generation[index]
        try:
            reply: BatchReply = await self._await(actor.solve.remote(items))
            return reply
        except RayActorError as exc:
            async with self._locks[index]:
                if self._generation[index] == generation:  # the first lane to notice replaces it
                    log.warning("ray: actor %d (pid %d) died: %s", index, self.pids[index], str(exc).splitlines()[0])
                    if self.replacements_left <= 0:
                        raise ExecutorError("Ray actors keep dying; stopping (see Ray's logs for why)") from None
                    self.replacements_left -= 1
                    self._kill(actor)
                    await self._start_one(index)
                    self._generation[index] += 1
            raise ActorLost from None

    def _kill(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            log.debug("ray.kill failed", exc_info=True)

    async def close(self) -> None:
        calls = [self._await(a.close.remote()) for a in self._actors if a is not None]
        if calls:
            await asyncio.wait([asyncio.ensure_future(c) for c in calls], timeout=10)
        for actor in self._actors:
            if actor is not None:
                self._kill(actor)


class RayRunner(Runner):
    """The local runner whose workers are lanes to Ray actors (see the module's docstring)."""

    def __init__(
        self,
        spec: TaskSpec,
        *,
        spec_dir: Path,
        options: RunOptions,
        limit: int | None = None,
        console: Any = None,
        ray_address: str | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(spec, spec_dir=spec_dir, options=options, limit=limit, console=console)
        self.ray_address = ray_address
        self.workers = workers or spec.executor.workers
        self._session: RaySession | None = None
        self._pool: ActorPool | None = None
        self._resolved: dict[str, ModelConfig] = {}
        self._replayed: set[str] = set()
        self._lane_plan: list[tuple[int, int]] = []

    def prepare(self) -> tuple[Any, Solver, Scorer]:
        prepared = super().prepare()  # every check that needs no model, before Ray starts
        transports = [name for name, m in self.spec.models.items() if m.transport == "tunnel"]
        if transports:
            raise InputError(f"--executor ray cannot serve private roles ({', '.join(transports)}) through a tunnel")
        self._session = RaySession.open(self.ray_address, workers=self.workers)
        return prepared

    def run(self) -> Any:
        try:
            return super().run()
        finally:
            if self._session is not None:
                self._session.close()

    def _leave_at_once(self) -> None:
        if self._session is not None:
            self._session.abandon()

    @contextlib.asynccontextmanager
    async def _launched(self, models: dict[str, ModelConfig]) -> AsyncIterator[dict[str, ModelConfig]]:
        """The models as resolved (``launch:`` servers started by the driver) go to the actors."""
        async with super()._launched(models) as resolved:
            self._resolved = resolved
            yield resolved

    async def _run_workers(
        self,
        work: deque[tuple[Sample, bool]],
        ledger: Ledger,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        progress: Progress,
    ) -> None:
        assert self._session is not None
        if not work:
            return
        lanes = plan_lanes(self.spec.concurrency, self.workers)
        per_actor = [sum(1 for i, _ in lanes if i == index) for index in range(self.workers)]
        models = self._resolved
        keys = {
            m.api_key_env: os.environ[m.api_key_env]
            for m in models.values()
            if m.api_key_env and m.api_key_env in os.environ
        }
        remote = self._session.ray.remote(SampleActor)
        spec_dir, run_dir = str(self.spec_dir), str(self.run_dir)

        def make(n_lanes: int) -> Any:
            # max_concurrency: every lane's call runs at once on the actor's one event loop.
            return remote.options(max_concurrency=n_lanes + 2, num_cpus=1).remote(
                self.spec, spec_dir, run_dir, models, keys
            )

        self._lane_plan = lanes
        self._pool = ActorPool(self._session, make, self.workers, per_actor)
        try:
            await self._pool.start()
            await super()._run_workers(work, ledger, solver, scorer, ctx, progress)
        finally:
            await self._pool.close()

    def _workers(
        self,
        work: deque[tuple[Sample, bool]],
        ledger: Ledger,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        progress: Progress,
    ) -> list[Coroutine[Any, Any, None]]:
        return [self._lane(index, batch, work, ledger, ctx) for index, batch in self._lane_plan]

    async def _lane(
        self, index: int, batch_size: int, work: deque[tuple[Sample, bool]], ledger: Ledger, ctx: SolveContext
    ) -> None:
        assert self._pool is not None
        while work and not self._stop_dispatch.is_set():
            batch = [work.popleft() for _ in range(min(batch_size, len(work)))]
            now = time.time()
            items = []
            for sample, needs_generation in batch:
                attempt = ledger.mark_running(sample.id, now, generate=needs_generation)
                stored = None if needs_generation else ledger.generation(sample.id)
                items.append(WorkItem(sample, needs_generation, stored, attempt))
            try:
                reply = await self._pool.solve(index, items)
            except ActorLost:
                work.extendleft(reversed(batch))  # first in line again, for any lane
                continue
            except ExecutorError as exc:
                work.extendleft(reversed(batch))
                self._abort = exc
                self._stop_dispatch.set()
                return
            except Exception as exc:  # the call itself failed (e.g. a result Ray could not pickle)
                for sample, _ in batch:
                    self._error(ledger, sample, "internal", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                    self.counters.done += 1
                    self.counters.finished_this_run += 1
                await ledger.durable()
                continue
            for event in reply.events:
                ctx.emit(event)
            if not self._replay(reply, ledger):
                return
            await ledger.durable()

    def _replay(self, reply: BatchReply, ledger: Ledger) -> bool:
        """Apply an actor's steps to the ledger and the counters; False when the run must abort."""
        for result in reply.results:
            if result.abort is not None:
                self._abort = ModelAbortError(result.abort)
                self._stop_dispatch.set()
                return False
            if result.sample_id in self._replayed:  # never twice, whatever the cluster does
                log.warning("ray: a second result for sample %s was ignored", result.sample_id)
                continue
            self._replayed.add(result.sample_id)
            for name, args in result.steps:
                if name == "record_error":  # (id, class, message[, partial, duration])
                    partial, duration = (args[3], args[4]) if len(args) == 5 else (None, None)
                    ledger.record_error(*args[:3], partial=partial, duration=duration)
                else:
                    getattr(ledger, name)(*args)
                if name in ("record_done", "record_score"):
                    self.counters.score_sum += args[-2].value
                    self.counters.scored += 1
                elif name == "record_error":
                    self.counters.errors += 1
                    log.warning("sample %s: %s: %s", args[0], args[1], args[2].splitlines()[0] if args[2] else "")
            self.counters.done += 1
            self.counters.finished_this_run += 1
        return True
