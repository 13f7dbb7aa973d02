"""Killing and interrupting `proctor run`: nothing finished is lost or redone."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import read_jsonl, run_proctor, wait_for, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMProcess, FakeLLMThread


def start(spec: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "plain", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scored_ids(ledger: Path, states: tuple[str, ...] = ("scored",)) -> set[str]:
    if not ledger.exists():
        return set()
    conn = sqlite3.connect(ledger)
    try:
        marks = ",".join("?" * len(states))
        return {r[0] for r in conn.execute(f"SELECT id FROM samples WHERE state IN ({marks})", states)}
    finally:
        conn.close()


def test_kill_9_at_random_moments_then_resume_does_everything_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(os.getpid())
    # Each round runs at most 30 requests past its start plus at most 0.45 s (~90 more at 8 x 40
    # ms): five rounds stay well below n, so the final run always has work left to prove
    # resumption. Every answered sample is committed before its worker takes another, so at each
    # kill the samples requested but not finished are the calls in flight: at most one per worker.
    n, concurrency = 1000, 8
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.04, jitter=0.02)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=n, concurrency=concurrency)
        out = tmp_path / "run"
        durable_counts: dict[str, int] = {}
        exposed: list[int] = []
        kills = 0
        for _ in range(5):
            before = llm.stats()["requests"]
            target = before + rng.randint(10, 30)
            proc = start(spec, out)
            try:
                wait_for(lambda target=target, proc=proc: llm.stats()["requests"] >= target or proc.poll() is not None)
                time.sleep(rng.uniform(0.25, 0.45))
            finally:
                proc.kill()  # SIGKILL: no cleanup at all
                proc.communicate(timeout=30)
            kills += 1
            # What the ledger holds now is durable: none of it may ever be requested again.
            counts = llm.counts
            for sample_id in scored_ids(out / "ledger.sqlite"):
                durable_counts.setdefault(sample_id, counts[sample_id])
            # Requested but not finished: what the resume will request again.
            exposed.append(len(set(counts) - scored_ids(out / "ledger.sqlite", ("scored", "error"))))
        assert kills == 5 and 0 < len(durable_counts) < n
        final = run_proctor("run", spec, "--out", out)
        assert final.returncode == 0, final.stderr
        counts = llm.counts
    assert max(exposed) <= concurrency, exposed  # only the calls in flight at a kill are redone
    assert sum(counts.values()) - n <= kills * concurrency  # re-requests, counted per sample by the server
    assert {k: counts[k] for k in durable_counts} == durable_counts  # nothing durable was redone
    assert set(counts) == {f"q{i}" for i in range(n)}
    records = read_jsonl(out / "samples.jsonl")
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(n))  # each exactly once
    assert all(r["state"] == "scored" for r in records)
    assert json.loads((out / "eval_stats.json").read_text())["counts"]["scored"] == n
    conn = sqlite3.connect(out / "ledger.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_or_sigterm_finishes_in_flight_samples_then_resume_completes(tmp_path: Path, sig: int) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.3)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=40, concurrency=4)
        out = tmp_path / "run"
        proc = start(spec, out)
        try:
            wait_for(lambda: llm.stats()["requests"] >= 6)
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 130, stderr
        assert "resume with: proctor run" in stdout
        requested = set(llm.counts)
        assert requested == scored_ids(out / "ledger.sqlite")  # in-flight samples were let finish
        assert json.loads((out / "eval_stats.json").read_text())["final"] is False
        result = run_proctor("run", spec, "--out", out)
        assert result.returncode == 0, result.stderr
        assert len(llm.counts) == 40 and set(llm.counts.values()) == {1}


def test_second_sigint_exits_at_once_with_a_consistent_ledger(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.05)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=30, concurrency=4)
        out = tmp_path / "run"
        proc = start(spec, out)
        try:
            wait_for(lambda: llm.stats()["requests"] >= 8)
            llm.reconfigure(latency=60.0)  # requests from now on would take a minute
            sent = llm.stats()["requests"]
            wait_for(lambda: llm.stats()["requests"] > sent)
            time.sleep(0.3)  # the older 50 ms requests are done by now: all in flight are slow ones
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=15)  # far less than the 60 s the requests would take
        finally:
            proc.kill()
        assert proc.returncode == 130
        assert "resume with" in stderr
        conn = sqlite3.connect(out / "ledger.sqlite")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        llm.reconfigure(latency=0.0)
        result = run_proctor("run", spec, "--out", out)
        assert result.returncode == 0, result.stderr
        assert len(llm.counts) == 30


def test_open_files_stay_bounded_at_concurrency_1000(tmp_path: Path) -> None:
    concurrency = 1000
    # 1 s per answer: enough for a loaded machine to open all 1,000 calls of the first wave
    # before the first answers come back and their workers commit them.
    with FakeLLMProcess(FakeLLMConfig(reply="arith", latency=1.0)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=3000, concurrency=concurrency)
        proc = start(spec, tmp_path / "run")
        peak = 0
        try:
            ps = psutil.Process(proc.pid)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    peak = max(peak, ps.num_fds())
                except psutil.Error:
                    break
                time.sleep(0.02)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0
        assert llm.stats()["max_in_flight"] >= concurrency * 0.9  # the load really was that concurrent
    assert 0 < peak <= concurrency + 100, peak
