"""The driver's replay of an actor's steps onto the real ledger (no cluster needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proctor.evals.ledger import Ledger
from proctor.evals.runner import RunOptions
from proctor.evals.spec import parse_spec
from proctor.evals.types import Sample, Score, SolveResult
from proctor.executors.ray_actor import BatchReply, ItemResult
from proctor.executors.ray_runner import RayRunner, plan_lanes


def runner(tmp_path: Path) -> RayRunner:
    spec = parse_spec(
        {
            "name": "t",
            "dataset": {"path": "data.jsonl", "fields": {"id": "id", "input": "q", "target": "a"}},
            "solver": "generate",
            "scorer": "numeric",
            "models": {"subject": {"base_url": "http://127.0.0.1:9/v1", "model": "fake"}},
        },
        source="test",
    )
    return RayRunner(spec, spec_dir=tmp_path, options=RunOptions(out=tmp_path))


def test_a_second_result_for_a_sample_is_never_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_samples([Sample(id="a", input="1+1?", target="2"), Sample(id="b", input="2+2?", target="4")])
    ledger.start_writer()
    r = runner(tmp_path)
    done = ("record_done", ("a", SolveResult(output="2"), 0.1, Score(value=1.0, answer="2"), "numeric"))
    late = ("record_done", ("a", SolveResult(output="5"), 0.1, Score(value=0.0, answer="5"), "numeric"))
    error = ("record_error", ("b", "connection", "refused", None, 0.1))
    with caplog.at_level(logging.WARNING, logger="proctor.ray"):
        assert r._replay(BatchReply([ItemResult("a", [done]), ItemResult("b", [error])]), ledger)
        assert r._replay(BatchReply([ItemResult("a", [late])]), ledger)
    ledger.flush()
    rows = {row.id: row for row in ledger.rows()}
    ledger.close()
    assert rows["a"].state == "scored" and rows["a"].output == "2" and rows["a"].score == 1.0
    assert rows["b"].state == "error" and rows["b"].error_class == "connection"
    assert (r.counters.done, r.counters.scored, r.counters.errors) == (2, 1, 1)
    assert "a second result for sample a was ignored" in caplog.text


def test_an_abort_stops_the_run(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    r = runner(tmp_path)
    assert not r._replay(BatchReply([ItemResult("a", [], abort="401: bad key")]), ledger)
    ledger.close()
    assert r._stop_dispatch.is_set() and "bad key" in str(r._abort)


def test_lanes_split_the_concurrency_between_actors() -> None:
    lanes = plan_lanes(concurrency=32, workers=2)
    assert sum(batch for _, batch in lanes) == 32
    assert {i for i, _ in lanes} == {0, 1} and all(batch <= 8 for _, batch in lanes)
    assert plan_lanes(concurrency=3, workers=2) == [(0, 1), (0, 1), (1, 1)]
    assert plan_lanes(concurrency=1, workers=4) == [(0, 1)]
