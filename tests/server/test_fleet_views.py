"""Any server of a fleet answers for any job: status, results and the live log (SSE) of a job that
another server runs (its log file is on the shared data directory; the store says when it ended)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import script_job, wait_state
from test_fleet import FINAL, _fleet

from proctor.client import _parse_sse

pytestmark = pytest.mark.store("postgres")


def _runner(servers: list[Any]) -> int:
    """Which of the servers runs the one running job (the other reports nothing running)."""
    for _ in range(3000):  # bounded (30 s): the claim has been made; its count is read from memory
        running = [s.client(None).get("/v1/server").json()["running"] for s in servers]
        if sorted(running) == [0, 1]:
            return running.index(1)
        time.sleep(0.01)
    raise AssertionError(f"no single server runs the job: {running}")


def test_a_server_streams_the_log_of_a_job_another_server_runs(make_server, tmp_path: Path) -> None:
    servers = _fleet(make_server, tmp_path, slots=1)
    alice = servers[0].client("alice")
    gate = tmp_path / "gates" / "open"
    job_id = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    wait_state(alice, job_id, {"running"})
    other = servers[1 - _runner(servers)]
    # Shorter than the 15 s keepalive: a follower on a server that does not run the job must see
    # new lines (and the end) by looking at the shared log file itself, not on a keepalive tick.
    watcher = httpx.Client(
        base_url=other.url,
        headers={"Authorization": f"Bearer {other.tokens['alice']}"},
        timeout=httpx.Timeout(30, read=12),
    )
    events = []
    try:
        with watcher.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": 1}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for event in _parse_sse(r.iter_lines()):
                events.append(event)
                if event.event == "log" and "start gate" in event.data:
                    gate.touch()  # the job goes on to print "done" and end, on the other server
                if event.event == "end":
                    break
    finally:
        gate.touch()
        watcher.close()
    assert events[-1].event == "end" and '"succeeded"' in events[-1].data
    streamed = "\n".join(e.data for e in events[:-1]) + "\n"
    whole = (tmp_path / "data" / "jobs" / job_id / "job.log").read_text()
    assert streamed == whole and "done" in whole  # nothing lost, nothing repeated


def test_status_and_results_from_either_server(make_server, tmp_path: Path) -> None:
    servers = _fleet(make_server, tmp_path, slots=1)
    clients = [s.client("alice") for s in servers]
    job_id = clients[0].post("/v1/jobs", json=script_job("lines", "3")).json()["job"]["id"]
    assert wait_state(clients[1], job_id, FINAL)["state"] == "succeeded"
    for client in clients:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["progress"]["done"] == 3
        names = {a["path"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
        assert "job.log" in names
        tar = client.get(f"/v1/jobs/{job_id}/results.tar.gz")
        assert tar.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
            logs = [m for m in archive.getmembers() if m.name.endswith("job.log")]
            assert logs
            handle = archive.extractfile(logs[0])
            assert handle is not None and b"line 2" in handle.read()
        page = client.get(f"/v1/jobs/{job_id}/logs").json()
        assert "line 2" in page["data"] and page["eof"] and page["state"] == "succeeded"
