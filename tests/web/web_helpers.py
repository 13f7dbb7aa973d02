"""Helpers of the dashboard tests: real runs made by the real engine, real servers, real browsers."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from helpers import arith_rows, run_proctor, write_spec

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))

from server_helpers import Running, start_server  # noqa: E402

from proctor.client import Client  # noqa: E402

__all__ = ["Running", "Runs", "Served", "start_server"]


@dataclass
class Runs:
    """Finished local runs made by the real engine."""

    arith: Path
    agent: Path


@dataclass
class Served:
    """A real server with finished jobs: alice's arithmetic and agent runs, bob's arithmetic."""

    server: Running
    alice_job: str
    bob_job: str
    agent_job: str


FAILING = ("q5", "q7")
"""Samples the fake server fails every time: two ``error`` rows with an infra error class."""

AGENT_SCRIPT = [{"tool_calls": [{"name": "answer", "arguments": {"answer": "42"}}]}]


def arith_spec(dir_: Path, base_url: str, *, n: int = 30, concurrency: int = 4) -> Path:
    """The arithmetic task: every third target is wrong on purpose, so accuracy is known."""
    dir_.mkdir(parents=True, exist_ok=True)
    return write_spec(dir_, base_url, n=n, concurrency=concurrency)


def agent_spec(dir_: Path, base_url: str, *, n: int = 3) -> Path:
    """An agent whose model calls the ``answer`` tool: a trajectory with a tool call and its result."""
    dir_.mkdir(parents=True, exist_ok=True)
    rows = arith_rows(n)
    rows[0]["answer"] = "42"
    spec = write_spec(dir_, base_url, rows=rows, concurrency=2)
    text = spec.read_text(encoding="utf-8").replace("name: arith", "name: agentic")
    spec.write_text(text.replace("solver: generate", "solver: {type: agent, max_turns: 3, tools: [answer]}"))
    return spec


def local_run(spec: Path, out: Path) -> Path:
    """``proctor run SPEC --out OUT`` as a child process; returns the run directory."""
    done = run_proctor("run", spec, "--out", out, timeout=180)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert (out / "ledger.sqlite").is_file(), done.stderr[-2000:]
    return out


def submit(server: Running, who: str, spec: Path) -> str:
    with Client(server.url, server.tokens[who]) as client:
        return str(client.submit(spec)["job"]["id"])


def wait_job(server: Running, who: str, job_id: str, states: set[str], *, limit_s: float = 180) -> dict[str, Any]:
    """Poll the API (bounded) until the job is in one of ``states``."""
    deadline = time.monotonic() + limit_s
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.tokens[who]}"}) as client:
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in states:
                return dict(job)
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


@contextmanager
def login(server: Running, who: str) -> Iterator[httpx.Client]:
    """A client holding the session cookie that the login form gave it."""
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        answer = client.post("/login", data={"token": server.tokens[who], "next": "/"})
        assert answer.status_code == 303, answer.text
        yield client
