"""End to end with the real engine (`proctor run`) and the fake LLM, the server as a subprocess.

Covers: restart after SIGKILL of the server resumes the job from its ledger (per-sample request
counts), `waiting_for_credentials` → `proctor resume`, and that a public-mode API key lands in no
file under the data dir and in no log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import create_token, start_server, stop_process

from proctor.client import Client
from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-proctor-test-" + "k3y" * 8
N = 24


def _spec_dir(tmp_path: Path, base_url: str) -> Path:
    src = ROOT / "examples" / "arith"
    d = tmp_path / "spec"
    d.mkdir()
    lines = (src / "data.jsonl").read_text().splitlines()[:N]
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    spec = (src / "spec.yaml").read_text().replace("http://127.0.0.1:8000/v1", base_url)
    spec = spec.replace("concurrency: 32", "concurrency: 2")
    (d / "spec.yaml").write_text(spec.replace("model: fake}", "model: fake, api_key_env: ARITH_KEY}"))
    return d


class ServerProcess:
    """`python -m proctor serve` in its own process group, stopped by its own handle."""

    def __init__(self, data: Path, log: Path) -> None:
        self.proc, self.url = start_server(data, log)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


def _cwd(proc: psutil.Process) -> str | None:
    try:
        return proc.cwd()
    except psutil.Error:
        return None


def _dead(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_sigkill_restart_resumes_and_key_never_written(tmp_path: Path) -> None:
    data, server_log = tmp_path / "data", tmp_path / "server-stderr.log"
    data.mkdir()
    token = create_token(data, "alice")
    with FakeLLMThread(FakeLLMConfig(latency=0.05, reply="arith", require_key=KEY)) as llm:
        spec_dir = _spec_dir(tmp_path, llm.base_url)
        server = ServerProcess(data, server_log)
        servers = [server]
        try:
            os.environ["ARITH_KEY"] = KEY  # the client reads it locally and sends it in the body
            try:
                with Client(server.url, token) as client:
                    job = client.submit(spec_dir / "spec.yaml")["job"]
            finally:
                del os.environ["ARITH_KEY"]
            job_id = job["id"]
            for _ in range(3000):  # bounded: wait until some samples are done
                if sum(llm.successes.values()) >= 6:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the job made no progress")
            # The server dies hard; its orphaned job is stalled so the restart finds it mid-run.
            llm.reconfigure(hang_rate=1.0, hang_seconds=30.0)
            job_dir = str((data / "jobs" / job_id).resolve())
            orphans = [p for p in psutil.process_iter() if _cwd(p) == job_dir]
            assert orphans, "the job's process should be running"
            server.sigkill()
            assert all(p.is_running() for p in orphans)  # it outlived the server
            server = ServerProcess(data, server_log)
            servers.append(server)
            llm.reconfigure(hang_rate=0.0)
            with Client(server.url, token) as client:
                status = client.status(job_id)
                assert status["state"] == "waiting_for_credentials"
                assert status["waiting_for"] == ["PROCTOR_API_KEY_SUBJECT"]
                # the restarted server stopped the orphan before resuming the job from its ledger
                assert all(_dead(p) for p in orphans)
                env = dict(os.environ, ARITH_KEY=KEY, PROCTOR_SERVER=server.url, PROCTOR_TOKEN=token)
                out = subprocess.run(
                    [sys.executable, "-m", "proctor", "resume", job_id, "--api-key-env", "ARITH_KEY"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                )
                assert out.returncode == 0, out.stderr
                assert KEY not in out.stdout + out.stderr
                final = client.wait(job_id)
                assert final["state"] == "succeeded", final
                assert final["attempts"] == 2
                stats = client.download(job_id, "out/eval_stats.json", tmp_path / "stats.json").read_text()
            assert len(llm.counts) == N
            redone = [k for k, c in llm.counts.items() if c > 1]
            assert len(redone) <= 2, redone  # at most the samples in flight when it was stopped
            assert '"accuracy"' in stats or "accuracy" in stats
        finally:
            for s in servers:
                s.stop()
    needle = KEY.encode()
    leaks = [str(p) for p in data.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaks == []
    assert needle not in server_log.read_bytes()
