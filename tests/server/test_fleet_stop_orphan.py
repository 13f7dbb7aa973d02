"""A cancel of a running job whose server, on another host, died: its lease lapsed, so the server
asked takes the job over as ``cancelled`` (it cannot reach the process; that host's supervisor
ends it, see docs/server.md) instead of waiting for a server that will never look."""

from __future__ import annotations

import time

from server_helpers import script_job

from proctor.server.store import JobRow, JobStore

ELSEWHERE = "elsewhere/1/0.00/abcdef"


def test_a_cancel_takes_a_running_job_whose_server_on_another_host_let_its_lease_lapse(make_server) -> None:
    srv = make_server(slots=1, lease_seconds=600)  # its own takeover pass comes only after 150 s
    store = JobStore(srv.settings.store_url)
    try:
        now = time.time()
        store.insert_job(
            JobRow(
                id="orphan-job-1",
                owner="alice",
                kind="command",
                state="running",
                priority=1,
                seq=0,
                created_at=now - 60,
                started_at=now - 50,
                attempts=1,
                request=script_job("gate", "/nonexistent"),
                instance=ELSEWHERE,
                lease_until=now - 5,
            )
        )
        r = srv.client("alice").post("/v1/jobs/orphan-job-1/cancel")
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["state"] == "cancelled" and job["attempts"] == 1, job
        assert job["note"].startswith("cancelled by alice through server instance"), job
        assert f"the server instance {ELSEWHERE} that ran it had stopped" in job["note"], job
        row = store.get("orphan-job-1")
        assert (row.state, row.instance, row.finished_at is not None) == ("cancelled", None, True)
    finally:
        store.close()
