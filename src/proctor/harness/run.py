"""``proctor run`` of a spec with an ``lm_eval:`` section.

The main thread owns proctor's event loop (router, ledger writer, progress, events); lm-eval's
``simple_evaluate`` runs in a worker thread and blocks on the loop for each batch of requests.
lm-eval stays offline: the datasets are local files, and Hugging Face's caches live under the
run directory (``HF_HOME``), so a run neither reads nor fills ``~/.cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic_core import to_jsonable_python

from proctor._files import ensure_directory
from proctor._loop import run as run_loop
from proctor.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLE_ERRORS,
    IncomparableRunError,
    InputError,
    SpecError,
)
from proctor.evals.ledger import Ledger
from proctor.evals.progress import Progress
from proctor.evals.reports import atomic_write
from proctor.evals.runner import (
    RunDirectory,
    RunOptions,
    RunResult,
    _attach_run_log,
    exit_at_once,
)
from proctor.evals.spec import _redact
from proctor.harness.bridge import PhaseCounts, RequestBridge, RunInterrupted
from proctor.harness.spec import LmEvalSpec
from proctor.profiling.events import EventLog

log = logging.getLogger("proctor.run")

INSTALL_HINT = "pip install 'proctor[lm-eval]'"
RESULTS_DIR = "lm_eval"
"""lm-eval's own outputs (results JSON, per-task samples) go here, in its ``--output_path`` layout."""


def require_lm_eval() -> None:
    """lm-eval is an optional extra: without it, say how to install it (exit 2)."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise InputError(f"lm-eval is not installed; install it with: {INSTALL_HINT}") from None


def run_lm_eval(spec: LmEvalSpec, *, spec_dir: Path, options: RunOptions, console: Any = None) -> RunResult:
    require_lm_eval()
    include_path = _include_path(spec, spec_dir)
    run_dir = options.out
    ensure_directory(run_dir, what="run directory (--out)")
    # Before lm-eval (and with it `datasets`) is imported: both read these once.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(run_dir / "hf")
    ledger = _open_ledger(spec, include_path, run_dir, force_new=options.force_new)
    try:
        data = spec.model_dump(mode="python", exclude_unset=True)
        if include_path is not None:
            data["lm_eval"]["include_path"] = str(include_path)
        atomic_write(run_dir / "spec.yaml", yaml.safe_dump(to_jsonable_python(_redact(data)), sort_keys=False))
        handler = _attach_run_log(run_dir / "run.log")
        try:
            log.info(
                "run %s: lm-eval tasks %s, model %s, concurrency %d",
                spec.name,
                ", ".join(spec.lm_eval.tasks),
                spec.models["subject"].model,
                spec.concurrency,
            )
            recovered = ledger.recover_interrupted()
            if recovered:
                log.info("%d request(s) were in flight when the last run stopped; sending them again", recovered)
            task_manager = _task_manager(spec.lm_eval.tasks, include_path)
            started = time.monotonic()
            results, bridge = run_loop(_main(spec, spec_dir, options, ledger, task_manager, console))
            return _finish(spec, run_dir, ledger, results, bridge, time.monotonic() - started)
        finally:
            logging.getLogger("proctor").removeHandler(handler)
            handler.close()
    finally:
        ledger.close()


def _include_path(spec: LmEvalSpec, spec_dir: Path) -> Path | None:
    if spec.lm_eval.include_path is None:
        return None
    path = (spec_dir / spec.lm_eval.include_path).resolve()
    if not path.is_dir():
        raise SpecError(
            f"lm_eval.include_path: {path} is not a directory",
            hint="give a directory of task YAML files, relative to the spec",
        )
    return path


def _open_ledger(spec: LmEvalSpec, include_path: Path | None, run_dir: Path, *, force_new: bool) -> Ledger:
    """A run resumes only with the same model and lm-eval settings (its answers are that model's)."""
    fingerprint = spec.fingerprint(None if include_path is None else str(include_path))
    ledger = Ledger(run_dir / "ledger.sqlite")
    stored = ledger.get_meta("fingerprint")
    old = json.loads(stored) if stored is not None else {}
    changed = [k for k in fingerprint if old.get(k, fingerprint[k]) != fingerprint[k]] or (
        ["kind"] if stored is not None and "lm_eval" not in old else []
    )
    if changed:
        ledger.close()
        if not force_new:
            raise IncomparableRunError(
                f"{run_dir} holds a run that cannot be mixed with this one: its {', '.join(changed)} differ(s)",
                hint="use another --out directory, or --force-new to set the old run aside and start afresh",
            )
        RunDirectory(run_dir)._set_aside()
        ledger = Ledger(run_dir / "ledger.sqlite")
    ledger.set_meta("fingerprint", json.dumps(fingerprint))
    ledger.set_meta("name", spec.name)
    return ledger


def _task_manager(tasks: list[str], include_path: Path | None) -> Any:
    """lm-eval's built-in zoo (thousands of YAML files, seconds to index) only when needed."""
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in manager.all_tasks for t in tasks):
            return manager
        log.info("task(s) not in %s; indexing lm-eval's built-in tasks", include_path)
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"{include_path} nor " if include_path else ""
        raise SpecError(
            f"lm_eval.tasks: unknown task(s) {', '.join(unknown)}: in neither {where}lm-eval's own tasks",
            hint="check the names, or set lm_eval.include_path to the directory of your task YAML files",
        )
    return manager


