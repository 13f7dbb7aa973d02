"""lm-eval-server's API on a real (sandboxed) server, driven with the request bodies of
lm-eval-server's own README and example.json (Authorization header added)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "server")]

from lmeval_kit import PLAIN_TASK, plain_data  # noqa: E402
from server_helpers import start_server  # noqa: E402

from proctor.testing import FakeLLMConfig, FakeLLMThread  # noqa: E402

pytest.importorskip("lm_eval")

# lm-eval-server's example.json, verbatim.
EXAMPLE_JSON = {
    "model": "local-completions",
    "tasks": "mmlu",
    "model_args": "model=phi3,base_url=http://localhost:8081/v1/completions,num_concurrent=1,max_retries=3,"
    "tokenized_requests=False,tokenizer=microsoft/Phi-3",
    "limit": 1,
    "env_vars": {"FOO": "BAR"},
}
# The request body its README lists (every lm-eval CLI argument, placeholder values), verbatim.
README_BODY = {
    "model": "hf",
    "tasks": "string",
    "model_args": "",
    "num_fewshot": 0,
    "batch_size": "1",
    "max_batch_size": 0,
    "device": "string",
    "output_path": "string",
    "limit": 0,
    "use_cache": "string",
    "cache_requests": "string",
    "check_integrity": False,
    "write_out": False,
    "log_samples": False,
    "system_instruction": "string",
    "apply_chat_template": False,
    "fewshot_as_multiturn": False,
    "show_config": False,
    "include_path": "string",
    "gen_kwargs": "string",
    "verbosity": "INFO",
    "wandb_args": "",
    "hf_hub_log_args": "",
    "predict_only": False,
    "seed": "0,1234,1234,1234",
    "trust_remote_code": False,
}
N = 8
SUMMARY_KEYS = {"job_id", "argument", "status", "timestamp", "exit_code", "inference_progress_pct"}


def task_dir(tmp_path: Path) -> Path:
    """A task directory the admin registers as ``plain`` (data path absolute: a job's cwd is its own)."""
    d = tmp_path / "registered"
    d.mkdir()
    (d / "plain.jsonl").write_text(plain_data(N))
    task = PLAIN_TASK.replace("tasks/plain.jsonl", str(d / "plain.jsonl"))
    # The admin's own task code (allowed in a registered directory) records what env_vars set.
    (d / "plain.yaml").write_text(task + "process_docs: !function utils.record_env\n")
    (d / "utils.py").write_text(
        "import os\nfrom pathlib import Path\n\n\ndef record_env(docs):\n"
        "    Path('out/env_foo.txt').write_text(os.environ.get('FOO', 'unset'))\n    return docs\n"
    )
    return d


def body_for(base_url: str, **extra: Any) -> dict[str, Any]:
    """example.json's shape against the fake model and the registered task."""
    return {
        "model": "local-completions",
        "tasks": "plain_arith",
        "model_args": f"model=fake,base_url={base_url}/completions,num_concurrent=2,max_retries=3,"
        "tokenized_requests=False,tokenizer=microsoft/Phi-3",
        "include_path": "plain",
        "env_vars": {"FOO": "BAR"},
        **extra,
    }


def wait_status(http: httpx.Client, job_id: str, statuses: set[str], limit: int = 12000) -> dict[str, Any]:
    for _ in range(limit):  # bounded: 0.02 s each
        job = http.get(f"/job/{job_id}").json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = start_server(
        tmp_path / "data",
        lm_eval={"task_dirs": {"plain": str(task_dir(tmp_path))}, "builtin_tasks": ["mmlu"], "env_vars": ["FOO"]},
    )
    yield srv
    srv.stop()


def test_a_job_runs_to_completion_and_reads_like_lm_eval_servers(server: Any) -> None:
    http = server.client("alice")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        r = http.post("/job", json=body_for(llm.base_url))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) == {"status", "message", "job_id"} and answer["status"] == "success"
        job_id = answer["job_id"]
        assert answer["message"] == f"Job {job_id} successfully queued."
        job = wait_status(http, job_id, {"Completed", "Failed"})
        assert job["status"] == "Completed", job["stdout"]
        assert sorted(llm.counts.values()) == [1] * N
    assert (server.settings.jobs_dir / job_id / "out" / "env_foo.txt").read_text() == "BAR"  # env_vars applied
    assert SUMMARY_KEYS | {"stdout", "stderr"} == set(job)
    assert job["exit_code"] == 0 and job["inference_progress_pct"] == 100
    assert job["argument"].startswith("lm_eval run --model local-completions --model_args model=fake,base_url=")
    assert "--tasks plain_arith" in job["argument"] and "num_concurrent=2" in job["argument"]
    assert job["stdout"] and len(job["stdout"]) <= 200 and job["stderr"] == []
    assert any("plain_arith" in line for line in job["stdout"])
    listed = http.get("/jobs").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id] and set(listed[0]) == SUMMARY_KEYS
    assert http.get("/jobs?include_completed=False").json() == {"jobs": []}
    assert http.get("/jobs?include_finished=false").json() == {"jobs": []}
    # The same job through proctor's own API: an lm_eval job, with lm-eval's outputs as artifacts.
    stats = http.get(f"/v1/jobs/{job_id}/artifacts/out/eval_stats.json").json()
    assert stats["status"] == "complete" and stats["metrics"][0]["value"] == 1.0
    # Another user sees none of it.
    bob = server.client("bob")
    assert bob.get("/jobs").json() == {"jobs": []}
    assert bob.get(f"/job/{job_id}").status_code in (403, 404)
    assert bob.delete(f"/job/{job_id}").status_code in (403, 404)
    assert server.client(None).get("/jobs").status_code == 401
    # DELETE /job/{id}: gone from the listing and from the disk.
    r = http.delete(f"/job/{job_id}")
    assert r.json() == {"status": "success", "message": f"Job {job_id} deleted successfully."}
    assert http.get("/jobs").json() == {"jobs": []} and http.get(f"/job/{job_id}").status_code == 404
    assert not (server.settings.jobs_dir / job_id).exists()


