"""Batches on a real `proctor serve` child: a matrix submitted as one batch, filtered, and watched.

Runs once per job-store back end (SQLite, PostgreSQL), like the server suite: the ``batch_id``
column and its index come from the store's own schema setup on both.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import create_token, start_server, stop_process, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread

N = 5


@dataclass
class Setup:
    url: str
    tokens: dict[str, str]
    specs: list[Path]
    llms: list[FakeLLMThread]

    def env(self, who: str = "alice") -> dict[str, str]:
        return dict(os.environ, PROCTOR_SERVER=self.url, PROCTOR_TOKEN=self.tokens[who])

    def proctor(self, *args: str | Path, who: str = "alice", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proctor", *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env(who),
            timeout=timeout,
        )

    def http(self, who: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)

    def model(self, i: int) -> str:
        return f"subject={self.llms[i].base_url}@model-{i}"


@pytest.fixture
def setup(tmp_path: Path, store_backend: str) -> Iterator[Setup]:
    data = tmp_path / "data"
    data.mkdir()
    tokens = {who: create_token(data, who) for who in ("alice", "bob")}
    with (
        FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.01, model="model-0")) as one,
        FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.01, model="model-1")) as two,
    ):
        specs = []
        for name in ("alpha", "beta"):
            folder = tmp_path / name
            folder.mkdir()
            spec = write_spec(folder, one.base_url, n=N, concurrency=2)
            spec.write_text(spec.read_text().replace("name: arith", f"name: {name}"))
            specs.append(spec)
        proc, url = start_server(data, tmp_path / "server.log", "--slots", "2")
        try:
            yield Setup(url, tokens, specs, [one, two])
        finally:
            stop_process(proc)


def batch_id_of(stdout: str) -> str:
    found = re.search(r"^batch (\S+): (\d+) jobs queued$", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def test_a_matrix_is_one_batch_each_job_carries_its_id_and_the_filter_finds_exactly_them(setup: Setup) -> None:
    single = setup.proctor("submit", setup.specs[0], "--model", setup.model(0), "-d")
    assert single.returncode == 0, single.stderr
    assert "batch" not in single.stdout  # one spec, one model per role: today's submit, no batch
    single_id = re.search(r"^job (\S+) ", single.stdout, re.MULTILINE)
    assert single_id

    result = setup.proctor("submit", *setup.specs, "--model", setup.model(0), "--model", setup.model(1), "-d")
    assert result.returncode == 0, result.stderr
    batch = batch_id_of(result.stdout)
    assert f"proctor status {batch} --watch" in result.stdout

    with setup.http() as http:
        jobs = http.get("/v1/jobs", params={"batch": batch}).json()["jobs"]
        assert len(jobs) == 4  # 2 specs x 2 models
        assert {j["batch_id"] for j in jobs} == {batch}
        assert {(j["spec"], j["model"]) for j in jobs} == {
            (spec, model) for spec in ("alpha", "beta") for model in ("model-0", "model-1")
        }
        everything = http.get("/v1/jobs").json()["jobs"]
        assert single_id.group(1) in {j["id"] for j in everything}
        assert single_id.group(1) not in {j["id"] for j in jobs}
        assert [j for j in everything if j["id"] == single_id.group(1)][0]["batch_id"] is None

        view = http.get(f"/v1/batches/{batch}").json()
        assert sorted(j["id"] for j in view["jobs"]) == sorted(j["id"] for j in jobs)
        assert sum(view["states"].values()) == 4
        assert http.get("/v1/batches/bnosuchbatch0").status_code == 404
        bad = http.get("/v1/jobs", params={"batch": "../x"})
        assert bad.status_code == 422 and bad.json()["ok"] is False
    with setup.http("bob") as http:  # another user's batch is not found, nor are its jobs listed
        assert http.get(f"/v1/batches/{batch}").status_code == 404
        assert http.get("/v1/jobs", params={"batch": batch}).json()["jobs"] == []

    # `proctor status BATCH --watch`, piped: plain tables until every job is final, then exit 0.
    watched = setup.proctor("status", batch, "--watch", "--interval", "0.2", timeout=240)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    last = watched.stdout.rsplit("job ", 1)[-1]  # the last table printed
    assert last.count("succeeded") == 4, watched.stdout
    assert f"{N}/{N}" in last
    # Every sample of both specs ran once against each model's own server.
    assert sum(setup.llms[0].counts.values()) == 3 * N  # the single job + 2 specs of the batch
    assert sum(setup.llms[1].counts.values()) == 2 * N


def test_a_batch_is_watched_by_submit_and_a_role_typo_queues_nothing(setup: Setup) -> None:
    typo = setup.proctor("submit", *setup.specs, "--model", setup.model(0), "--model", "judg=http://x/v1@j")
    assert typo.returncode == 2 and "judg" in typo.stderr and "Traceback" not in typo.stderr
    one_job = setup.proctor("submit", *setup.specs, "--model", setup.model(0), "--job-id", "myjob0001")
    assert one_job.returncode == 2 and "--job-id applies to one job" in one_job.stderr
    with setup.http() as http:
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing was queued

    # Without -d, submit watches the batch's table itself until every job is final; a job that
    # fails (a model name its server does not serve) makes the exit code 1.
    missing = f"subject={setup.llms[1].base_url}@no-such-model"
    result = setup.proctor(
        "submit", setup.specs[0], "--model", setup.model(0), "--model", missing, "--interval", "0.2", timeout=240
    )
    assert result.returncode == 1, result.stdout + result.stderr
    batch = batch_id_of(result.stdout)
    last = result.stdout.rsplit("job ", 1)[-1]
    assert last.count("succeeded") == 1 and last.count("failed") == 1, result.stdout
    listed = setup.proctor("list", "--watch", "--batch", batch, "--interval", "0.2")
    assert listed.returncode == 1 and listed.stdout.count("succeeded") == 1, listed.stdout
    shown = setup.proctor("status", batch)  # without --watch: the table once
    assert shown.returncode == 0 and "no-such-model" in shown.stdout and "failed" in shown.stdout, shown.stdout


def test_ctrl_c_stops_watching_a_live_table_and_cancels_nothing(setup: Setup) -> None:
    """On a terminal (a pty here) the table is redrawn in place; Ctrl-C exits 130 and the jobs go on."""
    setup.llms[0].reconfigure(hang_rate=1.0, hang_seconds=60.0)  # the jobs run until the test is done
    result = setup.proctor("submit", *setup.specs, "--model", setup.model(0), "-d")
    batch = batch_id_of(result.stdout)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "status", batch, "--watch", "--interval", "0.2"],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=dict(setup.env(), COLUMNS="150", TERM="xterm"),
        text=True,
    )
    os.close(secondary)
    seen = bytearray()

    def read() -> None:  # drains the pty, so the watcher never blocks on a full buffer
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 4096):
                seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with setup.http() as http:
            for _ in range(600):  # bounded: until a job runs and the table was drawn twice
                states = {j["state"] for j in http.get(f"/v1/batches/{batch}").json()["jobs"]}
                if "running" in states and seen.count(b"job") >= 2:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"no job ran while watched: {states}, {bytes(seen)[-500:]!r}")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 130, stderr
            assert "stopped watching; nothing was cancelled" in stderr and "Traceback" not in stderr
            assert b"\x1b[1A" in seen and b"running" in seen  # redrawn in place (cursor up), with the running job
            jobs = http.get(f"/v1/batches/{batch}").json()["jobs"]
            assert not {j["state"] for j in jobs} & {"cancelled"}
            assert {j["state"] for j in jobs} & {"running", "queued", "succeeded"}
            for job in jobs:  # now this test's own handle stops them, rather than the server's shutdown
                http.post(f"/v1/jobs/{job['id']}/cancel")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        os.close(primary)
        reader.join(timeout=10)
