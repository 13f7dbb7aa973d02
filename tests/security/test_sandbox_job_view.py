"""Attack 2: code running inside a job reaches for the server's environment, other users' keys,
the job store and the server's process. The ``probe`` template stands for any code that runs in
a job (an admin's harness, an allowed plugin, or code that got in some other way)."""

from __future__ import annotations

import json

import psutil
from sandbox_kit import SERVER_SECRET, VICTIM_KEY, probe_job, wait_for


def _findings(log: str) -> dict:
    lines = [ln for ln in log.splitlines() if ln.startswith("PROBE ")]
    assert lines, log[-2000:]
    return json.loads(lines[-1][len("PROBE ") :])


def test_a_job_sees_no_other_process_no_store_and_runs_unprivileged(secure_server) -> None:
    srv = secure_server()
    bob, mallory = srv.client("bob"), srv.client("mallory")
    victim = bob.post(
        "/v1/jobs",
        json=probe_job(
            "sleep",
            "120",
            models={"subject": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": VICTIM_KEY}},
        ),
    ).json()["job"]["id"]
    wait_for(bob, victim, {"running"})
    attack = mallory.post("/v1/jobs", json=probe_job("look", str(srv.data.resolve()), str(srv.pid)))
    assert attack.status_code == 201, attack.text
    job_id = attack.json()["job"]["id"]
    wait_for(mallory, job_id, {"succeeded", "failed"})
    found = _findings(srv.log(job_id))
    everything = json.dumps(found)

    assert VICTIM_KEY not in everything and SERVER_SECRET not in everything  # no other job's or server's environment
    assert not found["kill_server"]["ok"] and psutil.pid_exists(srv.pid)  # the server is not even addressable
    assert srv.client("bob").get("/health").status_code == 200
    assert all("serve" not in cmd for cmd in found["cmdlines"].values())  # only the job's own processes
    assert not found["parent_environ"]["ok"] or SERVER_SECRET not in found["parent_environ"].get("value", "")
    assert found["uid"] != 0
    # The data directory, the job store and other jobs are not in the job's view.
    assert found["data_dir"] == {"ok": True, "value": ["jobs"]}  # only the path down to its own directory
    assert found["jobs"] == {"ok": True, "value": [job_id]}
    assert not found["store_read"]["ok"] and not found["store_write"]["ok"]
    # Only out/ is writable; the spec the server rewrites at each start is not.
    assert not found["own_spec_write"]["ok"] and found["own_out_write"]["ok"]
    # No home directories (only the Python installation's own path under /root, read-only), no /etc/shadow.
    assert set(found["root_home"].get("value", [])) <= {".pyenv"}
    assert not found["home"]["ok"] or found["home"]["value"] == []
    assert not found["shadow"]["ok"]
    assert bob.get(f"/v1/jobs/{victim}").json()["state"] == "running"  # the victim's job is unharmed
    bob.post(f"/v1/jobs/{victim}/cancel")
