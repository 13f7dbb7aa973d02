"""lm-eval-server's stop and delete routes on a fleet: they stop a job wherever it runs.

Two servers (in this process) on one throwaway PostgreSQL store and one data directory; real
lm-evaluation-harness jobs against the fake LLM, slow enough (200 documents, 0.5 s per answer,
two at a time) that only a stop ends them within the test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from test_fleet_views import _runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))

pytest.importorskip("lm_eval")

from lmeval_kit import PLAIN_TASK, plain_data  # noqa: E402
from test_lmeval_api import body_for  # noqa: E402

from proctor.testing import FakeLLMConfig, FakeLLMThread  # noqa: E402

pytestmark = [pytest.mark.store("postgres"), pytest.mark.slow]


def _task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "registered"
    d.mkdir()
    (d / "plain.jsonl").write_text(plain_data(200))
    (d / "plain.yaml").write_text(PLAIN_TASK.replace("tasks/plain.jsonl", str(d / "plain.jsonl")))
    return d


def _status(http: httpx.Client, job_id: str) -> str:
    r = http.get(f"/job/{job_id}")
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def _submit_running(http: httpx.Client, base_url: str) -> str:
    r = http.post("/job", json=body_for(base_url))
    assert r.status_code == 200, r.text
    job_id = str(r.json()["job_id"])
    for _ in range(3000):  # bounded: ~60 s
        status = _status(http, job_id)
        if status != "Queued":
            assert status == "Running", status
            return job_id
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never started")


def test_lm_eval_servers_stop_and_delete_routes_stop_a_job_another_server_runs(make_server, tmp_path: Path) -> None:
    data, lm_eval = tmp_path / "data", {"task_dirs": {"plain": str(_task_dir(tmp_path))}, "env_vars": ["FOO"]}
    servers = [make_server(data_dir=data, slots=1, lm_eval=lm_eval) for _ in range(2)]
    servers[1].tokens = servers[0].tokens  # the same store: one set of tokens
    clients = [s.client("alice") for s in servers]
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.5)) as llm:
        # GET /job/{id}/stop through the server that does not run the job
        job_id = _submit_running(clients[0], llm.base_url)
        other = clients[1 - _runner(servers)]
        assert other.get(f"/job/{job_id}/stop").json() == {"status": "success", "message": f"Job {job_id} stopped."}
        assert _status(other, job_id) == "Stopped"

        # DELETE /job/{id} through the server that does not run the job: stopped, then deleted
        job_id = _submit_running(clients[0], llm.base_url)
        other = clients[1 - _runner(servers)]
        r = other.delete(f"/job/{job_id}")
        assert r.json() == {"status": "success", "message": f"Job {job_id} deleted successfully."}, r.text
        assert [c.get(f"/job/{job_id}").status_code for c in clients] == [404, 404]
        assert not (data / "jobs" / job_id).exists()

        # GET /jobs/stop: one job on each server, both stopped by one of them
        both = sorted(_submit_running(clients[i], llm.base_url) for i in (0, 1))
        r = clients[0].get("/jobs/stop").json()
        assert r["status"] == "success" and sorted(r["job_ids"]) == both, r
        assert [_status(clients[0], j) for j in both] == ["Stopped", "Stopped"]
