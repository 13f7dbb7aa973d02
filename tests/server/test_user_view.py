"""What a user reads of a server job: submit's report, status, logs, and the server's own log.

The server runs as a child process and the job is the real engine against the fake LLM
(issue 15, item 9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import create_token, start_server, stop_process

from proctor.client import Client
from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[2]
N = 12


def _proctor(*args: str | Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


@pytest.mark.slow
def test_submit_status_logs_read_as_text_and_the_server_logs_its_start_and_stop(tmp_path: Path) -> None:
    data, server_err = tmp_path / "data", tmp_path / "server-stderr.log"
    data.mkdir()
    token = create_token(data, "alice")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    rows = (ROOT / "examples" / "arith" / "data.jsonl").read_text().splitlines()[:N]
    (spec_dir / "data.jsonl").write_text("\n".join(rows) + "\n")
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.02)) as llm:
        (spec_dir / "spec.yaml").write_text(
            (ROOT / "examples" / "arith" / "spec.yaml").read_text().replace("http://127.0.0.1:8000/v1", llm.base_url)
        )
        proc, url = start_server(data, server_err)
        try:
            env = {"PROCTOR_SERVER": url, "PROCTOR_TOKEN": token}
            afile = tmp_path / "afile"
            afile.write_text("x")
            refused = _proctor("submit", spec_dir / "spec.yaml", "--out", afile, env=env, cwd=tmp_path)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
            assert f"Error: download directory (--out) {afile} is a file, not a directory" in refused.stderr
            refused = _proctor(
                "submit", spec_dir / "spec.yaml", "--model", f"judg={llm.base_url}@j", env=env, cwd=tmp_path
            )
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
            assert "Error: the spec uses no role 'judg'; its roles are: subject" in refused.stderr
            with Client(url, token) as client:
                assert client.list() == []  # both refused before anything was queued
            dest = tmp_path / "results"
            submitted = _proctor("submit", spec_dir / "spec.yaml", "--out", dest, env=env, cwd=tmp_path)
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            job_id = submitted.stdout.split()[1]
            # The report names where the results are here, never the server's job directory.
            assert f"run directory: {(dest / 'out').resolve()}" in submitted.stdout.splitlines()
            assert str(data.resolve()) not in submitted.stdout
            assert (dest / "out" / "eval_stats.json").is_file()
            assert (dest / "out" / "ledger.sqlite").is_file()

            status = _proctor("status", job_id, env=env, cwd=tmp_path)
            assert status.returncode == 0, status.stderr
            assert f"{N}/{N} (100%), 0 errors, acc " in status.stdout
            assert "{" not in status.stdout and "'done'" not in status.stdout

            refused = _proctor("results", job_id, "--out", afile / "sub", env=env, cwd=tmp_path)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
            assert f"Error: cannot create download directory {afile / 'sub'}: Not a directory" in refused.stderr

            logs = _proctor("logs", job_id, env=env, cwd=tmp_path)
            assert logs.returncode == 0, logs.stderr
            assert "PROCTOR_PROGRESS" not in logs.stdout
            assert "accuracy" in logs.stdout  # the engine's report is still there
        finally:
            stop_process(proc)
    assert proc.returncode in (0, -15)  # uvicorn ends with the SIGTERM it handled
    for text in (server_err.read_text(), (data / "server.log").read_text()):
        assert f"proctor server on {url} (data" in text
        assert f"proctor server on {url} stopped" in text.splitlines()[-1]


@pytest.mark.slow
def test_status_after_a_resumed_job_shows_the_accuracy_of_the_whole_run(tmp_path: Path) -> None:
    """Issue 15, item 7: the first session scores 0/10 (10 errors), the resumed one 10/10; the run 10/20."""
    data, server_err = tmp_path / "data", tmp_path / "server-stderr.log"
    data.mkdir()
    token = create_token(data, "alice")
    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1 + (i < 10))} for i in range(20)]
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    failing = {f"q{i}": -1 for i in range(10, 20)}
    with FakeLLMThread(FakeLLMConfig(reply="arith", fail_samples=failing)) as llm:
        (spec_dir / "spec.yaml").write_text(f"""name: resumed
dataset: {{path: data.jsonl, fields: {{input: question, target: answer}}}}
solver: generate
scorer: numeric
models:
  subject:
    base_url: {llm.base_url}
    model: fake
    retry: {{max_attempts: 2, backoff_base: 0.01, backoff_max: 0.02}}
    health: {{failure_threshold: 1000}}
concurrency: 1
""")
        proc, url = start_server(data, server_err)
        try:
            env = {"PROCTOR_SERVER": url, "PROCTOR_TOKEN": token}
            with Client(url, token) as client:
                job_id = client.submit(spec_dir / "spec.yaml")["job"]["id"]
                first = client.wait(job_id, timeout=120)
                assert first["progress"]["errors"] == 10 and first["progress"]["accuracy"] == 0, first
                llm.reconfigure(fail_samples={})
                client.resume(job_id, retry_errors=True)
                final = client.wait(job_id, timeout=120)
                assert final["state"] == "succeeded", final
                stats = json.loads(client.download(job_id, "out/eval_stats.json", tmp_path / "stats.json").read_text())
            assert stats["accuracy"]["value"] == 0.5 and stats["resumed_samples"] == 10
            status = _proctor("status", job_id, env=env, cwd=tmp_path)
            assert status.returncode == 0, status.stderr
            assert "20/20 (100%), 0 errors, acc 50.0%" in status.stdout
        finally:
            stop_process(proc)
