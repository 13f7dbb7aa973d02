"""The server's ceilings apply inside every job (a submission may lower them, never raise them),
and a fork storm in one job is held by its process ceiling without touching another job's."""

from __future__ import annotations

import json
import time

from sandbox_kit import probe_job, wait_for


def _limits(srv, client, body) -> dict:
    job_id = client.post("/v1/jobs", json=body).json()["job"]["id"]
    job = wait_for(client, job_id, {"succeeded", "failed"})
    lines = [ln for ln in srv.log(job_id).splitlines() if ln.startswith("LIMITS ")]
    assert job["state"] == "succeeded" and lines, srv.log(job_id)[-2000:]
    return json.loads(lines[-1][len("LIMITS ") :])


def test_ceilings_apply_and_a_submission_may_lower_them(secure_server) -> None:
    srv = secure_server(sandbox={"memory_mb": 3072, "processes": 64, "file_size_mb": 100, "open_files": 512})
    mallory, bob = srv.client("mallory"), srv.client("bob")
    mb = 1024 * 1024
    server = _limits(srv, mallory, probe_job("limits"))
    assert server["AS"] == 3072 * mb and server["NPROC"] == 64 and server["FSIZE"] == 100 * mb
    assert server["NOFILE"] == 512
    assert server["children"] < 64  # the fork storm stopped at the ceiling
    lowered = _limits(srv, bob, probe_job("limits", limits={"memory_mb": 1024, "processes": 16, "open_files": 128}))
    assert lowered["AS"] == 1024 * mb and lowered["NPROC"] == 16 and lowered["NOFILE"] == 128
    assert lowered["FSIZE"] == 100 * mb and lowered["children"] < 16


def test_a_fork_storm_does_not_starve_the_job_in_the_other_slot(secure_server) -> None:
    srv = secure_server(sandbox={"processes": 64})
    mallory, bob = srv.client("mallory"), srv.client("bob")
    hog = mallory.post("/v1/jobs", json=probe_job("limits", "60")).json()["job"]["id"]
    for _ in range(600):  # bounded: until the hog holds all the processes its ceiling allows
        if "LIMITS " in srv.log(hog):
            break
        time.sleep(0.05)
    assert json.loads(srv.log(hog).split("LIMITS ", 1)[1].splitlines()[0])["children"] >= 30
    other = _limits(srv, bob, probe_job("limits"))
    assert other["uid"] != 0
    assert 30 <= other["children"] < 64  # its own budget, not shared with the job in slot 0
    mallory.post(f"/v1/jobs/{hog}/cancel")
