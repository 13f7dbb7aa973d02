"""Running an evaluation: dataset → solver → scorer for every sample, durably and observably.

One asyncio event loop, ``concurrency`` worker tasks pulling samples from a queue (not one task per
sample: memory stays flat for 100k-sample runs). Each sample's progress goes to the ledger as it
happens, so a run killed at any moment resumes where it stood. A sample's failure is data (an
error row with its class), never the end of the run; only an abort-class error (bad key, unknown
model) stops everything, because every further call would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from proctor._files import ensure_directory
from proctor._loop import run as run_loop
from proctor.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLE_ERRORS,
    ContextOverflowError,
    IncomparableRunError,
    InfraError,
    ModelAbortError,
    ModelError,
    ProctorError,
    SpecError,
)
from proctor.evals.dataset import LoadedDataset, load_dataset
from proctor.evals.ledger import Ledger
from proctor.evals.progress import Progress
from proctor.evals.registry import build_scorer, build_solver
from proctor.evals.reports import write_reports
from proctor.evals.spec import TaskSpec, dump_spec
from proctor.evals.types import Sample, SampleSkipped, Score, Scorer, SolveContext, Solver, SolveResult
from proctor.models.config import ModelConfig
from proctor.profiling.events import EventLog, current_attempt

log = logging.getLogger("proctor.run")


class SampleRecorder(Protocol):
    """Where one sample's steps go: the ledger, or a Ray actor's recorder the driver replays."""

    def record_generation(self, sample_id: str, result: SolveResult, duration: float) -> None: ...
    def record_score(self, sample_id: str, score: Score, scorer: str) -> None: ...
    def record_done(self, sample_id: str, result: SolveResult, duration: float, score: Score, scorer: str) -> None: ...
    def record_error(
        self,
        sample_id: str,
        error_class: str,
        message: str,
        *,
        partial: SolveResult | None = None,
        duration: float | None = None,
    ) -> None: ...
    def record_skip(self, sample_id: str, reason: str) -> None: ...
    def generation(self, sample_id: str) -> SolveResult | None: ...


@dataclass
class RunOptions:
    out: Path
    retry_errors: bool = False
    force_new: bool = False
    grace: float = 30.0
    """Seconds in-flight samples get to finish after the first Ctrl-C / SIGTERM."""
    progress: str = "auto"
    """auto | rich | plain | none; ``PROCTOR_PROGRESS=json`` adds machine-readable lines."""
    report_interval: float = 10.0


@dataclass
class RunResult:
    exit_code: int
    stats: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    message: str | None = None


class RunDirectory:
    """The files of a run directory, and the rule that decides whether a run may resume there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / "ledger.sqlite"

    def prepare(self, spec: TaskSpec, dataset: LoadedDataset, *, force_new: bool) -> Ledger:
        ensure_directory(self.path, what="run directory (--out)")
        fingerprint = spec.fingerprint()
        ledger = Ledger(self.ledger_path)
        problems = self._incomparable(ledger, fingerprint, dataset)
        if problems:
            ledger.close()
            if not force_new:
                raise IncomparableRunError(
                    f"{self.path} holds a run that cannot be mixed with this one: {'; '.join(problems)}",
                    hint="use another --out directory, or --force-new to set the old run aside and start afresh",
                )
            self._set_aside()
            ledger = Ledger(self.ledger_path)
        ledger.set_meta("fingerprint", json.dumps(fingerprint))
        ledger.set_meta("dataset_digest", dataset.digest)
        ledger.set_meta("name", spec.name)
        return ledger

    @staticmethod
    def _incomparable(ledger: Ledger, fingerprint: dict[str, str], dataset: LoadedDataset) -> list[str]:
        """Why the stored run and this spec cannot share a ledger (empty when they can)."""
        problems = []
        stored = ledger.get_meta("fingerprint")
        if stored is not None:
            old = json.loads(stored)
            changed = [k for k in fingerprint if k in old and old[k] != fingerprint[k]]
            if changed:
                problems.append(f"its {', '.join(changed)} differ(s) from this spec")
        missing, altered = ledger.differences(dataset.all_samples)
        if missing:
            problems.append(
                f"{len(missing)} of its samples are no longer in {dataset.path.name} "
                f"(e.g. {', '.join(map(repr, missing[:3]))})"
            )
        if altered:
            problems.append(
                f"{len(altered)} sample(s) changed their input or target (e.g. {', '.join(map(repr, altered[:3]))})"
            )
        return problems

    def _set_aside(self) -> None:
        """--force-new never deletes finished work: the old run moves to a dated subdirectory."""
        old = self.path / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        old.mkdir()
        for name in (
            "ledger.sqlite",
            "ledger.sqlite-wal",
            "ledger.sqlite-shm",
            "eval_stats.json",
            "samples.jsonl",
            "traj_log_all.jsonl",
            "events.jsonl",
            "run.log",
            "spec.yaml",
        ):
            if (self.path / name).exists():
                shutil.move(str(self.path / name), str(old / name))
        log.warning("set the previous run aside in %s", old)


