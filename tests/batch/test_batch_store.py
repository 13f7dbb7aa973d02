"""The job store's batch column on a store made before batches existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from proctor.server.store import JobRow, JobStore


def test_a_store_from_before_batches_gains_the_batch_column_and_its_index(tmp_path: Path) -> None:
    path = tmp_path / "proctor.sqlite"
    store = JobStore(f"sqlite:///{path}")
    store.insert_job(
        JobRow(id="old-job", owner="alice", kind="proctor", state="queued", priority=1, seq=0, created_at=1)
    )
    store.close()
    with sqlite3.connect(path) as db:  # what the release before batches created
        db.execute("DROP INDEX ix_jobs_batch_id")
        for column in ("batch_id", "spec_name", "model_name"):
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")

    store = JobStore(f"sqlite:///{path}")
    try:
        assert store.get("old-job").batch_id is None
        store.insert_job(
            JobRow(
                id="new-job",
                owner="alice",
                kind="proctor",
                state="queued",
                priority=1,
                seq=0,
                created_at=2,
                batch_id="bbatch0001",
                spec_name="arith",
                model_name="qwen",
            )
        )
        assert [j.id for j in store.list_jobs(batch="bbatch0001")] == ["new-job"]
        assert [j.id for j in store.list_jobs(owner="alice")] == ["old-job", "new-job"]
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert "ix_jobs_batch_id" in {row[1] for row in db.execute("PRAGMA index_list(jobs)")}
