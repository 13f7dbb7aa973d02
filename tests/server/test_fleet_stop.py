"""Stopping a job through any server of a fleet, whichever server runs it (or ran it and died).

Real ``proctor serve`` processes on one throwaway PostgreSQL store and one data directory (the
``Fleet`` of ``test_fleet_takeover.py``, lease 3 s), running the stand-in gate job, which waits up
to 60 s for a file that these tests never create: only a stop ends it sooner.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pg_kit
import psutil
import pytest
from helpers import start_server
from test_engine_e2e import _dead
from test_fleet_takeover import Fleet, _job, _job_processes, _script, _wait

pytestmark = [pytest.mark.store("postgres"), pytest.mark.slow]


def _running_gate_job(fleet: Fleet, tmp_path: Path) -> tuple[str, int, list[psutil.Process]]:
    """A gate job running on one of the fleet's servers: (job id, index of its server, its processes)."""
    with fleet.client(0) as client:
        r = client.post("/v1/jobs", json=_script("gate", str(tmp_path / "gates" / "never")))
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]
        _wait(client, job_id, lambda j: j["state"] == "running", "running")
    with pg_kit.connect(fleet.data) as conn:
        for _ in range(1500):  # bounded: the pid is stored just after the claim
            (pid,) = conn.execute("SELECT pid FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if pid is not None:
                break
            time.sleep(0.02)
    assert pid is not None, "the job's process was never recorded"
    owner = fleet.owner_pid(job_id)
    assert owner is not None
    processes = _job_processes(fleet.data / "jobs" / job_id)
    assert psutil.pid_exists(pid) and processes, "the job's process should be running"
    return job_id, next(i for i, p in enumerate(fleet.procs) if p.pid == owner), [psutil.Process(pid), *processes]


def _all_gone(processes: list[psutil.Process]) -> None:
    for _ in range(1500):  # bounded (~30 s): a stopped job's processes are reaped just after its end is recorded
        if all(_dead(p) for p in processes):
            return
        time.sleep(0.02)
    raise AssertionError(f"the job's processes are still running: {processes}")


def _row(fleet: Fleet, job_id: str) -> dict[str, Any]:
    with pg_kit.connect(fleet.data) as conn:
        cur = conn.execute("SELECT state, attempts, instance, note FROM jobs WHERE id = %s", (job_id,))
        names = [c.name for c in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def _die_after_a_stop_request(fleet: Fleet, owner: int, job_id: str) -> None:
    """Freeze the job's server (it renews nothing, reads no stop request), record a stop request
    for the job as another server would, then kill the frozen server: it never saw the request."""
    server = fleet.procs[owner]
    server.send_signal(signal.SIGSTOP)
    with pg_kit.connect(fleet.data) as conn:
        conn.execute(
            "UPDATE jobs SET stop_requested_at = %s, stop_requested_by = %s WHERE id = %s",
            (time.time(), "alice through server instance elsewhere/1/0.00/abcdef", job_id),
        )
    fleet.sigkill(server.pid)


def _cancelled_not_rerun(client: Any, job_id: str, processes: list[psutil.Process]) -> None:
    """The dead server's job ends ``cancelled`` on its first attempt, its processes gone."""
    final = _wait(client, job_id, lambda j: j["state"] != "running" or j["attempts"] > 1, "taken over", limit=3000)
    assert final["state"] == "cancelled", final
    assert final["attempts"] == 1, final
    assert "alice through server instance elsewhere" in final["note"], final
    _all_gone(processes)


def test_a_cancel_through_a_server_that_does_not_run_the_job_stops_it_where_it_runs(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        fleet.start()
        job_id, owner, processes = _running_gate_job(fleet, tmp_path)
        other = 1 - owner
        with fleet.client(other) as client:
            # a running job is not deleted, whichever server is asked: it must be cancelled first
            r = client.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 409, r.text
            assert f"proctor cancel {job_id}" in r.text
            assert not any(_dead(p) for p in processes)

            r = client.post(f"/v1/jobs/{job_id}/cancel")
            assert r.status_code == 200, r.text
            answer = r.json()
        # the answer of the server that does not run the job already shows it stopped
        assert answer["state"] == "cancelled", answer
        assert "through server instance" in answer["note"], answer
        _all_gone(processes)
        with fleet.client(owner) as client:
            assert _job(client, job_id)["state"] == "cancelled"
        row = _row(fleet, job_id)
        assert row["state"] == "cancelled" and row["attempts"] == 1, row
        with fleet.client(other) as client:
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # already cancelled
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        with fleet.client(owner) as client:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    finally:
        fleet.stop()


def test_a_cancel_through_a_survivor_stops_a_job_whose_server_died(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        fleet.start()
        job_id, owner, processes = _running_gate_job(fleet, tmp_path)
        fleet.sigkill(fleet.procs[owner].pid)
        assert not any(_dead(p) for p in processes), "the job outlives its server (own session)"
        with fleet.client(1 - owner) as client:
            r = client.post(f"/v1/jobs/{job_id}/cancel")
            assert r.status_code == 200, r.text
            answer = r.json()
        assert answer["state"] == "cancelled", answer
        assert answer["attempts"] == 1, "a cancelled job is not run again"
        _all_gone(processes)
        assert _row(fleet, job_id)["state"] == "cancelled"
    finally:
        fleet.stop()


def test_a_job_whose_stop_was_requested_is_cancelled_not_restarted_when_its_server_dies(tmp_path: Path) -> None:
    """The stop request is in the store, but its server died before it saw it: the takeover ends the job."""
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        fleet.start()
        job_id, owner, processes = _running_gate_job(fleet, tmp_path)
        _die_after_a_stop_request(fleet, owner, job_id)
        with fleet.client(1 - owner) as client:
            _cancelled_not_rerun(client, job_id, processes)
    finally:
        fleet.stop()


def test_a_server_restarted_after_its_predecessor_died_with_a_stop_request_cancels_the_job(tmp_path: Path) -> None:
    """The same case when the only server dies and a new one starts on its host (``recover``)."""
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        job_id, owner, processes = _running_gate_job(fleet, tmp_path)
        _die_after_a_stop_request(fleet, owner, job_id)
        with fleet.client(fleet.start()) as client:
            _cancelled_not_rerun(client, job_id, processes)
    finally:
        fleet.stop()


def test_a_stop_request_outlives_the_wait_and_a_frozen_server_acts_on_it_once_it_thaws(tmp_path: Path) -> None:
    """The server running the job is frozen (SIGSTOP) but its lease, 60 s here, has not lapsed:
    the cancel answers with the job still running and says so; the job stops once that server runs."""
    fleet = Fleet(tmp_path)
    try:
        for _ in range(2):
            proc, url = start_server(fleet.data, fleet.log, "--config", str(fleet.config), "--lease-seconds", "60")
            fleet.procs.append(proc)
            fleet.urls.append(url)
        job_id, owner, processes = _running_gate_job(fleet, tmp_path)
        server = fleet.procs[owner]
        server.send_signal(signal.SIGSTOP)
        try:
            with fleet.client(1 - owner) as client:
                r = client.post(f"/v1/jobs/{job_id}/cancel")
                assert r.status_code == 200, r.text
                answer = r.json()
            assert answer["state"] == "running", answer
            assert answer["note"].startswith("stop requested by alice through server instance"), answer
            assert not any(_dead(p) for p in processes), "only the server running the job stops it"
        finally:
            server.send_signal(signal.SIGCONT)
        with fleet.client(1 - owner) as client:
            final = _wait(client, job_id, lambda j: j["state"] != "running", "stopped")
        assert final["state"] == "cancelled" and final["attempts"] == 1, final
        assert final["note"].startswith("cancelled by alice through server instance"), final
        _all_gone(processes)
    finally:
        fleet.stop()