@dataclass
class _Counters:
    done: int = 0
    errors: int = 0
    score_sum: float = 0.0
    scored: int = 0
    started: float = field(default_factory=time.monotonic)
    finished_this_run: int = 0


class Runner:
    """Runs one spec into one run directory."""

    def __init__(
        self, spec: TaskSpec, *, spec_dir: Path, options: RunOptions, limit: int | None = None, console: Any = None
    ) -> None:
        self.spec = spec
        self.spec_dir = spec_dir
        self.options = options
        self.limit = limit
        self.console = console
        self.run_dir = options.out
        self.counters = _Counters()
        self._stop_dispatch = asyncio.Event()
        self._abort: BaseException | None = None
        self._interrupted = False
        self._sigint_count = 0
        self.wall_start = time.monotonic()
        self._resumed = 0
        """Samples already finished when this session started (wall time and calls are this session's)."""

    # ------------------------------------------------------------------ preparation (sync)
    def prepare(self) -> tuple[LoadedDataset, Solver, Scorer]:
        """Everything that can be checked without a model: fails fast with exit 2."""
        dataset = load_dataset(self.spec.dataset, base_dir=self.spec_dir, limit=self.limit)
        if not dataset.samples:
            raise SpecError(f"the dataset selection is empty ({dataset.total_rows} rows before limit/shard)")
        solver = build_solver(self.spec.solver, base_dir=self.spec_dir)
        scorer = build_scorer(self.spec.scorer)
        return dataset, solver, scorer

    def plan(self, ledger: Ledger, samples: list[Sample]) -> tuple[deque[tuple[Sample, bool]], int]:
        """Which samples still need work (and whether they need a model call), resuming the ledger."""
        recovered = ledger.recover_interrupted()
        if recovered:
            log.info("%d sample(s) were in flight when the last run stopped; running them again", recovered)
        known = ledger.states()
        new = [s for s in samples if s.id not in known]
        if new:
            ledger.add_samples(new, start_index=len(known))
        work: deque[tuple[Sample, bool]] = deque()
        already = 0
        # The running accuracy covers the whole run, as the report does, not only this session.
        if any(state == "scored" for state, _ in known.values()):
            for row in ledger.rows():
                if row.state == "scored" and row.score is not None:
                    self.counters.score_sum += row.score
                    self.counters.scored += 1
        for sample in samples:
            state, error_class = known.get(sample.id, ("pending", None))
            if state == "scored":
                already += 1
            elif state == "generated" or (
                state == "error" and error_class == "scoring_error" and self.options.retry_errors
            ):
                work.append((sample, False))
            elif state == "error" and not self.options.retry_errors:
                already += 1
                self.counters.errors += 1
            else:
                work.append((sample, True))
        return work, already

    # ------------------------------------------------------------------ the run
    def run(self) -> RunResult:
        dataset, solver, scorer = self.prepare()
        ledger = RunDirectory(self.run_dir).prepare(self.spec, dataset, force_new=self.options.force_new)
        try:
            (self.run_dir / "spec.yaml").write_text(dump_spec(self.spec, dataset_path=dataset.path), encoding="utf-8")
            handler = _attach_run_log(self.run_dir / "run.log")
            try:
                log.info(
                    "run %s: %d samples from %s, model %s, concurrency %d",
                    self.spec.name,
                    len(dataset.samples),
                    dataset.path,
                    self.spec.models["subject"].model,
                    self.spec.concurrency,
                )
                work, already = self.plan(ledger, dataset.samples)
                if already:
                    log.info(
                        "resuming: %d of %d samples already done, %d to run", already, len(dataset.samples), len(work)
                    )
                return run_loop(self._main(ledger, work, already, len(dataset.samples), solver, scorer))
            finally:
                logging.getLogger("proctor").removeHandler(handler)
                handler.close()
        finally:
            ledger.close()

    async def _main(
        self, ledger: Ledger, work: deque[tuple[Sample, bool]], already: int, total: int, solver: Solver, scorer: Scorer
    ) -> RunResult:
        from proctor.models.router import ModelRouter  # deferred: keeps `proctor --help` fast

        events = EventLog(self.run_dir / "events.jsonl")
        ledger.start_writer()
        self.counters.done = already
        self._resumed = already
        progress = Progress(
            total=total, done=already, errors=self.counters.errors, mode=self.options.progress, console=self.console
        )
        loop = asyncio.get_running_loop()
        self._install_signals(loop, ledger, events)
        models = self._models_with_params()
        try:
            async with self._launched(models) as resolved:
                router = ModelRouter(resolved, on_event=events.write, base_dir=self.spec_dir)
                await router.start()
                try:
                    ctx_base = SolveContext(models=router, emit=events.write, run_dir=self.run_dir)
                    with progress:
                        ticker = asyncio.create_task(self._tick(progress, ledger, events))
                        try:
                            await self._run_workers(work, ledger, solver, scorer, ctx_base, progress)
                        finally:
                            ticker.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await ticker
                        progress.update(self.counters.done, self.counters.errors, self._accuracy(), final=True)
                finally:
                    for component in (solver, scorer):
                        closer = getattr(component, "aclose", None)
                        if closer is not None:
                            with contextlib.suppress(Exception):
                                await closer()
                    await router.aclose()
        finally:
            self._remove_signals(loop)
            events.close()
            ledger.flush()
        if self._abort is not None:
            raise self._abort
        stats = write_reports(
            ledger,
            self.run_dir,
            name=self.spec.name,
            model=self.spec.models["subject"].model,
            wall_time=time.monotonic() - self.wall_start,
            model_durations=events.model_durations,
            resumed=self._resumed,
            final=not self._interrupted,
        )
        if self._interrupted:
            return RunResult(EXIT_INTERRUPTED, stats, interrupted=True)
        code = EXIT_SAMPLE_ERRORS if stats["errors"]["total"] else EXIT_OK
        return RunResult(code, stats)

    def _models_with_params(self) -> dict[str, ModelConfig]:
        """The spec's ``generate:`` block is the subject's sampling parameters."""
        models = dict(self.spec.models)
        subject = models["subject"]
        models["subject"] = subject.model_copy(update={"params": subject.params.merged(self.spec.generate)})
        return models

    @contextlib.asynccontextmanager
    async def _launched(self, models: dict[str, ModelConfig]) -> AsyncIterator[dict[str, ModelConfig]]:
        from proctor.models.launch import launched_servers, retrieval_services

        services = retrieval_services(self.spec.solver.model_dump())
        if not services and not any(m.launch for m in models.values()):
            yield models
            return
        async with launched_servers(
            models, run_dir=self.run_dir, base_dir=self.spec_dir, log=log, services=services
        ) as resolved:
            yield dict(resolved)

    async def _run_workers(
        self,
        work: deque[tuple[Sample, bool]],
        ledger: Ledger,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        progress: Progress,
    ) -> None:
        workers = [asyncio.create_task(c) for c in self._workers(work, ledger, solver, scorer, ctx, progress)]
        stop_wait = asyncio.create_task(self._stop_dispatch.wait())
        try:
            pending: set[asyncio.Task[object]] = set(workers)
            while pending:
                done, pending = await asyncio.wait(pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stop_wait)
                if stop_wait in done:
                    # Stop dispatching: in-flight samples get the grace period, then are cancelled
                    # (they stay 'running' in the ledger and are redone on resume).
                    grace = 0.0 if self._abort is not None else self.options.grace
                    if pending:
                        if grace:
                            log.warning(
                                "stopping: waiting up to %.0f s for %d in-flight sample(s)",
                                grace,
                                sum(1 for w in pending if not w.done()),
                            )
                        _, still = await asyncio.wait(pending, timeout=grace) if grace else (set(), pending)
                        for task in still:
                            task.cancel()
                        await asyncio.gather(*still, return_exceptions=True)
                    break
        finally:
            stop_wait.cancel()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _workers(
        self,
        work: deque[tuple[Sample, bool]],
        ledger: Ledger,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        progress: Progress,
    ) -> list[Coroutine[Any, Any, None]]:
        """The coroutines that pull from ``work``: ``concurrency`` local workers (Ray: its lanes)."""
        n_workers = min(self.spec.concurrency, len(work)) or 1
        return [self._worker(work, ledger, solver, scorer, ctx, progress) for _ in range(n_workers)]

    async def _worker(
        self,
        work: deque[tuple[Sample, bool]],
        ledger: Ledger,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        progress: Progress,
    ) -> None:
        while work and not self._stop_dispatch.is_set():
            sample, needs_generation = work.popleft()
            started = time.time()
            attempt = ledger.mark_running(sample.id, started, generate=needs_generation)
            if not await self.process_sample(
                sample, needs_generation, started, ledger, solver, scorer, ctx, attempt=attempt
            ):
                return
            self.counters.done += 1
            self.counters.finished_this_run += 1
            # The answer is committed before this worker asks for another: a kill -9 then costs
            # only the calls in flight (at most one per worker), never an answer received.
            await ledger.durable()

    async def process_sample(
        self,
        sample: Sample,
        needs_generation: bool,
        started: float,
        ledger: SampleRecorder,
        solver: Solver,
        scorer: Scorer,
        ctx: SolveContext,
        *,
        attempt: int | None = None,
    ) -> bool:
        """Solve and score one sample, telling ``ledger`` each step; False when the run must abort.

        The one path every executor takes: the local workers pass the ledger itself, a Ray actor
        (``proctor.executors.ray``) a recorder whose steps the driver replays onto the ledger.
        ``attempt`` (the ledger's count of this sample's dispatches) is stamped on every event the
        sample's calls emit, so ``events.jsonl`` tells a retried sample's attempts apart.
        """
        # Set, not reset: a worker's (or an actor call's) task runs one sample at a time, and sets
        # it again for the next; other tasks never see it.
        current_attempt.set(attempt)
        time_limit = self.spec.time_limit
        # A solver that stops itself at ctx.deadline (the agent) gets a little longer before the
        # hard cut, so it can return its answer-so-far as a time_limit outcome.
        hard_limit = (
            None if time_limit is None else time_limit + (5.0 if getattr(solver, "handles_deadline", False) else 0.0)
        )
        sample_ctx = (
            ctx
            if time_limit is None
            else SolveContext(
                models=ctx.models, emit=ctx.emit, run_dir=ctx.run_dir, deadline=time.monotonic() + time_limit
            )
        )
        try:
            if needs_generation:
                coro = solver(sample, sample_ctx)
                result = await (asyncio.wait_for(coro, hard_limit) if hard_limit else coro)
                duration = time.time() - started
                if scorer.needs_models:  # a judge call may fail: keep the generation first
                    ledger.record_generation(sample.id, result, duration)
                    score = await scorer(sample, result, sample_ctx)
                    ledger.record_score(sample.id, score, self.spec.scorer.type)
                else:
                    score = await scorer(sample, result, sample_ctx)
                    ledger.record_done(sample.id, result, duration, score, self.spec.scorer.type)
            else:
                stored = ledger.generation(sample.id)
                result = stored if stored is not None else SolveResult(output="")
                score = await scorer(sample, result, sample_ctx)
                ledger.record_score(sample.id, score, self.spec.scorer.type)
            self.counters.score_sum += score.value
            self.counters.scored += 1
        except SampleSkipped as exc:
            ledger.record_skip(sample.id, exc.reason)
        except TimeoutError:
            self._error(ledger, sample, "time_limit", f"sample exceeded its time limit of {time_limit:g} s")
        except InfraError as exc:
            self._error(ledger, sample, exc.error_class, str(exc), _partial(exc), time.time() - started)
        except ModelAbortError as exc:
            self._abort = exc
            self._stop_dispatch.set()
            return False
        except ContextOverflowError as exc:
            # A model outcome: the sample is answered (empty) and scored as such.
            result = SolveResult(output="", outcome="context_overflow", extra={"error": str(exc)})
            ledger.record_generation(sample.id, result, time.time() - started)
            ledger.record_score(sample.id, await scorer(sample, result, sample_ctx), self.spec.scorer.type)
            self.counters.scored += 1
        except ProctorError as exc:
            error_class = getattr(exc, "error_class", None) or type(exc).__name__
            self._error(ledger, sample, error_class, str(exc), _partial(exc), time.time() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a solver/scorer must not end the whole run
            log.error("sample %s failed unexpectedly:\n%s", sample.id, traceback.format_exc())
            self._error(ledger, sample, "internal", f"{type(exc).__name__}: {exc}")
        return True

    def _error(
        self,
        ledger: SampleRecorder,
        sample: Sample,
        error_class: str,
        message: str,
        partial: SolveResult | None = None,
        duration: float | None = None,
    ) -> None:
        ledger.record_error(sample.id, error_class, message, partial=partial, duration=duration)
        self.counters.errors += 1
        log.warning("sample %s: %s: %s", sample.id, error_class, message.splitlines()[0] if message else "")

    def _accuracy(self) -> float | None:
        return self.counters.score_sum / self.counters.scored if self.counters.scored else None

    async def _tick(self, progress: Progress, ledger: Ledger, events: EventLog) -> None:
        """Progress display, event flushing and periodic reports: all off the workers' path."""
        last_report = time.monotonic()
        interval = progress.interval
        while True:
            await asyncio.sleep(interval)
            progress.update(self.counters.done, self.counters.errors, self._accuracy())
            try:
                events.flush()
            except OSError as exc:  # kept in memory; the next flush writes them
                log.warning("could not write events.jsonl (%s); will try again", exc)
            if time.monotonic() - last_report >= self.options.report_interval:
                started = time.monotonic()
                try:
                    await asyncio.to_thread(
                        write_reports,
                        ledger,
                        self.run_dir,
                        name=self.spec.name,
                        model=self.spec.models["subject"].model,
                        wall_time=time.monotonic() - self.wall_start,
                        model_durations=list(events.model_durations),
                        resumed=self._resumed,
                        final=False,
                    )
                except OSError as exc:  # e.g. a full disk: the ledger has everything, retry later
                    log.warning("could not refresh the reports (%s); will try again", exc)
                # Never spend more than ~5% of the time rewriting reports on huge runs.
                last_report = time.monotonic() + 20 * (time.monotonic() - started)

    # ------------------------------------------------------------------ signals
    def _install_signals(self, loop: asyncio.AbstractEventLoop, ledger: Ledger, events: EventLog) -> None:
        def on_signal(signame: str) -> None:
            self._sigint_count += 1
            if self._sigint_count == 1:
                self._interrupted = True
                log.warning("%s received: finishing in-flight samples (press Ctrl-C again to exit at once)", signame)
                self._stop_dispatch.set()
            else:
                # Second signal: exit now. Every committed transaction is intact; give the writer
                # a moment to commit what it holds, then leave.
                log.warning("%s received again: exiting at once", signame)
                self._leave_at_once()
                exit_at_once(events, ledger, self.run_dir)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig.name)

    def _leave_at_once(self) -> None:
        """What an executor must still undo when a second signal ends the process at once (the
        local runner: nothing; the Ray driver removes its private Ray)."""

    @staticmethod
    def _remove_signals(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def exit_at_once(events: EventLog, ledger: Ledger, run_dir: Path) -> NoReturn:
    """A second signal: let the writer commit what it holds (at most 2 s), then leave (exit 130)."""
    with contextlib.suppress(Exception):
        events.flush()
        ledger.flush(timeout=2.0)
    sys.stderr.write(f"interrupted; resume with: {resume_command(run_dir)}\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run, quoted so it can be pasted into a shell as printed."""
    spec = run_dir / "spec.yaml"
    return f"proctor run {shlex.quote(str(spec))} --out {shlex.quote(str(run_dir))}"


def _attach_run_log(path: Path) -> logging.Handler:
    """run.log gets every proctor log record, flushed line by line (nothing lost with the process)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("proctor")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def _partial(exc: ProctorError) -> SolveResult | None:
    """What the agent loop did before ``exc`` ended the sample (kept as the sample's trajectory)."""
    if not isinstance(exc, ModelError) or exc.trajectory is None:
        return None
    return SolveResult(output="", messages=exc.trajectory, outcome=exc.error_class, extra={"turns": exc.turns or []})
