"""A batch the server refuses part way is withdrawn whole: no job of it stays queued or running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import create_token, start_server, stop_process, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread


@pytest.mark.parametrize(
    ("limit", "error", "queued_first"),
    [
        (["--rate-limit", "2/1h"], "quota of 2/1h jobs used up", 2),  # 429 for the third job
        (["--queue-max", "1"], "queue is full", None),  # 503 once the one queue place is taken
    ],
)
def test_a_batch_refused_part_way_is_cancelled_whole_and_says_how_to_retry(
    tmp_path: Path, store_backend: str, limit: list[str], error: str, queued_first: int | None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    # The jobs would run for minutes: whatever the batch queued is still queued or running when
    # the refusal comes, unless the client withdraws it.
    with FakeLLMThread(FakeLLMConfig(reply="arith", hang_rate=1.0, hang_seconds=60.0)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=20, concurrency=1)
        proc, url = start_server(data, tmp_path / "server.log", *limit)
        try:
            env = dict(os.environ, PROCTOR_SERVER=url, PROCTOR_TOKEN=token)
            models = [arg for i in range(4) for arg in ("--model", f"subject={llm.base_url}@m{i}")]
            result = subprocess.run(
                [sys.executable, "-m", "proctor", "submit", str(spec), *models, "-d"],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 1, output
            assert "Traceback" not in output and error in result.stderr, output
            report = re.search(r"batch (\S+): job (\d) of 4 \((.*?)\) was not queued: (.*)", result.stderr)
            assert report, result.stderr
            batch, failed_at = report.group(1), int(report.group(2))
            assert report.group(3) == f"{spec} × m{failed_at - 1}" and error in report.group(4)
            assert "run the same command again" in result.stderr
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                jobs = http.get("/v1/jobs", params={"batch": batch}).json()["jobs"]
                everything = http.get("/v1/jobs").json()["jobs"]
            assert len(jobs) == failed_at - 1 >= 1, jobs
            if queued_first is not None:
                assert len(jobs) == queued_first
            assert all(job["state"] == "cancelled" for job in jobs), jobs
            assert not [job for job in everything if job["state"] in ("queued", "running")], everything
            for job in jobs:
                assert job["id"] in result.stderr  # each withdrawn job is named
        finally:
            stop_process(proc)
