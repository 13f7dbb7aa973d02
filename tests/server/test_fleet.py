"""Several servers sharing one PostgreSQL store and one data directory (a fleet).

Each queued job is claimed by exactly one server (a conditional UPDATE out of ``queued``), and an
idle server takes jobs that another server queued (it looks at a shared store's queue now and
then, since their submissions wake nothing in it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pg_kit
import pytest
from server_helpers import script_job, wait_state

pytestmark = pytest.mark.store("postgres")

FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def _fleet(make_server: Any, tmp_path: Path, *, slots: int) -> list[Any]:
    data = tmp_path / "data"
    first = make_server(data_dir=data, slots=slots)
    second = make_server(data_dir=data, slots=slots)  # the same store: its tokens exist already
    second.tokens = first.tokens
    return [first, second]


def test_fifty_jobs_submitted_across_two_servers_each_run_exactly_once(make_server, tmp_path: Path) -> None:
    servers = _fleet(make_server, tmp_path, slots=2)
    clients = [s.client("alice") for s in servers]

    def submit(i: int) -> str:
        r = clients[i % 2].post("/v1/jobs", json=script_job("lines", "1"))
        assert r.status_code in (200, 201), r.text
        return str(r.json()["job"]["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    for i, job_id in enumerate(ids):
        # any server answers for any job, whichever ran it
        assert wait_state(clients[(i + 1) % 2], job_id, FINAL)["state"] == "succeeded"
    with pg_kit.connect(tmp_path / "data") as conn:
        attempts = dict(conn.execute("SELECT id, attempts FROM jobs").fetchall())
    assert attempts == {job_id: 1 for job_id in ids}
    for job_id in ids:
        log = (tmp_path / "data" / "jobs" / job_id / "job.log").read_text()
        assert log.count("start lines") == 1, log


def test_an_idle_server_runs_a_job_that_a_busy_one_queued(make_server, tmp_path: Path) -> None:
    busy, idle = _fleet(make_server, tmp_path, slots=1)
    alice = busy.client("alice")
    gate = tmp_path / "gates" / "open"
    held = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    wait_state(alice, held, {"running"})
    queued = alice.post("/v1/jobs", json=script_job("lines", "2")).json()["job"]["id"]
    try:
        # the busy server's only slot is held until the gate opens: only the idle one can run it
        assert wait_state(idle.client("alice"), queued, FINAL)["state"] == "succeeded"
        assert alice.get(f"/v1/jobs/{held}").json()["state"] == "running"
    finally:
        gate.touch()
    assert wait_state(alice, held, FINAL)["state"] == "succeeded"
