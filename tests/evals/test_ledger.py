from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from proctor.evals.ledger import Ledger
from proctor.evals.types import Sample, Score, SolveResult


def samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", input=f"q{i}", target=str(i), category="c") for i in range(n)]


def test_states_move_and_are_durable_after_flush(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add_samples(samples(3))
    ledger.start_writer()
    ledger.mark_running("s0", 1.0)
    ledger.record_generation("s0", SolveResult(output="0", messages=[{"role": "user", "content": "q0"}]), 0.1)
    ledger.record_score("s0", Score(value=1.0, answer="0"), "exact")
    ledger.mark_running("s1", 1.0)
    ledger.record_error("s1", "timeout", "took too long")
    ledger.mark_running("s2", 1.0)
    assert ledger.flush(timeout=10)
    # A second connection (another process would see the same) reads what was committed.
    other = sqlite3.connect(path)
    states = dict(other.execute("SELECT id, state FROM samples"))
    assert states == {"s0": "scored", "s1": "error", "s2": "running"}
    assert other.execute("SELECT output FROM generations WHERE id='s0'").fetchone() == ("0",)
    assert other.execute("SELECT value FROM scores WHERE id='s0'").fetchone() == (1.0,)
    other.close()
    ledger.close()


def test_interrupted_samples_become_pending_and_dispatches_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add_samples(samples(2))
    ledger.start_writer()
    ledger.mark_running("s0", 1.0)
    ledger.flush()
    ledger.close()
    reopened = Ledger(path)
    assert reopened.recover_interrupted() == 1
    assert reopened.states()["s0"] == ("pending", None)
    rows = {r.id: r for r in reopened.rows()}
    assert rows["s0"].dispatches == 1 and rows["s1"].dispatches == 0
    reopened.close()


def test_add_samples_is_idempotent_and_keeps_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_samples(samples(3))
    ledger.add_samples(samples(5)[3:], start_index=3)
    ledger.add_samples(samples(5))
    assert [r.id for r in ledger.rows()] == [f"s{i}" for i in range(5)]
    ledger.close()


def test_generation_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add_samples(samples(1))
    ledger.start_writer()
    result = SolveResult(
        output="x",
        messages=[{"role": "assistant", "content": "x"}],
        tokens_in=3,
        tokens_out=1,
        model_calls=1,
        outcome="truncated",
        extra={"turns": 1},
    )
    ledger.record_generation("s0", result, 0.5)
    ledger.flush()
    assert ledger.generation("s0") == result
    assert ledger.generation("missing") is None
    ledger.close()


def test_durable_returns_once_everything_recorded_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add_samples(samples(40))
    ledger.start_writer()
    other = sqlite3.connect(path, check_same_thread=False)

    async def worker(i: int) -> int:
        ledger.mark_running(f"s{i}", 1.0)
        ledger.record_done(f"s{i}", SolveResult(output=str(i)), 0.1, Score(value=1.0, answer=str(i)), "exact")
        await ledger.durable()
        # Another connection (another process would see the same) already reads it as finished.
        row = other.execute("SELECT count(*) FROM samples WHERE id=? AND state='scored'", (f"s{i}",)).fetchone()
        return int(row[0])

    async def main() -> list[int]:
        return list(await asyncio.gather(*(worker(i) for i in range(40))))

    try:
        assert asyncio.run(main()) == [1] * 40
    finally:
        other.close()
        ledger.close()
