"""The stop-request columns on a job store made before fleet-wide stops (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pg_kit
from sqlalchemy import text

from proctor.server.store import JobRow, JobStore


def test_a_store_from_before_fleet_wide_stops_gains_the_stop_request_columns(tmp_path: Path) -> None:
    url = pg_kit.store_url_for(tmp_path / "data") or f"sqlite:///{tmp_path / 'proctor.sqlite'}"
    store = JobStore(url)
    store.insert_job(
        JobRow(id="old-job", owner="alice", kind="command", state="running", priority=1, seq=0, created_at=1)
    )
    with store.engine.begin() as conn:  # what the release before fleet-wide stops created
        for column in ("stop_requested_at", "stop_requested_by"):
            conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
    store.close()

    store = JobStore(url)
    try:
        old = store.get("old-job")
        assert (old.stop_requested_at, old.stop_requested_by) == (None, None)
        assert store.transition("old-job", {"running"}, stop_requested_at=5.0, stop_requested_by="bob")
        assert (store.get("old-job").stop_requested_at, store.get("old-job").stop_requested_by) == (5.0, "bob")
    finally:
        store.close()
