"""A server stopped while a job runs re-queues it ahead of newer jobs when it comes back."""

from __future__ import annotations

from pathlib import Path

from server_helpers import script_job, start_server, wait_state


def test_running_job_requeued_first(tmp_path: Path) -> None:
    data, gate = tmp_path / "data", tmp_path / "gate"
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
