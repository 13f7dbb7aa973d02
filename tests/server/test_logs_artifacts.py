"""Log paging, SSE follow and resume with Last-Event-ID; artifacts and path traversal."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import httpx
from server_helpers import script_job, wait_state

from proctor.client import Client, _parse_sse


def _sse(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None, stop_after: int | None = None):
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": 1}, headers=headers or {}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for event in _parse_sse(r.iter_lines()):
            events.append(event)
            if event.event == "end" or (stop_after is not None and len(events) >= stop_after):
                break
    return events


def test_follow_and_resume(make_server, tmp_path: Path) -> None:
    srv = make_server()
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("lines", "40", "0.01")).json()["job"]["id"]
    first = _sse(alice, job_id, stop_after=2)  # disconnect mid-way
    assert first[0].event == "log" and first[0].data.startswith("start lines")
    resumed = _sse(alice, job_id, headers={"Last-Event-ID": str(first[-1].id)})
    assert resumed[-1].event == "end" and '"succeeded"' in resumed[-1].data
    streamed = "\n".join(e.data for e in first + resumed[:-1]) + "\n"
    whole = (srv.settings.jobs_dir / job_id / "job.log").read_text()
    assert streamed == whole  # nothing lost, nothing repeated
    assert [f"line {i}" for i in range(40)] == [ln for ln in whole.splitlines() if ln.startswith("line ")]
    # paging by offset gives the same bytes
    page = alice.get(f"/v1/jobs/{job_id}/logs", params={"offset": 0, "limit": 100}).json()
    assert whole.startswith(page["data"]) and page["next_offset"] == len(page["data"].encode()) and not page["eof"]
    rest = alice.get(f"/v1/jobs/{job_id}/logs", params={"offset": page["next_offset"]}).json()
    assert page["data"] + rest["data"] == whole and rest["eof"]
    # the last progress line became the job's progress
    assert alice.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] == 40
    # a follower of a finished job gets everything then the end event
    again = _sse(alice, job_id)
    assert again[-1].event == "end" and "\n".join(e.data for e in again[:-1]) + "\n" == whole
    assert alice.get(f"/v1/jobs/{job_id}/logs", params={"follow": 1}, headers={"Last-Event-ID": "x"}).status_code == 400


def test_python_client_follow_and_wait(make_server) -> None:
    srv = make_server()
    with Client(srv.url, srv.tokens["alice"]) as client:
        job = client.submit(template="script", params={"mode": "lines", "arg": "5"})["job"]
        lines = [e.data for e in client.follow(job["id"]) if e.event == "log"]
        assert "line 4" in "\n".join(lines)
        assert client.wait(job["id"])["state"] == "succeeded"


def test_artifacts_and_traversal(make_server, tmp_path: Path) -> None:
    srv = make_server()
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("lines", "2")).json()["job"]["id"]
    wait_state(alice, job_id, {"succeeded"})
    job_dir = srv.settings.jobs_dir / job_id
    (job_dir / "out" / "eval_stats.json").write_text('{"accuracy": 1}')
    secret = tmp_path / "outside.txt"
    secret.write_text("not yours")
    os.symlink(secret, job_dir / "out" / "link.txt")  # planted by a job: must not be followed
    names = {a["path"] for a in alice.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert names == {"job.log", "out/eval_stats.json"}
    assert alice.get(f"/v1/jobs/{job_id}/artifacts/out/eval_stats.json").json() == {"accuracy": 1}
    raw = httpx.Client(base_url=srv.url, headers=alice.headers)
    base = f"{srv.url}/v1/jobs/{job_id}/artifacts/"
    for attempt in [
        "..%2F..%2F..%2Fproctor.sqlite",
        "%2E%2E/%2E%2E/proctor.sqlite",
        "%2Fetc%2Fpasswd",
        "out/link.txt",
        "out/..%2F..%2F..%2Fserver.log",
        "out%5C..%5C..%5Cproctor.sqlite",
    ]:
        r = raw.send(httpx.Request("GET", httpx.URL(base + attempt), headers=alice.headers))
        assert r.status_code in (403, 404), (attempt, r.status_code)
        assert "not yours" not in r.text and "SQLite" not in r.text
    raw.close()
    r = alice.get(f"/v1/jobs/{job_id}/results.tar.gz")
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        members = sorted(m.name for m in tar.getmembers())
    assert members == [f"{job_id}/job.log", f"{job_id}/out/eval_stats.json"]