async def _main(
    spec: LmEvalSpec, spec_dir: Path, options: RunOptions, ledger: Ledger, task_manager: Any, console: Any
) -> tuple[dict[str, Any] | None, RequestBridge]:
    from proctor.harness.lm import ProctorLM
    from proctor.models.router import ModelRouter

    events = EventLog(options.out / "events.jsonl")
    ledger.start_writer()
    router = ModelRouter(spec.models, on_event=events.write, base_dir=spec_dir)
    display = _PhaseDisplay(options.progress, console)
    try:
        await router.start()
        bridge = RequestBridge(
            ledger,
            router.role("subject"),
            concurrency=spec.concurrency,
            retry_errors=options.retry_errors,
            on_phase=display.update,
        )
        lm = ProctorLM(
            bridge,
            asyncio.get_running_loop(),
            chat=spec.lm_eval.apply_chat_template,
            gen_kwargs=spec.lm_eval.gen_kwargs,
            model_name=spec.models["subject"].model,
        )
        ticker = asyncio.create_task(display.tick(bridge, events))
        loop = asyncio.get_running_loop()
        _install_signals(loop, bridge, ledger, events, options.out)
        try:
            results = await asyncio.to_thread(_evaluate, lm, spec, task_manager)
        except RunInterrupted:
            results = None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            display.close()
        return results, bridge
    finally:
        await router.aclose()
        events.close()
        ledger.flush()


def _install_signals(
    loop: asyncio.AbstractEventLoop, bridge: RequestBridge, ledger: Ledger, events: EventLog, run_dir: Path
) -> None:
    """First SIGINT/SIGTERM: send no new request, let those in flight finish (exit 130). Second:
    commit what the ledger holds (at most 2 s) and exit at once."""

    def on_signal(name: str) -> None:
        if not bridge.stopped:
            bridge.stopped = True
            log.warning("%s received: finishing the requests in flight (again to exit at once)", name)
            return
        exit_at_once(events, ledger, run_dir)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)


