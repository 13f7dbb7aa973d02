"""`proctor status --watch` (a process) outlives a restart of `proctor serve` (a process) on the same
port and data directory: it says once that the server is unreachable, retries, and resumes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest
from helpers import create_token, start_server, stop_process, wait_for, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread

WAIT = 120.0
"""Generous: other suites load the machine while this one runs."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Output:
    """Lines a child writes to one pipe, read by a thread so that the pipe never fills."""

    lines: list[str] = field(default_factory=list)

    def read(self, stream: IO[str]) -> threading.Thread:
        thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        thread.start()
        return thread

    @property
    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class Served:
    data: Path
    log: Path
    port: int
    url: str
    token: str
    proc: subprocess.Popen[str]
    llm: FakeLLMThread
    job: str

    def restart(self) -> None:
        self.proc, url = start_server(self.data, self.log, "--port", str(self.port))
        assert url == self.url


@pytest.fixture
def served(tmp_path: Path, store_backend: str) -> Iterator[Served]:
    """A server on a port of its own with one job of ours running, whose model calls hang until
    the test lets them answer: the job cannot finish while the server is away."""
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    port = free_port()
    with FakeLLMThread(FakeLLMConfig(reply="arith", hang_rate=1.0, hang_seconds=60.0)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=6, concurrency=2)
        proc, url = start_server(data, tmp_path / "server.log", "--port", str(port))
        served = Served(data, tmp_path / "server.log", port, url, token, proc, llm, "")
        try:
            submitted = subprocess.run(
                [sys.executable, "-m", "proctor", "submit", str(spec), "-d"],
                capture_output=True,
                text=True,
                env=env_of(served),
                timeout=WAIT,
            )
            assert submitted.returncode == 0, submitted.stdout + submitted.stderr
            found = re.search(r"^job (\S+) ", submitted.stdout, re.MULTILINE)
            assert found, submitted.stdout
            served.job = found.group(1)
            wait_for(lambda: state(served) == "running", "the job runs")
            yield served
        finally:
            stop_process(served.proc)


def env_of(served: Served) -> dict[str, str]:
    return dict(os.environ, PROCTOR_SERVER=served.url, PROCTOR_TOKEN=served.token)


def state(served: Served) -> str:
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.token}"}, timeout=30) as http:
        return str(http.get(f"/v1/jobs/{served.job}").json()["state"])


def start_watch(served: Served, *extra: str) -> tuple[subprocess.Popen[str], Output, Output]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "status", served.job, "--watch", "--interval", "0.2", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_of(served),
        text=True,
        start_new_session=True,
    )
    out, err = Output(), Output()
    assert proc.stdout is not None and proc.stderr is not None
    out.read(proc.stdout)
    err.read(proc.stderr)
    return proc, out, err


def test_watch_says_once_the_server_is_away_and_resumes_when_it_is_back(served: Served) -> None:
    watch, out, err = start_watch(served, "--retry-for", "600")
    try:
        wait_for(lambda: "running" in out.text or watch.poll() is not None, "the watch shows the running job")
        stop_process(served.proc)
        wait_for(lambda: "unreachable" in err.text or watch.poll() is not None, "the watch notices")
        assert "unreachable" in err.text and watch.poll() is None, out.text + err.text  # still watching
        time.sleep(1.0)  # several failed tries while the server is away: still one message
        served.llm.reconfigure(hang_rate=0.0)  # the resumed job may now finish
        served.restart()
        rc = watch.wait(timeout=WAIT * 2)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=30)
    text = out.text + err.text
    assert rc == 0, text  # every job of the watch succeeded
    assert "Traceback" not in text
    assert err.text.count("unreachable") == 1, err.text
    assert "the server answers again" in err.text, err.text
    assert "succeeded" in out.text.rsplit("running", 1)[-1], out.text  # the last table, drawn after the restart
    assert state(served) == "succeeded"


@pytest.mark.parametrize("how", ["gives up", "ctrl-c"])
def test_watch_of_a_server_that_stays_away_gives_up_or_stops_on_ctrl_c(served: Served, how: str) -> None:
    watch, out, err = start_watch(served, "--retry-for", "3" if how == "gives up" else "600")
    try:
        wait_for(lambda: "running" in out.text or watch.poll() is not None, "the watch shows the running job")
        stop_process(served.proc)
        wait_for(lambda: "unreachable" in err.text or watch.poll() is not None, "the watch notices")
        assert "unreachable" in err.text, out.text + err.text
        if how == "ctrl-c":
            os.killpg(watch.pid, signal.SIGINT)
        rc = watch.wait(timeout=WAIT)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=30)
    text = out.text + err.text
    assert "Traceback" not in text
    assert err.text.count("unreachable") == (2 if how == "gives up" else 1), err.text  # said once, then gave up
    if how == "gives up":
        assert rc == 1, text
        assert "gave up watching: the server has been unreachable for 3 s" in err.text, err.text
        assert "nothing was cancelled" in err.text
    else:
        assert rc == 130, text
        assert "stopped watching; nothing was cancelled" in err.text
