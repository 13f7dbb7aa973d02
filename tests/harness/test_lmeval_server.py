"""Job kind ``lm_eval`` on a real (sandboxed) server: `proctor submit` as a process, private mode
through the tunnel, and a restart in the middle of a job; the engine is a child process in its
sandbox, the model a fake LLM server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "server")]

from lmeval_kit import PLAIN_TASK, plain_data  # noqa: E402
from server_helpers import start_server, wait_state  # noqa: E402

from proctor.client import Client  # noqa: E402
from proctor.testing import FakeLLMConfig, FakeLLMThread  # noqa: E402

pytest.importorskip("lm_eval")

N = 12
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def write_spec(tmp_path: Path, base_url: str, concurrency: int = 4, **subject: Any) -> Path:
    """An lm_eval spec with its task YAML and data in tasks/ (no Python: uploadable)."""
    d = tmp_path / "spec"
    (d / "tasks").mkdir(parents=True, exist_ok=True)
    (d / "tasks" / "plain.yaml").write_text(PLAIN_TASK)
    (d / "tasks" / "plain.jsonl").write_text(plain_data(N))
    spec = {
        "name": "plain-lm-eval",
        "lm_eval": {"tasks": ["plain_arith"], "include_path": "tasks"},
        "models": {"subject": {"base_url": base_url, "model": "fake", **subject}},
        "concurrency": concurrency,
    }
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    return d / "spec.yaml"


def exact_match(stats: dict[str, Any]) -> float:
    return float(next(b["value"] for b in stats["metrics"] if b["metric"] == "exact_match"))


def test_proctor_submit_runs_an_lm_eval_spec_as_a_job(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
            spec = write_spec(tmp_path, llm.base_url)
            env = {"PROCTOR_SERVER": srv.url, "PROCTOR_TOKEN": srv.tokens["alice"], "PATH": "/usr/bin:/bin"}
            out = tmp_path / "results"
            result = subprocess.run(
                [sys.executable, "-m", "proctor", "submit", str(spec), "--out", str(out)],
                capture_output=True,
                text=True,
                timeout=300,
                env=env,
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            assert sorted(llm.counts.values()) == [1] * N  # each request sent once
        http = srv.client("alice")
        (job,) = http.get("/v1/jobs").json()["jobs"]
        assert job["kind"] == "lm_eval" and job["state"] == "succeeded"
        assert job["progress"]["done"] == job["progress"]["total"] == N
        stats = json.loads(http.get(f"/v1/jobs/{job['id']}/artifacts/out/eval_stats.json").text)
        assert stats["status"] == "complete" and exact_match(stats) == 1.0
        names = {a["path"] for a in http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        assert any(n.startswith("out/lm_eval/fake/results_") for n in names), names
        assert "tasks/plain.yaml" in names and "tasks/plain.jsonl" in names  # the uploads
        assert (out / "out" / "eval_stats.json").is_file() or any(out.rglob("eval_stats.json"))
    finally:
        srv.stop()


def test_a_private_lm_eval_job_sends_its_requests_through_the_tunnel(tmp_path: Path) -> None:
    pytest.importorskip("proctor.tunnel.agent")
    from test_private_jobs import Agent  # the submitter's agent on a thread, as `submit --private` runs it

    srv = start_server(tmp_path / "data")
    agent = None
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm, Client(srv.url, srv.tokens["alice"]) as client:
            answer = client.submit(write_spec(tmp_path, llm.base_url), private=True)
            job_id = answer["job"]["id"]
            assert answer["job"]["kind"] == "lm_eval"
            agent = Agent(srv.url, job_id, srv.tokens["alice"], answer["tunnel_secret"], llm.base_url)
            final = wait_state(srv.client("alice"), job_id, FINAL, limit=12000)
            assert final["state"] == "succeeded", (srv.settings.jobs_dir / job_id / "job.log").read_text()[-3000:]
            assert sorted(llm.counts.values()) == [1] * N
        stored = (srv.settings.jobs_dir / job_id / "spec.yaml").read_text()
        assert llm.base_url not in stored  # the submitter's local URL never reached the server
        stats = json.loads((srv.settings.jobs_dir / job_id / "out" / "eval_stats.json").read_text())
        assert exact_match(stats) == 1.0
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()


def test_a_server_restart_resumes_an_lm_eval_job_without_redoing_answered_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data)
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.3)) as llm:
            with Client(srv.url, srv.tokens["alice"]) as client:
                job_id = client.submit(write_spec(tmp_path, llm.base_url, concurrency=2))["job"]["id"]
            for _ in range(3000):  # bounded: 60 s
                if sum(llm.counts.values()) >= 4:
                    break
                time.sleep(0.02)
            port = srv.settings.port
            srv.stop()  # the job's processes end with the server; the job stays in the store
            tokens = srv.tokens
            srv = start_server(data, port=port)
            srv.tokens = tokens  # the store kept them
            final = wait_state(srv.client("alice"), job_id, FINAL, limit=12000)
            assert final["state"] == "succeeded", (srv.settings.jobs_dir / job_id / "job.log").read_text()[-3000:]
            assert final["attempts"] >= 2
            counts = llm.counts
        # Every request answered; only those in flight at the stop (at most the concurrency) twice.
        assert len(counts) == N and set(counts.values()) <= {1, 2}
        assert sum(1 for c in counts.values() if c == 2) <= 2
        stats = json.loads((data / "jobs" / job_id / "out" / "eval_stats.json").read_text())
        assert exact_match(stats) == 1.0 and stats["requests"]["sent_this_session"] < N
    finally:
        srv.stop()


def test_a_job_with_a_failing_request_fails_and_resume_retry_errors_sends_only_it(tmp_path: Path) -> None:
    failing = "plain_arith/3/0"
    srv = start_server(tmp_path / "data")
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith", fail_samples={failing: -1})) as llm:
            retry = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}
            with Client(srv.url, srv.tokens["alice"]) as client:
                job_id = client.submit(write_spec(tmp_path, llm.base_url, retry=retry))["job"]["id"]
                http = srv.client("alice")
                final = wait_state(http, job_id, FINAL, limit=12000)
                assert final["state"] == "failed" and final["exit_code"] == 1, final
                assert "metrics withheld" in final["note"] and "--retry-errors" in final["note"]
                stats = http.get(f"/v1/jobs/{job_id}/artifacts/out/eval_stats.json").json()
                assert stats["status"] == "incomplete" and [f["request"] for f in stats["failures"]] == [failing]
                llm.reconfigure(fail_samples={})
                before = llm.counts
                client.resume(job_id, retry_errors=True)
                for _ in range(3000):  # bounded: the resumed attempt must finish (60 s)
                    final = http.get(f"/v1/jobs/{job_id}").json()
                    if final["state"] in FINAL and final["attempts"] >= 2:
                        break
                    time.sleep(0.02)
                assert final["state"] == "succeeded", final
                after = llm.counts
        sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert sent == {failing: 1}
    finally:
        srv.stop()
