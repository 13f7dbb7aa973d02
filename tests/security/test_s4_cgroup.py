"""A job's memory as a whole: its memory and pids cgroups (``server/cgroups.py``).

Before: RLIMIT_AS per process was the only memory ceiling. A job wrote 600 MB into a memfd under a
256 MB job ceiling (no address space is used), and forked children that each stayed under
RLIMIT_AS but together held several times the job's memory. Both attacks run here as real jobs of a
real root server; the ceiling they must meet is the job's cgroup.

Skipped only where the machine has no writable cgroup-v1 memory controller for this process (not
root, or /sys/fs/cgroup read-only); CI runs as root on such a machine, so they run there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sandbox_kit import PROBE, SecureServer, probe_job, wait_for

MEMORY = Path("/sys/fs/cgroup/memory")
PIDS = Path("/sys/fs/cgroup/pids")


def _own(controller: str, pid: int | str = "self") -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path.lstrip("/")
    return ""


def _writable() -> bool:
    own = MEMORY / _own("memory")
    return os.geteuid() == 0 and (own / "memory.limit_in_bytes").exists() and os.access(own, os.W_OK)


pytestmark = pytest.mark.skipif(not _writable(), reason="no writable cgroup-v1 memory controller (needs root)")

TEMPLATES = {
    "probe": {
        "argv": [sys.executable, PROBE, "{mode}", "{a}", "{b}"],
        "params": {
            "mode": {"pattern": "^(memfd|forkalloc|cgroup|limits|sleep)$"},
            "a": {"default": "0"},
            "b": {"default": "0"},
        },
    }
}


def start(secure_server: Any, **sandbox: Any) -> SecureServer:
    server: SecureServer = secure_server(templates=TEMPLATES, sandbox={"memory_mb": 2048, **sandbox})
    return server


def job_cgroup(srv: SecureServer, job_id: str, root: Path = MEMORY) -> Path:
    """Where the server keeps the job's cgroup (under its own one, ``proctor-PID/JOB``)."""
    return root / _own(root.name, srv.pid) / f"proctor-{srv.pid}" / job_id


def wait_gone(path: Path, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.1)
    return False


def wait_line(srv: SecureServer, job_id: str, prefix: str, seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in srv.log(job_id).splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        time.sleep(0.1)
    raise AssertionError(f"no {prefix!r} line in job {job_id}'s log: {srv.log(job_id)[-2000:]}")


def test_a_memfd_beyond_the_job_ceiling_is_stopped(secure_server: Any) -> None:
    srv = start(secure_server, job_memory_mb=256)
    bob, mallory = srv.client("bob"), srv.client("mallory")
    hog = mallory.post("/v1/jobs", json=probe_job("memfd", "768")).json()["job"]["id"]
    job = wait_for(mallory, hog, {"succeeded", "failed"}, seconds=180)
    assert job["state"] == "failed", srv.log(hog)[-2000:]
    assert "MEMFD ALL" not in srv.log(hog)
    assert job["note"] == "killed by the memory ceiling (256 MiB)", job
    assert wait_gone(job_cgroup(srv, hog))
    other = bob.post("/v1/jobs", json=probe_job("sleep", "1")).json()["job"]["id"]
    assert wait_for(bob, other, {"succeeded", "failed"})["state"] == "succeeded"
    assert bob.get("/health").status_code == 200


def test_many_processes_each_under_rlimit_as_are_stopped_together(secure_server: Any) -> None:
    srv = start(secure_server, job_memory_mb=384)
    mallory = srv.client("mallory")
    # 4 x 200 MB: each child far under RLIMIT_AS (2048 MB), together twice the job's 384 MB.
    hog = mallory.post("/v1/jobs", json=probe_job("forkalloc", "4", "200")).json()["job"]["id"]
    job = wait_for(mallory, hog, {"succeeded", "failed"}, seconds=180)
    assert job["state"] == "failed", srv.log(hog)[-2000:]
    assert "FORKALLOC ALL" not in srv.log(hog)
    assert job["note"] == "killed by the memory ceiling (384 MiB)", job
    assert wait_gone(job_cgroup(srv, hog))


def test_a_submission_may_lower_the_job_ceiling_never_raise_it(secure_server: Any) -> None:
    srv = start(secure_server, job_memory_mb=512)
    mallory = srv.client("mallory")
    r = mallory.post("/v1/jobs", json=probe_job("sleep", "0", limits={"job_memory_mb": 1024}))
    assert r.status_code == 400 and "limits.job_memory_mb: at most 512" in r.text, r.text
    hog = mallory.post("/v1/jobs", json=probe_job("memfd", "256", limits={"job_memory_mb": 128})).json()["job"]["id"]
    job = wait_for(mallory, hog, {"succeeded", "failed"}, seconds=180)
    assert (job["state"], job["note"]) == ("failed", "killed by the memory ceiling (128 MiB)"), job


def test_the_job_runs_in_its_cgroups_with_its_ceilings_and_they_go_with_it(secure_server: Any) -> None:
    srv = start(secure_server, job_memory_mb=300, processes=64, cgroups="required")
    assert "jobs run in cgroups v1 (memory and pids)" in (srv.data / "server.log").read_text()
    mallory = srv.client("mallory")
    held = mallory.post("/v1/jobs", json=probe_job("limits", "30", limits={"processes": 40})).json()["job"]["id"]
    found = json.loads(wait_line(srv, held, "LIMITS "))
    memory, pids = job_cgroup(srv, held), job_cgroup(srv, held, PIDS)
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(300 * 1024 * 1024)
    assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(300 * 1024 * 1024)
    assert (pids / "pids.max").read_text().strip() == "40"
    assert found["children"] < 40
    assert int((pids / "pids.current").read_text()) <= 40
    mallory.post(f"/v1/jobs/{held}/cancel")
    wait_for(mallory, held, {"cancelled", "succeeded", "failed"})
    assert wait_gone(memory) and wait_gone(pids)

    # Its very first process is in them: the job's own code sees its cgroup.
    look = mallory.post("/v1/jobs", json=probe_job("cgroup", "0")).json()["job"]["id"]
    lines = json.loads(wait_line(srv, look, "CGROUP "))
    path = "/".join(part for part in (_own("memory", srv.pid), f"proctor-{srv.pid}", look) if part)
    assert any(line.endswith(f":memory:/{path}") for line in lines), lines
    assert wait_for(mallory, look, {"succeeded", "failed"})["state"] == "succeeded"
    assert wait_gone(job_cgroup(srv, look))


def test_with_cgroups_off_the_old_rlimits_only_behaviour(secure_server: Any) -> None:
    srv = start(secure_server, memory_mb=256, job_memory_mb=256, cgroups="off")
    mallory = srv.client("mallory")
    hog = mallory.post("/v1/jobs", json=probe_job("memfd", "512")).json()["job"]["id"]
    job = wait_for(mallory, hog, {"succeeded", "failed"}, seconds=180)
    assert job["state"] == "succeeded" and "MEMFD ALL" in srv.log(hog), (job, srv.log(hog)[-2000:])
    assert not (MEMORY / _own("memory", srv.pid) / f"proctor-{srv.pid}").exists()