def test_stop_shows_exact_progress_from_the_ledger_and_the_bulk_routes(server: Any) -> None:
    http = server.client("alice")
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.5)) as llm:
        first = http.post("/job", json=body_for(llm.base_url)).json()["job_id"]
        second = http.post("/job", json=body_for(llm.base_url)).json()["job_id"]  # queued: one slot
        for _ in range(3000):  # bounded: 60 s
            if llm.successes and sum(llm.successes.values()) >= 2:
                break
            time.sleep(0.02)
        assert http.get("/jobs?include_completed=False").json()["jobs"][0]["status"] == "Running"
        r = http.get(f"/job/{first}/stop")
        assert r.json() == {"status": "success", "message": f"Job {first} stopped."}
        job = http.get(f"/job/{first}").json()
        assert job["status"] == "Stopped"
        ledger = server.settings.jobs_dir / first / "out" / "ledger.sqlite"
        conn = sqlite3.connect(ledger)
        total, done = conn.execute("SELECT count(*), sum(state = 'scored') FROM samples").fetchone()
        conn.close()
        assert 0 < done < total and job["inference_progress_pct"] == int(100 * done / total)
        assert http.get(f"/job/{first}/stop").json()["message"] == f"Job {first} has already finished."
        # GET /jobs/stop stops the rest; DELETE /jobs deletes everything.
        r = http.get("/jobs/stop").json()
        assert r["status"] == "success" and r["job_ids"] == [second]
        assert {j["status"] for j in http.get("/jobs").json()["jobs"]} == {"Stopped"}
        r = http.delete("/jobs").json()
        assert r["status"] == "success" and sorted(r["job_ids"]) == sorted([first, second])
        assert http.get("/jobs").json() == {"jobs": []}


def test_the_readme_example_json_is_queued_unchanged(server: Any) -> None:
    """example.json as it is: mmlu (a built-in task this server allows), FOO (an allowed variable)."""
    http = server.client("alice")
    r = http.post("/job", json=EXAMPLE_JSON)
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    job = http.get(f"/job/{job_id}").json()
    assert job["status"] in ("Queued", "Running", "Failed")
    assert (
        "--tasks mmlu --limit 1" in job["argument"]
        and "base_url=http://localhost:8081/v1/completions" in job["argument"]
    )
    stored = json.loads(json.dumps(server.settings.jobs_dir.joinpath(job_id, "spec.yaml").read_text()))
    assert "FOO" not in stored  # env_vars go to the job's environment, not its spec
    http.get(f"/job/{job_id}/stop")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({}, "device"),  # the README's body as it is: placeholders for arguments proctor does not serve
        ({"device": None, "use_cache": None, "cache_requests": None, "system_instruction": None}, "output_path"),
    ],
)
def test_the_readme_body_is_refused_naming_what_proctor_does_not_serve(
    server: Any, change: dict[str, Any], named: str
) -> None:
    http = server.client("alice")
    r = http.post("/job", json={k: v for k, v in {**README_BODY, **change}.items() if v is not None})
    assert r.status_code == 400, r.text
    assert r.json()["ok"] is False and named in r.json()["error"] and r.json().get("hint")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "hf"}, "hf"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"lm_eval_path": "/bin/sh"}, "lm_eval_path"),
        ({"output_path": "/tmp/out"}, "output_path"),
        ({"env_vars": {"LD_PRELOAD": "/tmp/x.so"}}, "LD_PRELOAD"),
        ({"include_path": "/etc"}, "include_path"),
        ({"include_path": "unregistered"}, "include_path"),
        ({"tasks": "gsm8k"}, "gsm8k"),
        ({"model_args": "model=fake,base_url=http://127.0.0.1:9/v1/completions,trust_remote_code=True"}, "trust"),
        ({"model_args": "model=fake,base_url=http://127.0.0.1:9/v1/completions,tokenized_requests=True"}, "tokenized"),
        ({"limit": 0.5}, "limit"),
        ({"bogus_flag": 1}, "bogus_flag"),
    ],
)
def test_unsafe_or_unsupported_arguments_are_refused_naming_them(
    server: Any, change: dict[str, Any], named: str
) -> None:
    http = server.client("alice")
    r = http.post("/job", json=body_for("http://127.0.0.1:9/v1", **change))
    assert r.status_code == 400, r.text
    assert r.json()["ok"] is False and named in r.json()["error"]
    assert http.get("/jobs").json() == {"jobs": []}  # nothing queued


def test_an_infinite_limit_is_a_400_not_a_crash(server: Any) -> None:
    text = json.dumps(body_for("http://127.0.0.1:9/v1", limit=7)).replace('"limit": 7', '"limit": 1e999')
    r = server.client("alice").post("/job", content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "limit" in r.json()["error"], r.text
