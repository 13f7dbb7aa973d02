"""Slots, queue order, queue full, quotas: over real HTTP with real child processes."""

from __future__ import annotations

import time
from pathlib import Path

from server_helpers import script_job, wait_state


def test_two_slots_then_fifo(make_server, tmp_path: Path) -> None:
    srv = make_server(slots=2)
    alice = srv.client("alice")
    gates = [tmp_path / "gates" / f"gate{i}" for i in range(4)]
    ids = []
    for gate in gates:
        r = alice.post("/v1/jobs", json=script_job("gate", str(gate)))
        assert r.status_code == 201, r.text
        ids.append(r.json()["job"]["id"])
    wait_state(alice, ids[0], {"running"})
    wait_state(alice, ids[1], {"running"})
    info = alice.get("/v1/server").json()
    assert info["status"] == "busy" and info["running"] == 2 and info["queue_length"] == 2
    assert [alice.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids[2:]] == [1, 2]

    gates[1].touch()  # the second job ends first: the freed slot goes to the oldest queued job
    wait_state(alice, ids[1], {"succeeded"})
    wait_state(alice, ids[2], {"running"})
    assert alice.get(f"/v1/jobs/{ids[3]}").json()["state"] == "queued"
    for gate in gates:
        gate.touch()
    jobs = [wait_state(alice, i, {"succeeded"}) for i in ids]
    assert jobs[2]["started_at"] < jobs[3]["started_at"]
    assert alice.get("/v1/server").json()["status"] == "idle"


def test_queue_full_is_503_with_retry_after(make_server, tmp_path: Path) -> None:
    srv = make_server(slots=1, queue_max=1, retry_after_default=42)
    alice = srv.client("alice")
    gate = tmp_path / "gates" / "gate"
    first = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    wait_state(alice, first, {"running"})
    assert alice.post("/v1/jobs", json=script_job("gate", str(gate))).status_code == 201
    r = alice.post("/v1/jobs", json=script_job("gate", str(gate)))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "42"
    assert r.json() == {
        "ok": False,
        "error": "the queue is full (1 jobs); try again in 42 s",
        "status": 503,
        "retry_after": 42,
    }
    gate.touch()


def test_quota_429_says_when(make_server) -> None:
    srv = make_server(rate_limit="2/1h")
    alice, root = srv.client("alice"), srv.client("root")
    before = time.time()
    for _ in range(2):
        assert alice.post("/v1/jobs", json=script_job("exit", "0")).status_code == 201
    r = alice.post("/v1/jobs", json=script_job("exit", "0"))
    waited = time.time() - before  # what the hour's window has already run, however slow the host
    assert r.status_code == 429
    retry = int(r.headers["retry-after"])
    assert 3600 - waited - 1 <= retry <= 3600
    body = r.json()
    assert body["retry_after"] == retry and body["status"] == 429
    assert "come back at" in body["error"] and f"in {retry} s" in body["error"]
    # quotas are per user, and admins are exempt
    assert srv.client("bob").post("/v1/jobs", json=script_job("exit", "0")).status_code == 201
    assert root.post("/v1/jobs", json=script_job("exit", "0")).status_code == 201
    assert time.time() - before < 3600


def test_exit_codes_map_to_states(make_server) -> None:
    srv = make_server(slots=2)
    alice = srv.client("alice")
    ok = alice.post("/v1/jobs", json=script_job("exit", "0")).json()["job"]["id"]
    bad = alice.post("/v1/jobs", json=script_job("exit", "3")).json()["job"]["id"]
    assert wait_state(alice, ok, {"succeeded", "failed"})["state"] == "succeeded"
    job = wait_state(alice, bad, {"succeeded", "failed"})
    assert job["state"] == "failed" and job["exit_code"] == 3
    metrics = srv.client(None).get("/metrics").text
    assert 'proctor_job_outcomes_total{state="succeeded"} 1' in metrics
    assert 'proctor_job_outcomes_total{state="failed"} 1' in metrics
    assert "proctor_queue_length 0" in metrics
    assert 'proctor_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 2' in metrics


def test_job_ids_are_safe_on_a_command_line() -> None:
    """An id starting with '-' would be read as an option by every CLI command that takes it."""
    import re

    from proctor.server.scheduler import new_job_id

    ids = {new_job_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[a-z2-7]{26}", job_id) for job_id in ids)
