"""Cancel and timeout kill the job's whole sandbox; no process of the job remains.

The job writes its pids from inside its PID namespace, so the test reads the job's processes on
this side: the outer ``bwrap`` the server recorded, and every descendant of it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
from server_helpers import script_job, wait_state

from proctor.server.store import JobStore


def _read_pids(srv, client, job_id: str) -> tuple[int, list[psutil.Process]]:
    """The job's outer pid and all its processes, once its script wrote out/pids."""
    pidfile = srv.settings.jobs_dir / job_id / "out" / "pids"
    for _ in range(3000):
        if pidfile.exists() and pidfile.read_text().count(" ") == 1:
            store = JobStore(srv.settings.store_url)
            try:
                pid = store.get(job_id).pid
            finally:
                store.close()
            assert pid is not None
            return pid, [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running")
        time.sleep(0.01)
    raise AssertionError("the job never wrote its pids")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def test_cancel_kills_the_group(make_server, tmp_path: Path) -> None:
    srv = make_server()
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("family", "out/pids")).json()["job"]["id"]
    leader, procs = _read_pids(srv, alice, job_id)
    assert len(procs) >= 3  # bwrap, the namespace's init, the script (and its child)
    assert os.getpgid(leader) == leader  # the job runs in its own process group
    r = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert all(_gone(p.pid) for p in procs)
    assert _group_alive(leader) == []
    assert alice.get(f"/v1/jobs/{job_id}").json()["note"] == "cancelled by its owner"


def test_timeout_kills_the_group(make_server, tmp_path: Path) -> None:
    # The timeout must leave the job time to start (bubblewrap, two interpreters) and write its
    # pids, seconds on a loaded host; otherwise it ends before the test has seen its processes.
    srv = make_server(job_timeout=10, kill_grace=0.5)
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("family", "out/pids")).json()["job"]["id"]
    leader, procs = _read_pids(srv, alice, job_id)
    job = wait_state(alice, job_id, {"timed_out", "failed", "succeeded", "cancelled"})
    assert job["state"] == "timed_out" and "timed out" in job["note"]
    assert all(_gone(p.pid) for p in procs) and _group_alive(leader) == []


def test_cancel_queued_job(make_server, tmp_path: Path) -> None:
    srv = make_server()
    alice = srv.client("alice")
    first = alice.post("/v1/jobs", json=script_job("gate", "out/gate")).json()["job"]["id"]
    second = alice.post("/v1/jobs", json=script_job("gate", "out/gate")).json()["job"]["id"]
    assert alice.post(f"/v1/jobs/{second}/cancel").json()["state"] == "cancelled"
    wait_state(alice, first, {"running"})
    (srv.settings.jobs_dir / first / "out" / "gate").touch()  # the job sees only its own directory
    wait_state(alice, first, {"succeeded"})
    assert alice.get(f"/v1/jobs/{second}").json()["state"] == "cancelled"
    assert alice.get(f"/v1/jobs/{second}").json()["started_at"] is None


def test_cleanup_hooks_run_on_cancel(make_server, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    srv = make_server(cleanup_hooks=["docker", ["python3", "-c", f"open('{marker}', 'w').write('{{job_id}}')"]])
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("sleep", "60")).json()["job"]["id"]
    wait_state(alice, job_id, {"running"})
    assert alice.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert marker.read_text() == job_id  # docker (absent or not working here) was skipped silently
