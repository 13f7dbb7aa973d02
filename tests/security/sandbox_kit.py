"""The sandbox attacks' kit: a real ``proctor serve`` child process and what the attacks need.

The server runs with a secret in its own environment (``SERVER_SECRET``), two slots (an attacker's
job and a victim's job at the same time), the ``probe`` command template (``probe.py``: hostile
code inside a job) and tokens for ``mallory`` (attacker) and ``bob`` (victim).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import create_token, start_server

PROBE = str(Path(__file__).with_name("probe.py"))
SERVER_SECRET = "server-secret-" + "s3cr3t" * 4
VICTIM_KEY = "sk-victim-" + "v1ct1m" * 5


@dataclass
class SecureServer:
    url: str
    data: Path
    pid: int
    tokens: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, who: str) -> httpx.Client:
        c = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=60)
        self.clients.append(c)
        return c

    def job_dir(self, job_id: str) -> Path:
        return (self.data / "jobs" / job_id).resolve()

    def log(self, job_id: str) -> str:
        path = self.job_dir(job_id) / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""


def probe_job(mode: str, a: str = "0", b: str = "0", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "command", "template": "probe", "params": {"mode": mode, "a": a, "b": b}}
    body.update(extra)
    return body


def wait_for(client: httpx.Client, job_id: str, states: set[str], *, seconds: float = 180) -> dict[str, Any]:
    """Poll the job (bounded) until it is in one of ``states``."""
    deadline = time.monotonic() + seconds
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def start_secure_server(tmp_path: Path, index: int, monkeypatch: Any, **config: Any) -> tuple[Any, SecureServer]:
    data = tmp_path / f"data{index}"
    data.mkdir()
    cfg: dict[str, Any] = {
        "templates": {
            "probe": {
                "argv": [sys.executable, PROBE, "{mode}", "{a}", "{b}"],
                "params": {
                    "mode": {"pattern": "^(look|fork|alloc|sleep|limits|steal)$"},
                    "a": {"default": "0"},
                    "b": {"default": "0"},
                },
            }
        },
        "kill_grace": 2,
    }
    cfg.update(config)
    cfg_path = tmp_path / f"server{index}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    tokens = {name: create_token(data, name) for name in ("mallory", "bob")}
    monkeypatch.setenv("SERVER_SECRET", SERVER_SECRET)
    try:
        proc, url = start_server(data, tmp_path / "server.log", "--slots", "2", "--config", str(cfg_path))
    finally:
        monkeypatch.delenv("SERVER_SECRET")
    return proc, SecureServer(url, data, proc.pid, tokens)


ROWS = [{"id": f"q{i}", "question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(6)]
DATA = "".join(json.dumps(r) + "\n" for r in ROWS)


def spec_text(base_url: str, *, solver: Any = "generate", scorer: Any = "numeric", extra: str = "") -> str:
    """A small arithmetic spec for the fake LLM at ``base_url``."""
    return (
        yaml.safe_dump(
            {
                "name": "attack",
                "dataset": {"path": "data.jsonl", "fields": {"id": "id", "input": "question", "target": "answer"}},
                "solver": solver,
                "scorer": scorer,
                "models": {"subject": {"base_url": base_url, "model": "fake"}},
                "concurrency": 2,
            },
            sort_keys=False,
        )
        + extra
    )


def spec_job(spec: str, files: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "proctor",
        "spec": spec,
        "files": {"data.jsonl": {"content": DATA}, **{k: {"content": v} for k, v in (files or {}).items()}},
    }
    body.update(extra)
    return body
