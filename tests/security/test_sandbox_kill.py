"""Attack 4 for jobs: descendants that leave the job's process group (fork→setsid→fork,
fork→setpgid→fork) must not survive cancel or timeout.

Before: they survived and ran on as the server's user. The pids a job sees are those of its own
PID namespace, so its processes are found here by their unique ``sleep`` argument.
"""

from __future__ import annotations

import random
import time

import psutil
from sandbox_kit import probe_job, wait_for


def _with_marker(marker: str) -> list[int]:
    """Live processes of the job's sleepers (and, while the job runs, bwrap and the probe itself)."""
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "status"])
        if marker in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _sleepers(marker: str) -> int:
    return sum(1 for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""]) == ["sleep", marker])


def _wait_forked(srv, client, job_id: str, marker: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "FORKED" in srv.log(job_id) and _sleepers(marker) == 4:
            return
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running")
        time.sleep(0.05)
    raise AssertionError(srv.log(job_id)[-2000:])


def test_cancel_and_timeout_leave_no_process_behind(secure_server) -> None:
    srv = secure_server()
    mallory = srv.client("mallory")
    marker = f"{500 + random.random():.9f}"
    cancelled = mallory.post("/v1/jobs", json=probe_job("fork", marker)).json()["job"]["id"]
    _wait_forked(srv, mallory, cancelled, marker)
    assert mallory.post(f"/v1/jobs/{cancelled}/cancel").json()["state"] == "cancelled"
    assert _with_marker(marker) == []

    marker = f"{600 + random.random():.9f}"
    # Long enough for the job to start and fork all four sleepers on a loaded host before it ends.
    timed = mallory.post("/v1/jobs", json=probe_job("fork", marker, timeout=15)).json()["job"]["id"]
    _wait_forked(srv, mallory, timed, marker)
    assert wait_for(mallory, timed, {"timed_out", "failed", "succeeded", "cancelled"})["state"] == "timed_out"
    assert _with_marker(marker) == []
