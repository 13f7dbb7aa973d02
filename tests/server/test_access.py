"""Who may see and touch a job: owner, other user, admin, nobody; open mode by IP."""

from __future__ import annotations

from helpers import store_args
from server_helpers import script_job, wait_state


def test_owner_other_admin(make_server) -> None:
    srv = make_server()
    alice, bob, root, anon = srv.client("alice"), srv.client("bob"), srv.client("root"), srv.client(None)
    job_id = alice.post("/v1/jobs", json=script_job("lines", "3")).json()["job"]["id"]
    wait_state(alice, job_id, {"succeeded"})
    paths = [
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/logs",
        f"/v1/jobs/{job_id}/artifacts",
        f"/v1/jobs/{job_id}/artifacts/job.log",
        f"/v1/jobs/{job_id}/results.tar.gz",
    ]
    for path in paths:
        assert alice.get(path).status_code == 200, path
        assert root.get(path).status_code == 200, path
        r = bob.get(path)
        assert r.status_code == 403, path
        assert r.json() == {"ok": False, "error": f"job {job_id} belongs to another user", "status": 403}
        assert anon.get(path).status_code == 401, path
    assert bob.post(f"/v1/jobs/{job_id}/cancel").status_code == 403
    assert bob.delete(f"/v1/jobs/{job_id}").status_code == 403
    assert bob.post(f"/v1/jobs/{job_id}/resume", json={}).status_code == 403
    assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # already finished
    assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job_id]
    assert bob.get("/v1/jobs").json()["jobs"] == []
    assert [j["id"] for j in root.get("/v1/jobs", params={"all": True}).json()["jobs"]] == [job_id]
    bad = srv.client(None)
    bad.headers["Authorization"] = "Bearer pt_not-a-token"
    assert bad.get("/v1/jobs").status_code == 401
    assert root.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not (srv.settings.jobs_dir / job_id).exists()


def test_server_status_anonymizes_others(make_server, tmp_path) -> None:
    srv = make_server()
    alice, bob = srv.client("alice"), srv.client("bob")
    gate = tmp_path / "gates" / "gate"
    mine = alice.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    theirs = bob.post("/v1/jobs", json=script_job("gate", str(gate))).json()["job"]["id"]
    assert len(mine) == 26 and len(theirs) == 26  # 128 random bits
    info = alice.get("/v1/server").json()
    ids = {j["id"]: j for j in info["jobs"]}
    assert mine in ids and ids[mine]["mine"]
    assert f"{theirs[:6]}…{theirs[-2:]}" in ids and theirs not in ids
    anonymous = srv.client(None).get("/v1/server").json()
    assert all(theirs not in j["id"] and mine not in j["id"] for j in anonymous["jobs"])
    assert anonymous["version"] and anonymous["slots"] == 1 and anonymous["queue_length"] == 1
    gate.touch()
    wait_state(bob, theirs, {"succeeded"})


def test_client_chosen_id_resumes_with_warning(make_server) -> None:
    srv = make_server()
    alice, bob = srv.client("alice"), srv.client("bob")
    assert alice.post("/v1/jobs", json=script_job("exit", "0", job_id="bad id!")).status_code == 400
    first = alice.post("/v1/jobs", json=script_job("exit", "0", job_id="my-job-0001")).json()
    assert first["job"]["id"] == "my-job-0001" and first["warnings"] == []
    wait_state(alice, "my-job-0001", {"succeeded"})
    again = alice.post("/v1/jobs", json=script_job("exit", "0", job_id="my-job-0001")).json()
    assert again["warnings"] and "exists" in again["warnings"][0]
    assert wait_state(alice, "my-job-0001", {"succeeded"})["attempts"] == 2
    assert bob.post("/v1/jobs", json=script_job("exit", "0", job_id="my-job-0001")).status_code == 403


def test_open_mode_identifies_by_ip(make_server) -> None:
    srv = make_server(open=True, rate_limit="1/1d")
    anon = srv.client(None)
    r = anon.post("/v1/jobs", json=script_job("exit", "0"))
    assert r.status_code == 201 and r.json()["job"]["owner"] == "ip:127.0.0.1"
    wait_state(anon, r.json()["job"]["id"], {"succeeded"})
    assert anon.post("/v1/jobs", json=script_job("exit", "0")).status_code == 429
    assert srv.client("root").post("/v1/jobs", json=script_job("exit", "0")).status_code == 201


def test_errors_have_one_shape(make_server) -> None:
    srv = make_server()
    alice = srv.client("alice")
    r = alice.post("/v1/jobs", json={"kind": "command", "template": "nope"})
    assert r.status_code == 400
    assert r.json() == {
        "ok": False,
        "error": "no command template 'nope' on this server (registered: script)",
        "status": 400,
    }
    r = alice.post("/v1/jobs", json=script_job("rm -rf /"))
    assert r.status_code == 400 and "must match" in r.json()["error"]
    r = alice.post(
        "/v1/jobs",
        json={
            "kind": "proctor",
            "spec": "name: x\nmodels: {subject: {model: m, launch: {kind: command, port: 1, argv: [sh]}}}\n",
        },
    )
    assert r.status_code == 400 and "launch is not allowed" in r.json()["error"]
    r = alice.get("/v1/jobs/nonexistent")
    assert r.json() == {"ok": False, "error": "no job 'nonexistent'", "status": 404}
    assert srv.client(None).get("/health").json()["ok"] is True


def test_private_submission_registers_tunnel(make_server) -> None:
    from pathlib import Path

    srv = make_server()
    alice = srv.client("alice")
    root = Path(__file__).resolve().parents[2] / "examples" / "arith"
    body = {
        "spec": (root / "spec.yaml").read_text(),
        "files": {"data.jsonl": {"content": (root / "data.jsonl").read_text()}},
        "private": True,
        "limit": 2,
        "models": {"subject": {"base_url": "http://10.9.8.7/v1", "api_key": "sk-local-only"}},
    }
    r = alice.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["tunnel_secret"] and r.json()["job"]["private_roles"] == ["subject"]
    job_id = r.json()["job"]["id"]
    assert alice.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    for path in srv.settings.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert (
                b"sk-local-only" not in data
                and b"10.9.8.7" not in data
                and r.json()["tunnel_secret"].encode() not in data
            )


def test_a_revoked_token_is_refused_by_the_running_server(make_server) -> None:
    import subprocess
    import sys
    import time

    srv = make_server(token_cache_seconds=0.2)
    bob = srv.client("bob")
    assert bob.get("/v1/jobs").status_code == 200  # now cached
    data, store = str(srv.settings.data_dir), store_args(srv.settings.data_dir)
    listed = subprocess.run(
        [sys.executable, "-m", "proctor", "server", "token", "list", "--data", data, *store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "bob\tuser" in listed.stdout and "root\tadmin" in listed.stdout
    assert srv.tokens["bob"] not in listed.stdout + listed.stderr  # only names are shown
    revoked = subprocess.run(
        [sys.executable, "-m", "proctor", "server", "token", "revoke", "bob", "--data", data, *store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 10
    while bob.get("/v1/jobs").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bob.get("/v1/jobs").status_code == 401
    assert srv.client("alice").get("/v1/jobs").status_code == 200
    again = subprocess.run(
        [sys.executable, "-m", "proctor", "server", "token", "revoke", "bob", "--data", data, *store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "no token named 'bob'" in again.stderr
