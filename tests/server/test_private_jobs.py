"""Private-mode jobs on the real server: the engine as a child process, its model behind the tunnel.

The server runs in a thread (``served_app``: the tunnel's fast path in front of the app, as
``proctor serve`` runs it) with a short tunnel grace; agents run in-process, each on its own
thread and loop, and are stopped by their own handles. The local models are fake LLMs in threads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from server_helpers import start_server, wait_state

from proctor.client import Client
from proctor.testing import FakeLLMConfig, FakeLLMThread
from proctor.tunnel.agent import run_agent_sync

ROOT = Path(__file__).resolve().parents[2]
N = 8


def _spec(tmp_path: Path, model_url: str = "http://127.0.0.1:9/v1") -> Path:
    """The arith example, cut to N samples; its subject names a local model (never uploaded)."""
    d = tmp_path / "spec"
    d.mkdir(exist_ok=True)
    rows = (ROOT / "examples" / "arith" / "data.jsonl").read_text().splitlines()[:N]
    (d / "data.jsonl").write_text("\n".join(rows) + "\n")
    spec = (ROOT / "examples" / "arith" / "spec.yaml").read_text()
    spec = spec.replace("http://127.0.0.1:8000/v1", model_url).replace("concurrency: 32", "concurrency: 2")
    (d / "spec.yaml").write_text(spec)
    return d / "spec.yaml"


class Agent:
    """``run_agent_sync`` on a thread, as ``proctor submit --private`` runs it."""

    def __init__(self, url: str, job_id: str, token: str, secret: str, model_url: str) -> None:
        self.lines: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=run_agent_sync,
            kwargs=dict(
                server_url=url,
                job_id=job_id,
                token=token,
                tunnel_secret=secret,
                model_url=model_url,
                stop_event=self.stop_event,
                log=self.lines.append,
            ),
            daemon=True,
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "tunnel agent did not stop"


def _wait(predicate: Any, what: str, limit: int = 9000) -> None:
    for _ in range(limit):  # bounded: 180 s and more
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_private_job_waits_for_its_tunnel_and_resumes_without_errors(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", tunnel_grace=0.3)
    agents: list[Agent] = []
    token = srv.tokens["alice"]
    try:
        http = srv.client("alice")
        with (
            FakeLLMThread(FakeLLMConfig(reply="arith", hang_rate=1.0, hang_seconds=120)) as stuck,
            FakeLLMThread(FakeLLMConfig(reply="arith")) as good,
            Client(srv.url, token) as client,
        ):
            answer = client.submit(_spec(tmp_path), private=True)
            job_id, secret = answer["job"]["id"], answer["tunnel_secret"]

            # No agent yet: the job starts, its calls wait in the facade, and after the grace the
            # job shows waiting_for_tunnel (the engine neither fails its start-up nor its samples).
            wait_state(http, job_id, {"waiting_for_tunnel"})
            assert "proctor_jobs_waiting_for_tunnel 1" in http.get("/metrics").text
            spec = yaml.safe_load((srv.settings.jobs_dir / job_id / "spec.yaml").read_text())
            subject = spec["models"]["subject"]
            assert subject["request_timeout"] > srv.settings.tunnel_request_deadline
            assert subject["retry"]["total_deadline"] > srv.settings.tunnel_request_deadline
            assert subject["health"]["check_at_start"] is False
            assert "127.0.0.1:9/" not in json.dumps(spec)  # the local URL never reached the server

            # An agent attaches: running again; its model holds every call (no sample can finish).
            agents.append(Agent(srv.url, job_id, token, secret, stuck.base_url))
            _wait(lambda: sum(stuck.counts.values()) >= 1, "a call to reach the first agent's model")
            assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "running"

            # It goes away for longer than the grace: waiting_for_tunnel, visible in the job's status.
            agents[0].stop()
            wait_state(http, job_id, {"waiting_for_tunnel"})

            # Another one attaches: the unanswered calls are replayed to it, and the job runs again.
            seen = sum(stuck.counts.values())
            agents.append(Agent(srv.url, job_id, token, secret, stuck.base_url))
            _wait(lambda: sum(stuck.counts.values()) > seen, "the replayed calls to reach the model")
            assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "running"

            # A healthy agent joins and the stuck one leaves: its calls move over, the job finishes.
            agents.append(Agent(srv.url, job_id, token, secret, good.base_url))
            _wait(lambda: any("connected" in line for line in agents[2].lines), "the third agent to connect")
            agents[1].stop()
            final = wait_state(http, job_id, {"succeeded", "failed", "cancelled", "timed_out"})
            assert final["state"] == "succeeded" and final["exit_code"] == 0, final
            assert sorted(good.successes.values()) == [1] * N  # each sample answered once, by agent 3

        stats = http.get(f"/v1/jobs/{job_id}/artifacts/out/eval_stats.json").json()
        assert stats["counts"]["error"] == 0 and stats["counts"]["scored"] == N, stats["counts"]
        assert stats["errors"]["total"] == 0, stats["errors"]
        leaks = [str(p) for p in srv.settings.data_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert leaks == []  # the tunnel secret is in no file: job store, job dir, server log
        # The job's calls went over the job channel (no facade HTTP calls) and are in the metrics.
        metrics = http.get("/metrics").text
        answered = re.search(r'proctor_private_channel_calls_total\{status="200"\} (\d+)', metrics)
        assert answered is not None and int(answered[1]) >= N, metrics
        assert 'route="/internal/jobs/{job_id}/v1/{path:path}",status="200"' not in metrics
    finally:
        for agent in agents:
            agent.stop()
        srv.stop()


def test_submit_private_validates_before_queueing(tmp_path: Path) -> None:
    """No local model URL (flags or spec) or an unset key variable: exit 2, and nothing is queued."""
    srv = start_server(tmp_path / "data")
    try:
        spec = _spec(tmp_path)
        nourl = spec.with_name("nourl.yaml")
        nourl.write_text(spec.read_text().replace("base_url: http://127.0.0.1:9/v1, ", ""))
        keyed = spec.with_name("keyed.yaml")
        keyed.write_text(spec.read_text().replace("model: fake}", "model: fake, api_key_env: UNSET_KEY_VAR_X}"))
        env = {k: v for k, v in os.environ.items() if k != "UNSET_KEY_VAR_X"}
        env.update(PROCTOR_SERVER=srv.url, PROCTOR_TOKEN=srv.tokens["alice"])
        for path, needle in ((nourl, "local model's URL"), (keyed, "UNSET_KEY_VAR_X")):
            done = subprocess.run(
                [sys.executable, "-m", "proctor", "submit", str(path), "--private", "-d"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert done.returncode == 2, done.stdout + done.stderr
            assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert srv.client("alice").get("/v1/jobs").json()["jobs"] == []
    finally:
        srv.stop()


def test_private_job_survives_a_server_restart_without_resume(tmp_path: Path) -> None:
    """The store keeps the tunnel secret's digest: after a restart the job is queued again at
    once, and the agent that was serving it reconnects by itself with the secret it holds."""
    data = tmp_path / "data"
    srv = start_server(data, tunnel_grace=0.3)
    tokens, port = srv.tokens, srv.settings.port
    agent = None
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.3)) as llm:
        try:
            with Client(srv.url, tokens["alice"]) as client:
                answer = client.submit(_spec(tmp_path), private=True)
            job_id, secret = answer["job"]["id"], answer["tunnel_secret"]
            agent = Agent(srv.url, job_id, tokens["alice"], secret, llm.base_url)
            _wait(lambda: sum(llm.successes.values()) >= 2, "the first answers")
            srv.stop()  # mid-job: the job process is stopped, the job kept active in the store
            assert sum(llm.successes.values()) < N

            srv = start_server(data, port=port, tunnel_grace=0.3)
            srv.tokens = tokens
            http = srv.client("alice")
            assert "re-queued after a server restart" in (http.get(f"/v1/jobs/{job_id}").json()["note"] or "")
            final = wait_state(http, job_id, {"succeeded", "failed", "cancelled", "timed_out"})
            assert final["state"] == "succeeded", final
            _wait(lambda: any("reconnected" in line for line in agent.lines), "the agent to say it reconnected")
        finally:
            if agent is not None:
                agent.stop()
            srv.stop()
    stats = json.loads((srv.settings.jobs_dir / job_id / "out" / "eval_stats.json").read_text())
    assert stats["counts"]["scored"] == N and stats["counts"]["error"] == 0, stats["counts"]
    leaks = [str(p) for p in data.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []  # the store keeps the secret's digest, never the secret


def test_resume_serves_a_private_job_after_a_restart(tmp_path: Path) -> None:
    """A restart while nobody serves the job: the job waits for its tunnel, and `proctor resume`
    gets a new secret and serves it (without restarting the job)."""
    data = tmp_path / "data"
    srv = start_server(data)
    tokens = srv.tokens
    try:
        with Client(srv.url, tokens["alice"]) as client:
            job_id = client.submit(_spec(tmp_path), private=True)["job"]["id"]
        wait_state(srv.client("alice"), job_id, {"running"})
    finally:
        srv.stop()  # the job is stopped, kept active in the store
    srv = start_server(data, tunnel_grace=0.3)
    srv.tokens = tokens
    try:
        http = srv.client("alice")
        wait_state(http, job_id, {"waiting_for_tunnel"})
        with FakeLLMThread(FakeLLMConfig(reply="arith", require_key="sk-local-resume-key")) as llm:
            env = dict(
                os.environ, PROCTOR_SERVER=srv.url, PROCTOR_TOKEN=tokens["alice"], LOCAL_KEY="sk-local-resume-key"
            )
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "proctor",
                    "resume",
                    job_id,
                    "--base-url",
                    llm.base_url,
                    "--api-key-env",
                    "LOCAL_KEY",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert sorted(llm.successes.values()) == [1] * N
        assert "succeeded" in done.stdout and "sk-local-resume-key" not in done.stdout + done.stderr
        assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
        # A public job does not take a local model on resume: a clear error, no traceback.
        bad = subprocess.run(
            [sys.executable, "-m", "proctor", "resume", "nosuchjob123", "--base-url", "http://127.0.0.1:9/v1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    finally:
        srv.stop()


def test_served_app_puts_the_tunnel_fast_path_in_front(tmp_path: Path) -> None:
    from proctor.server.app import create_app, served_app
    from proctor.server.settings import ServerSettings
    from proctor.server.tunnel.facade import FastPath

    app = create_app(ServerSettings(data_dir=tmp_path / "data"))
    try:
        assert isinstance(served_app(app), FastPath)
    finally:
        app.state.store.close()
