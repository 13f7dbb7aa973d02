"""A sandboxed `proctor serve` runs an ``executor: {kind: ray}`` job on the session's Ray through
Ray Client (``ray://``), and refuses at startup a Ray address its sandboxed jobs could not use."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import create_token, read_jsonl, run_proctor, start_server, stop_process
from ray_kit import RayCluster, listening, ray_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]

ROWS = [
    {"id": f"q{i}", "question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2 + (i % 4 == 0))} for i in range(16)
]  # every fourth target is wrong: the scores differ between samples


def spec(base_url: str) -> dict[str, Any]:
    return ray_spec(base_url, "sandboxed-ray")


def comparable(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "duration"} for row in read_jsonl(out / "samples.jsonl")]


def wait_done(client: httpx.Client, job_id: str, seconds: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in {"succeeded", "failed", "cancelled", "timed_out"}:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_a_sandboxed_server_job_runs_on_the_cluster_through_ray_client(tmp_path: Path, ray_cluster: RayCluster) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"ray_address": ray_cluster.client_address}), encoding="utf-8")
    token = create_token(data, "alice")
    rows = "".join(json.dumps(r) + "\n" for r in ROWS)
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.01)) as llm:
        proc, url = start_server(data, tmp_path / "server.log", "--config", str(cfg))  # sandbox on (the default)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
                body = {
                    "kind": "proctor",
                    "spec": yaml.safe_dump(spec(llm.base_url)),
                    "files": {"data.jsonl": {"content": rows}},
                }
                r = client.post("/v1/jobs", json=body)
                assert r.status_code in (200, 201, 202), r.text
                job_id = r.json()["job"]["id"]
                job = wait_done(client, job_id)
                job_dir = data / "jobs" / job_id
                log = (job_dir / "job.log").read_text(errors="replace") if (job_dir / "job.log").exists() else ""
                assert job["state"] == "succeeded", f"{job}\n{log[-3000:]}"
                # Only loopback: the server, and every process of the cluster (its client server included).
                pids = {p.pid for p in ray_cluster.members()} | {proc.pid}
                sockets = listening(pids)
        finally:
            stop_process(proc)
        ray_counts = llm.counts
        local_dir = tmp_path / "local"
        local_dir.mkdir()
        (local_dir / "data.jsonl").write_text(rows, encoding="utf-8")
        (local_dir / "spec.yaml").write_text(yaml.safe_dump(spec(llm.base_url)), encoding="utf-8")
        local = run_proctor(
            "run", local_dir / "spec.yaml", "--out", tmp_path / "local-out", "--executor", "local", "--progress", "none"
        )
        assert local.returncode == 0, local.stderr
    assert len(ray_counts) == len(ROWS) and set(ray_counts.values()) == {1}, ray_counts  # each sample once
    assert comparable(job_dir / "out") == comparable(tmp_path / "local-out")
    stats = json.loads((job_dir / "out" / "eval_stats.json").read_text(encoding="utf-8"))
    assert stats["counts"]["scored"] == len(ROWS) and stats["accuracy"]["correct"] == 12
    assert "executor:\n  kind: ray" in (job_dir / "out" / "spec.yaml").read_text(encoding="utf-8")
    assert any(local.endswith(ray_cluster.client_address.rsplit(":", 1)[1]) for _, local in sockets), sockets
    outside = [(pid, a) for pid, a in sockets if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert not outside, f"listening beyond loopback: {outside}"


def test_a_sandboxed_server_refuses_a_gcs_ray_address_at_startup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump({"ray_address": "127.0.0.1:6379"}), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "proctor", "serve", "--port", "0", "--data", str(data), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ray://HOST:PORT" in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_the_accepted_ray_address_forms() -> None:
    from proctor.errors import InputError
    from proctor.executors.on_server import check_ray_address

    check_ray_address(None, sandboxed=True)
    check_ray_address("ray://10.0.0.5:10001", sandboxed=True)
    check_ray_address("ray://10.0.0.5:10001", sandboxed=False)
    check_ray_address("10.0.0.5:6379", sandboxed=False)  # a GCS address: only without the sandbox
    with pytest.raises(InputError, match="ray://HOST:PORT"):
        check_ray_address("10.0.0.5:6379", sandboxed=True)
    with pytest.raises(InputError, match="is not an address"):
        check_ray_address("ray://a b:1", sandboxed=True)
