"""Real servers for the server tests: uvicorn on 127.0.0.1 with a free port, in a thread."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pg_kit
import pytest
import uvicorn

from proctor.server.app import create_app, served_app
from proctor.server.connections import raise_open_files_limit
from proctor.server.serve import bind_socket, uvicorn_config
from proctor.server.settings import CommandTemplate, ServerSettings
from proctor.server.store import JobStore

JOBSCRIPT = str(Path(__file__).with_name("jobscript.py"))


def script_templates() -> dict[str, CommandTemplate]:
    """Command templates running the stand-in job; 'mode' and 'arg' are its argv."""
    return {
        "script": CommandTemplate.model_validate(
            {
                "argv": [sys.executable, JOBSCRIPT, "{mode}", "{arg}", "{arg2}"],
                "params": {
                    "mode": {"pattern": "^(sleep|lines|family|gate|exit|env)$"},
                    "arg": {"default": "0"},
                    "arg2": {"default": "0"},
                },
            }
        )
    }


@dataclass
class Running:
    url: str
    settings: ServerSettings
    tokens: dict[str, str]
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, who: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "server thread did not stop"


def start_server(data: Path, **overrides: Any) -> Running:
    """A sandboxed server; its jobs may read ``data/../gates`` (where tests put their gate files)."""
    sock = bind_socket("127.0.0.1", overrides.pop("port", 0))  # a restarted server: the same port
    gates = data.parent / "gates"
    gates.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "data_dir": data,
        "port": sock.getsockname()[1],
        "templates": script_templates(),
        "kill_grace": 2.0,
        "log_poll_interval": 0.05,
        "sandbox": {"readable": [gates]},
        "database_url": pg_kit.store_url_for(data),
    }
    values.update(overrides)
    settings = ServerSettings.model_validate(values)
    store = JobStore(settings.store_url)
    tokens = {}
    existing = {"alice": False, "bob": False, "root": True}
    for name, admin in existing.items():
        try:
            tokens[name] = store.create_token(name, admin=admin)
        except Exception:  # noqa: BLE001 - a restarted server's store already has them
            pass
    store.close()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(served_app(app), settings, open_files=raise_open_files_limit()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(6000):  # bounded: 60 s (the app's start-up opens the store, PostgreSQL's too)
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "server did not start"
    return Running(f"http://127.0.0.1:{settings.port}", settings, tokens, server, thread)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    started: list[Running] = []

    def make(**overrides: Any) -> Running:
        run = start_server(overrides.pop("data_dir", tmp_path / "data"), **overrides)
        started.append(run)
        return run

    yield make
    for run in started:
        if run.thread.is_alive():
            run.stop()


def script_job(mode: str, arg: str = "0", arg2: str = "0", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "command", "template": "script", "params": {"mode": mode, "arg": arg, "arg2": arg2}}
    body.update(extra)
    return body


def wait_state(client: httpx.Client, job_id: str, states: set[str], *, limit: int = 3000) -> dict[str, Any]:
    """Poll the job's state until it is one of ``states``.

    Bounded by both ``limit`` polls and 180 s, whichever ends later: a sandboxed job's start-up
    takes seconds more on a loaded host, and the polls themselves slow down with it.
    """
    import time

    deadline = time.monotonic() + 180
    polls = 0
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        polls += 1
        if polls >= limit and time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} never reached {states}: {job}")
        time.sleep(0.02)
