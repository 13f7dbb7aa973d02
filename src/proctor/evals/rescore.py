"""Re-scoring a run from its ledger: new scorer or new judge, never a call to the subject model."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from proctor._loop import run as run_loop
from proctor.errors import InputError, ProctorError
from proctor.evals.ledger import Ledger
from proctor.evals.registry import build_scorer
from proctor.evals.reports import write_reports
from proctor.evals.spec import ComponentConfig, apply_model_override, load_spec
from proctor.evals.types import Sample, SolveContext, SolveResult
from proctor.profiling.events import EventLog

log = logging.getLogger("proctor.rescore")


def rescore_run(
    run_dir: Path, *, scorer: str | None = None, judge: str | None = None, concurrency: int | None = None
) -> dict[str, Any]:
    spec_path = run_dir / "spec.yaml"
    ledger_path = run_dir / "ledger.sqlite"
    if not spec_path.exists() or not ledger_path.exists():
        raise InputError(f"{run_dir} is not a run directory (no spec.yaml / ledger.sqlite in it)")
    spec = load_spec(spec_path)
    if scorer:
        spec = spec.model_copy(update={"scorer": ComponentConfig(type=scorer)})
    if judge:
        spec = apply_model_override(spec, f"judge={judge}")
    score_fn = build_scorer(spec.scorer)
    ledger = Ledger(ledger_path)
    started = time.monotonic()
    try:
        # Only finished generations are answers. A failed attempt's partial trajectory (no output)
        # is an infrastructure error, never graded as a wrong answer.
        rows = [r for r in ledger.rows() if r.output is not None]
        if not rows:
            raise InputError(f"{run_dir} has no generated samples to score yet")
        events = EventLog(run_dir / "events.jsonl")
        ledger.start_writer()
        try:
            run_loop(_score_all(rows, ledger, score_fn, spec, run_dir, events, concurrency or spec.concurrency))
        finally:
            events.close()
            ledger.flush()
        ledger.set_meta("rescored", json.dumps({"scorer": spec.scorer.type, "judge": judge, "at": time.time()}))
        return write_reports(
            ledger,
            run_dir,
            name=spec.name,
            model=spec.models["subject"].model,
            wall_time=time.monotonic() - started,
            final=True,
        )
    finally:
        ledger.close()


async def _score_all(
    rows: list[Any], ledger: Ledger, score_fn: Any, spec: Any, run_dir: Path, events: EventLog, concurrency: int
) -> None:
    router = None
    if getattr(score_fn, "needs_models", False):
        from proctor.models.router import ModelRouter

        # The subject is not needed (and may be gone): only the other roles are started.
        roles = {k: v for k, v in spec.models.items() if k != "subject"}
        router = ModelRouter(roles, on_event=events.write, base_dir=run_dir)
        await router.start()
    ctx = SolveContext(models=router, emit=events.write, run_dir=run_dir)  # type: ignore[arg-type]
    sem = asyncio.Semaphore(concurrency)

    async def one(row: Any) -> None:
        sample = Sample(id=row.id, input=row.input, target=row.target, category=row.category, choices=row.choices)
        result = SolveResult(output=row.output or "", messages=row.messages or [], outcome=row.outcome)
        async with sem:
            try:
                score = await score_fn(sample, result, ctx)
            except ProctorError as exc:
                ledger.record_error(row.id, getattr(exc, "error_class", None) or "scoring_error", str(exc))
                return
        ledger.record_score(row.id, score, spec.scorer.type)

    try:
        await asyncio.gather(*(one(r) for r in rows))
    finally:
        if router is not None:
            await router.aclose()
