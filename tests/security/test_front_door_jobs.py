"""Issue 17, item 5: hard-linked artifacts, one user filling the queue, and a public /metrics."""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
from security.frontdoor_kit import served

JOBSCRIPT = str(Path(__file__).parents[1] / "server" / "jobscript.py")
SCRIPT = {
    "argv": [sys.executable, JOBSCRIPT, "{mode}", "{arg}"],
    "params": {"mode": {"pattern": "^(sleep|exit)$"}, "arg": {"default": "0"}},
}


def job(mode: str, arg: str = "0") -> dict[str, Any]:
    return {"kind": "command", "template": "script", "params": {"mode": mode, "arg": arg}}


def wait_state(client: httpx.Client, job_id: str, states: set[str]) -> None:
    for _ in range(600):  # bounded: 60 s
        if client.get(f"/v1/jobs/{job_id}").json()["state"] in states:
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}")


def test_hard_linked_artifact_not_served_listed_or_archived(tmp_path: Path) -> None:
    secret = tmp_path / "server-secret.txt"
    secret.write_text("the server's own file\n")
    with served(tmp_path, {"templates": {"script": SCRIPT}}) as srv, srv.client() as alice:
        job_id = alice.post("/v1/jobs", json=job("exit", "0")).json()["job"]["id"]
        wait_state(alice, job_id, {"succeeded"})
        job_dir = srv.data / "jobs" / job_id
        os.link(secret, job_dir / "out" / "leak.txt")  # what a job's process could do
        (job_dir / "out" / "fine.txt").write_text("a result\n")
        assert alice.get(f"/v1/jobs/{job_id}/artifacts/out/leak.txt").status_code == 403
        assert alice.get(f"/v1/jobs/{job_id}/artifacts/out/fine.txt").text == "a result\n"
        listed = {a["path"] for a in alice.get(f"/v1/jobs/{job_id}/artifacts").json()}
        assert "out/fine.txt" in listed and "out/leak.txt" not in listed
        archive = tarfile.open(fileobj=io.BytesIO(alice.get(f"/v1/jobs/{job_id}/results.tar.gz").content))
        names = archive.getnames()
        assert f"{job_id}/out/fine.txt" in names and f"{job_id}/out/leak.txt" not in names


def test_one_user_cannot_fill_the_queue(tmp_path: Path) -> None:
    config = {"templates": {"script": SCRIPT}, "queue_max": 4, "slots": 1}
    with served(tmp_path, config) as srv, srv.client() as alice, srv.client("bob") as bob:
        first = alice.post("/v1/jobs", json=job("sleep", "60")).json()["job"]["id"]
        wait_state(alice, first, {"running"})
        assert [alice.post("/v1/jobs", json=job("sleep", "60")).status_code for _ in range(2)] == [201, 201]
        over = alice.post("/v1/jobs", json=job("sleep", "60"))  # default cap: half the queue, 2
        assert over.status_code == 429, over.text
        assert over.json()["ok"] is False and int(over.headers["Retry-After"]) >= 1
        assert bob.post("/v1/jobs", json=job("sleep", "60")).status_code == 201  # others still get in
        with srv.client("root") as root:
            assert root.post("/v1/jobs", json=job("sleep", "60")).status_code == 201  # admins are exempt


def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    with served(tmp_path, {"metrics_require_token": True}) as srv, srv.client(None) as anyone:
        closed = anyone.get("/metrics")
        assert closed.status_code == 401 and closed.json()["ok"] is False
        assert anyone.get("/metrics", headers={"Authorization": "Bearer pt_wrong"}).status_code == 401
        with srv.client("bob") as bob:
            assert "proctor_queue_length" in bob.get("/metrics").text


def test_metrics_public_by_default(tmp_path: Path) -> None:
    with served(tmp_path) as srv, srv.client(None) as anyone:
        assert anyone.get("/metrics").status_code == 200


def test_opened_file_is_checked_not_only_its_path(tmp_path: Path) -> None:
    """What a job could swap in after the path check: each is refused at open, without blocking."""
    from proctor.server.artifacts import _open_checked

    root, outside = tmp_path / "job", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (root / "plain.txt").write_text("yours")
    os.symlink(outside / "secret.txt", root / "link.txt")
    os.link(outside / "secret.txt", root / "hard.txt")
    os.mkfifo(root / "fifo")
    os.symlink(outside, root / "dir")
    real = root.resolve()
    opened = _open_checked(real, root / "plain.txt")
    assert opened is not None and opened[0].read() == b"yours" and opened[1] == 5
    opened[0].close()
    for name in ("link.txt", "hard.txt", "fifo", "dir/secret.txt"):
        assert _open_checked(real, root / name) is None, name
