"""Attack: anyone on the server's host runs ``ps`` while a job runs. A process's command line is
readable by every user (its environment only by its owner), so a job's API key must never be in
the argv of any process the server starts: not the sandbox's, not the job's."""

from __future__ import annotations

import time

import psutil
from sandbox_kit import VICTIM_KEY, probe_job, wait_for


def test_a_running_jobs_key_is_in_no_process_command_line(secure_server) -> None:
    srv = secure_server()
    bob = srv.client("bob")
    job = bob.post(
        "/v1/jobs",
        json=probe_job(
            "sleep",
            "120",
            models={"subject": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": VICTIM_KEY}},
        ),
    ).json()["job"]["id"]
    wait_for(bob, job, {"running"})
    # "running" is recorded as the job is claimed, a moment before its process starts: wait
    # (bounded) until a process of this job (its directory names the job) is there.
    deadline, mine = time.monotonic() + 60, []
    while not mine and time.monotonic() < deadline:
        mine = [p for p in psutil.process_iter(["cmdline"]) if any(job in part for part in p.info["cmdline"] or [])]
        time.sleep(0.05)
    assert mine, "the job's processes were not found: the test would prove nothing"
    leaking = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if VICTIM_KEY in " ".join(p.info["cmdline"] or [])
    ]
    assert leaking == [], f"the key is in the command line of pids {leaking}"
    bob.post(f"/v1/jobs/{job}/cancel")
