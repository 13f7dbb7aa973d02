"""Fencing: a server that no longer owns a job it runs stops that job, and never records its end."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pg_kit
import psutil
import pytest
from server_helpers import script_job, wait_state
from test_engine_e2e import _dead

pytestmark = pytest.mark.store("postgres")


ELSEWHERE = "elsewhere/1/0.00/abcdef"


def _run_then_lose(srv: Any, tmp_path: Path) -> tuple[str, psutil.Process]:
    """Start a gated job on ``srv``, then make the store say another server took it over."""
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("gate", str(tmp_path / "gates" / "open"))).json()["job"]["id"]
    wait_state(alice, job_id, {"running"})
    proc = _spawned(tmp_path, job_id)
    with pg_kit.connect(tmp_path / "data") as conn:
        conn.execute(
            "UPDATE jobs SET instance = %s, lease_until = %s WHERE id = %s", (ELSEWHERE, time.time() + 3600, job_id)
        )
    return job_id, proc


def _spawned(tmp_path: Path, job_id: str) -> psutil.Process:
    """The job's process, once the store records it (just after the claim)."""
    with pg_kit.connect(tmp_path / "data") as conn:
        for _ in range(3000):  # bounded: 30 s
            (pid,) = conn.execute("SELECT pid FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if pid is not None:
                return psutil.Process(pid)
            time.sleep(0.01)
    raise AssertionError(f"job {job_id} never got a process")


def _stopped(proc: psutil.Process) -> None:
    # Well under the 60 s after which the gate job ends by itself: only fencing ends it sooner.
    for _ in range(1000):  # bounded: ~20 s
        if _dead(proc):
            return
        time.sleep(0.02)
    raise AssertionError("the job's process was not stopped")


def _slot_freed(srv: Any) -> None:
    for _ in range(3000):  # bounded: the slot is freed once the supervisor saw the process end
        if srv.client(None).get("/v1/server").json()["running"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the stopped job still holds its slot")


def _row(tmp_path: Path, job_id: str) -> tuple[Any, ...]:
    with pg_kit.connect(tmp_path / "data") as conn:
        return tuple(conn.execute("SELECT state, instance, exit_code FROM jobs WHERE id = %s", (job_id,)).fetchone())


def test_a_server_stops_a_job_another_server_took_over_and_leaves_its_row_alone(make_server, tmp_path: Path) -> None:
    srv = make_server(data_dir=tmp_path / "data", slots=1, lease_seconds=2)  # renewed every 0.5 s
    gate = tmp_path / "gates" / "open"
    try:
        job_id, proc = _run_then_lose(srv, tmp_path)
        _stopped(proc)
        _slot_freed(srv)
        assert _row(tmp_path, job_id) == ("running", ELSEWHERE, None)  # the new owner's row, untouched
    finally:
        gate.touch()


def test_a_job_that_ends_after_being_taken_over_does_not_record_its_end(make_server, tmp_path: Path) -> None:
    srv = make_server(data_dir=tmp_path / "data", slots=1, lease_seconds=600)  # no renewal during the test
    gate = tmp_path / "gates" / "open"
    try:
        job_id, proc = _run_then_lose(srv, tmp_path)
        gate.touch()  # the job ends by itself, before this server notices it lost the job
        _slot_freed(srv)
        assert _dead(proc)
        assert _row(tmp_path, job_id) == ("running", ELSEWHERE, None)  # not marked succeeded by the old owner
    finally:
        gate.touch()


def test_a_server_that_cannot_renew_its_leases_stops_its_jobs(make_server, tmp_path: Path) -> None:
    """The store unreachable for half a lease: another server may soon take the jobs, so they stop."""
    srv = make_server(data_dir=tmp_path / "data", slots=1, lease_seconds=2)
    alice = srv.client("alice")
    gate = tmp_path / "gates" / "open"
    job_id = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    name = pg_kit.database_name(tmp_path / "data")
    admin = pg_kit._admin(os.environ[pg_kit.ENV])
    try:
        wait_state(alice, job_id, {"running"})
        proc = _spawned(tmp_path, job_id)
        # the store goes away for this server: no new connections, the open ones cut
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        _stopped(proc)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
        gate.touch()