def _evaluate(lm: Any, spec: LmEvalSpec, task_manager: Any) -> dict[str, Any] | None:
    """lm-eval's own evaluation (in the worker thread), with proctor's ``LM``."""
    import lm_eval

    cfg = spec.lm_eval
    seed = cfg.seed
    return lm_eval.simple_evaluate(  # type: ignore[no-any-return]
        model=lm,
        tasks=list(cfg.tasks),
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        apply_chat_template=cfg.apply_chat_template,
        task_manager=task_manager,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


class _PhaseDisplay:
    """One progress bar per phase (lm-eval request type): exact requests done / total, and ETA."""

    def __init__(self, mode: str, console: Any) -> None:
        self.mode = mode
        self.console = console
        self.progress: Progress | None = None
        self.phase = ""

    def update(self, counts: PhaseCounts, final: bool = False) -> None:
        if counts.phase != self.phase:
            self.close()
            self.phase = counts.phase
            self.progress = Progress(
                total=counts.total,
                done=counts.done,
                errors=counts.errors,
                mode=self.mode,
                console=self.console,
                label=f"{counts.phase} requests",
            ).__enter__()
        if self.progress is not None:
            self.progress.update(counts.done, counts.errors, None, final=final)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.__exit__(None, None, None)
            self.progress = None

    async def tick(self, bridge: RequestBridge, events: EventLog) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.update(bridge.counts, False)
            try:
                events.flush()
            except OSError as exc:
                log.warning("could not write events.jsonl (%s); will try again", exc)


def _finish(
    spec: LmEvalSpec, run_dir: Path, ledger: Ledger, results: dict[str, Any] | None, bridge: RequestBridge, wall: float
) -> RunResult:
    states = ledger.states()
    stats: dict[str, Any] = {
        "name": spec.name,
        "kind": "lm_eval",
        "model": spec.models["subject"].model,
        "final": True,
        "tasks": list(spec.lm_eval.tasks),
        "requests": {
            "total": len(states),
            "answered": sum(1 for s, _ in states.values() if s == "scored"),
            "failed": len(bridge.failures),
            "sent_this_session": bridge.sent,
        },
        "wall_time_s": round(wall, 3),
    }
    if bridge.stopped and results is None:
        stats.update(status="interrupted", metrics=None, final=False)
        atomic_write(run_dir / "eval_stats.json", json.dumps(stats, indent=2))
        return RunResult(EXIT_INTERRUPTED, stats, interrupted=True)
    if bridge.failures or results is None:
        # Never a metric computed over placeholder answers: the run is incomplete.
        stats["status"] = "incomplete"
        stats["metrics"] = None
        stats["failures"] = [
            {"request": f.label, "type": f.kind, "error_class": f.error_class, "message": f.message}
            for f in bridge.failures
        ]
        atomic_write(run_dir / "eval_stats.json", json.dumps(stats, indent=2))
        return RunResult(EXIT_SAMPLE_ERRORS, stats, message=_failure_lines(bridge))
    stats["status"] = "complete"
    stats["metrics"] = metric_blocks(results)
    stats["results_path"] = str(_save_lm_eval_outputs(run_dir / RESULTS_DIR, results, spec))
    atomic_write(run_dir / "eval_stats.json", json.dumps(stats, indent=2))
    return RunResult(EXIT_OK, stats)


def _failure_lines(bridge: RequestBridge) -> str:
    lines = [f"{len(bridge.failures)} request(s) failed; metrics withheld:"]
    for f in bridge.failures[:20]:
        lines.append(f"  {f.label} ({f.kind}): {f.error_class}: {f.message.splitlines()[0] if f.message else ''}")
    if len(bridge.failures) > 20:
        lines.append(f"  ... and {len(bridge.failures) - 20} more (eval_stats.json lists them all)")
    return "\n".join(lines)


def metric_blocks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's ``results`` as one block per task and metric (``metric,filter`` keys split)."""
    blocks = []
    n_samples = results.get("n-samples") or {}
    for task, values in (results.get("results") or {}).items():
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or not isinstance(value, int | float):
                continue
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            blocks.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_name or None,
                    "value": value,
                    "stderr": stderr if isinstance(stderr, int | float) else None,
                    "n": (n_samples.get(task) or {}).get("effective"),
                }
            )
    return blocks


def _save_lm_eval_outputs(out: Path, results: dict[str, Any], spec: LmEvalSpec) -> Path:
    """lm-eval's own files, written by its own tracker: ``results_*.json`` and ``samples_TASK_*.jsonl``."""
    from lm_eval.loggers import EvaluationTracker

    results = dict(results)
    samples = results.pop("samples", None) or {}
    tracker = EvaluationTracker(output_path=str(out))
    tracker.general_config_tracker.model_name_sanitized = spec.models["subject"].model.replace("/", "__")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results.get("configs") or {}:
        if task in samples:
            tracker.save_results_samples(task_name=task, samples=samples[task])
    found = sorted(out.rglob("results_*.json"))
    return found[-1] if found else out
