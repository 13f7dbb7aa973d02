"""A server stopped while a job runs re-queues it ahead of newer jobs when it comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import script_job, start_server, wait_state


def test_running_job_requeued_first(tmp_path: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gates" / "gate"
    srv = start_server(data)
    try:
        alice = srv.client("alice")
        tokens = srv.tokens
        first = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
        wait_state(alice, first, {"running"})
        second = alice.post("/v1/jobs", json=script_job("exit", "0")).json()["job"]["id"]
    finally:
        srv.stop()  # stops the job but keeps it "running" in the store
    srv = start_server(data)
    try:
        srv.tokens = tokens
        alice = srv.client("alice")
        job = wait_state(alice, first, {"running"})
        assert job["attempts"] == 2
        assert alice.get(f"/v1/jobs/{second}").json()["state"] == "queued"
        gate.touch()
        a, b = wait_state(alice, first, {"succeeded"}), wait_state(alice, second, {"succeeded"})
        assert a["started_at"] < b["started_at"]
    finally:
        srv.stop()


@pytest.mark.store("sqlite")  # it makes its SQLite store itself
def test_a_store_from_an_older_release_gains_the_new_columns(tmp_path: Path) -> None:
    """A data directory made before ``tunnel_digest`` existed opens, keeps its jobs, and can
    store the new column."""
    import sqlite3

    from proctor.server.store import JobRow, JobStore

    path = tmp_path / "proctor.sqlite"
    store = JobStore(f"sqlite:///{path}")
    store.insert_job(
        JobRow(id="old-job", owner="alice", kind="proctor", state="queued", priority=1, seq=0, created_at=1.0)
    )
    store.close()
    with sqlite3.connect(path) as db:  # what the previous release created
        db.execute("ALTER TABLE jobs DROP COLUMN tunnel_digest")
        assert "tunnel_digest" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}

    store = JobStore(f"sqlite:///{path}")
    try:
        assert store.get("old-job").tunnel_digest is None
        store.update("old-job", tunnel_digest="ab" * 32)
        assert store.get("old-job").tunnel_digest == "ab" * 32
    finally:
        store.close()
