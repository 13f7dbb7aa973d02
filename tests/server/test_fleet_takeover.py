"""A fleet member killed with SIGKILL: the others take its jobs over once its lease lapses.

Real ``proctor serve`` processes sharing one throwaway PostgreSQL store and one data directory,
the real engine against the fake LLM server. The lease is 3 s here (30 s by default).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pg_kit
import psutil
import pytest
import yaml
from helpers import create_token, start_server, stop_process
from server_helpers import JOBSCRIPT
from test_engine_e2e import _cwd, _dead

from proctor.testing import FakeLLMConfig, FakeLLMThread

pytestmark = [pytest.mark.store("postgres"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LEASE = "3"
N = 40
KEY = "sk-fleet-test-" + "f1eet" * 6


class Fleet:
    """Two (or more) `proctor serve` children on one store and data directory, each stopped by its handle."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.log = tmp_path / "servers.log"
        gates = tmp_path / "gates"
        gates.mkdir()
        self.config = tmp_path / "server.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "kill_grace": 2,
                    "log_poll_interval": 0.05,
                    "sandbox": {"readable": [str(gates)]},
                    "templates": {
                        "script": {
                            "argv": [sys.executable, JOBSCRIPT, "{mode}", "{arg}"],
                            "params": {"mode": {"pattern": "^(gate|lines)$"}, "arg": {"default": "0"}},
                        }
                    },
                }
            )
        )
        self.token = create_token(self.data, "alice")
        self.procs: list[Any] = []
        self.urls: list[str] = []

    def start(self) -> int:
        proc, url = start_server(self.data, self.log, "--config", str(self.config), "--lease-seconds", LEASE)
        self.procs.append(proc)
        self.urls.append(url)
        return len(self.procs) - 1

    def client(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.urls[i], headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def owner_pid(self, job_id: str) -> int | None:
        """The pid of the server instance the store names as the job's owner."""
        with pg_kit.connect(self.data) as conn:
            row = conn.execute("SELECT instance FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return int(row[0].split("/")[1]) if row and row[0] else None

    def sigkill(self, pid: int) -> int:
        i = next(i for i, p in enumerate(self.procs) if p.pid == pid)
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(timeout=30)
        return i

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait(client: httpx.Client, job_id: str, done: Any, what: str, *, limit: int = 6000) -> dict[str, Any]:
    for _ in range(limit):  # bounded: at most ~2 min
        job = _job(client, job_id)
        if done(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id}: never {what}: {job}")


def _spec(tmp_path: Path, base_url: str) -> dict[str, Any]:
    src = ROOT / "examples" / "arith"
    lines = (src / "data.jsonl").read_text().splitlines()
    lines = (lines * (N // len(lines) + 1))[:N] if len(lines) < N else lines[:N]
    spec = (src / "spec.yaml").read_text().replace("http://127.0.0.1:8000/v1", base_url)
    spec = spec.replace("concurrency: 32", "concurrency: 2")
    return {"kind": "proctor", "spec": spec, "files": {"data.jsonl": {"content": "\n".join(lines) + "\n"}}}


def _job_processes(job_dir: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _cwd(p) == str(job_dir.resolve())]


def test_a_killed_servers_running_job_is_taken_over_and_finished_without_redoing_samples(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        fleet.start()
        with FakeLLMThread(FakeLLMConfig(latency=0.25, reply="arith")) as llm:
            with fleet.client(0) as first:
                r = first.post("/v1/jobs", json=_spec(tmp_path, llm.base_url))
                assert r.status_code == 201, r.text
                job_id = r.json()["job"]["id"]
            with fleet.client(0) as first:
                _wait(first, job_id, lambda j: j["state"] == "running", "running")
            for _ in range(3000):  # bounded: wait until some samples are done
                if sum(llm.successes.values()) >= 6:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the job made no progress")
            owner = fleet.owner_pid(job_id)
            assert owner is not None
            orphans = _job_processes(fleet.data / "jobs" / job_id)
            assert orphans, "the job's process should be running"
            killed = fleet.sigkill(owner)
            done_before = {k for k, c in llm.successes.items() if c}
            survivor = 1 - killed
            with fleet.client(survivor) as other:
                # the survivor takes the job over once the lease lapsed, and runs it to its end
                taken = _wait(other, job_id, lambda j: j["attempts"] == 2, "taken over")
                # fencing: the dead server's job process is gone before the job runs again
                assert all(_dead(p) for p in orphans)
                final = _wait(other, job_id, lambda j: j["state"] in {"succeeded", "failed"}, "finished")
                assert final["state"] == "succeeded", final
                assert fleet.owner_pid(job_id) == fleet.procs[survivor].pid
                stats = other.get(f"/v1/jobs/{job_id}/artifacts/out/eval_stats.json")
                assert stats.status_code == 200
            assert taken["attempts"] == 2
            # every sample was answered; none that had finished before the kill was asked again
            assert len(llm.successes) == N
            redone = [k for k in done_before if llm.counts[k] > 1]
            assert redone == []
            # at most the samples in flight when the takeover stopped the old process are asked twice
            twice = [k for k, c in llm.successes.items() if c > 1]
            assert len(twice) <= 2, twice
    finally:
        fleet.stop()


def test_jobs_whose_keys_or_tunnel_died_with_their_server_wait_and_never_run_elsewhere(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    gate = tmp_path / "gates" / "open"
    try:
        fleet.start()
        fleet.start()
        with fleet.client(0) as first:
            # one slot each: the first server's slot is held by a gated job
            held = first.post("/v1/jobs", json=_script("gate", str(gate))).json()["job"]["id"]
            _wait(first, held, lambda j: j["state"] == "running", "running")
            owner = fleet.owner_pid(held)
            assert owner is not None
            # send the key job to the busy server: its key lives in that server's memory only
            busy = next(i for i, p in enumerate(fleet.procs) if p.pid == owner)
        with fleet.client(busy) as client:
            body = _script("lines", "2")
            body["models"] = {"subject": {"base_url": "http://127.0.0.1:9/v1", "api_key": KEY}}
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 201, r.text
            keyed = r.json()["job"]["id"]
            # and a private-mode job: its tunnel is registered in that server only
            private = client.post("/v1/jobs", json={**_spec(tmp_path, "http://127.0.0.1:9/v1"), "private": True})
            assert private.status_code == 201, private.text
            tunnelled = private.json()["job"]["id"]
        with fleet.client(1 - busy) as idle:
            # the idle server runs a keyless job at once, which shows it is looking at the queue...
            free = idle.post("/v1/jobs", json=_script("lines", "1")).json()["job"]["id"]
            _wait(idle, free, lambda j: j["state"] == "succeeded", "succeeded")
            # ...but it never ran the key job it holds no key for, nor the private job
            assert _job(idle, keyed)["state"] == "queued"
            assert _job(idle, tunnelled)["state"] == "queued"
            fleet.sigkill(owner)
            waiting = _wait(idle, keyed, lambda j: j["state"] == "waiting_for_credentials", "waiting for its keys")
            assert waiting["attempts"] == 0
            assert f"proctor resume {keyed}" in waiting["note"]
            waiting = _wait(idle, tunnelled, lambda j: j["state"] == "waiting_for_credentials", "waiting for a tunnel")
            assert waiting["attempts"] == 0 and "tunnel" in waiting["note"]
            # the keyless gated job is taken over and runs again on the survivor
            gate.touch()
            assert _wait(idle, held, lambda j: j["state"] == "succeeded", "succeeded")["attempts"] == 2
    finally:
        gate.touch()
        fleet.stop()
    needle = KEY.encode()
    assert [p for p in fleet.data.rglob("*") if p.is_file() and needle in p.read_bytes()] == []
    assert needle not in fleet.log.read_bytes()
    with pg_kit.connect(fleet.data) as conn:
        rows = conn.execute("SELECT * FROM jobs").fetchall()
    assert KEY not in repr(rows)


def _script(mode: str, arg: str = "0") -> dict[str, Any]:
    return {"kind": "command", "template": "script", "params": {"mode": mode, "arg": arg}}
