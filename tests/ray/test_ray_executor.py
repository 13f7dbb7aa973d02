"""`proctor run --executor ray` on a real local Ray (2 actors) against the fake model server.

Each test drives `proctor run` as a process joining the session's Ray (tests/ray/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import read_jsonl, run_proctor, wait_for, write_spec
from ray_kit import RayCluster, listening

from proctor.evals.runner import resume_command
from proctor.testing import FakeLLMConfig, FakeLLMThread

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]


def start(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def ledger_rows(out: Path) -> dict[str, tuple[str, int]]:
    """{sample id: (state, dispatches)} from the run's ledger."""
    if not (out / "ledger.sqlite").exists():
        return {}
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, state, dispatches FROM samples")}
    except sqlite3.OperationalError:  # the run has created the file but not its tables yet
        return {}
    finally:
        conn.close()


def comparable(out: Path) -> list[dict[str, Any]]:
    """samples.jsonl, in order, without the one timing field: what must equal between executors."""
    return [{k: v for k, v in row.items() if k != "duration"} for row in read_jsonl(out / "samples.jsonl")]


def actor_pids(cluster: RayCluster) -> list[int]:
    """The SampleActor processes of the session's cluster (and only of it)."""
    found = []
    for proc in cluster.members():
        try:
            if any("SampleActor" in part for part in proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_ray_run_equals_a_local_run(tmp_path: Path, ray_cluster: RayCluster) -> None:
    rows = [
        {
            "id": f"s{i}",
            "question": f"What is {i} + {i + 1}?",
            "answer": str(2 * i + 1 + (i % 5 == 0)),
            "category": f"c{i % 3}",
        }
        for i in range(60)
    ]  # every fifth target is wrong: the scores differ between samples
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.005)) as llm:
        spec = write_spec(tmp_path, llm.base_url, rows=rows, concurrency=8, extra="executor: {kind: ray, workers: 2}\n")
        local = run_proctor("run", spec, "--out", tmp_path / "local", "--executor", "local", "--progress", "none")
        assert local.returncode == 0, local.stderr
        on_ray = run_proctor(
            "run", spec, "--out", tmp_path / "ray", "--ray-address", ray_cluster.address, "--progress", "none"
        )
        assert on_ray.returncode == 0, on_ray.stderr
    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    stats = {
        name: json.loads((tmp_path / name / "eval_stats.json").read_text(encoding="utf-8")) for name in ("local", "ray")
    }
    for key in ("counts", "accuracy", "by_category", "errors", "tokens"):
        assert stats["ray"][key] == stats["local"][key], key
    assert stats["ray"]["counts"]["scored"] == 60 and stats["ray"]["accuracy"]["correct"] == 48
    # The driver recorded the actors' model calls in its own events log.
    events = read_jsonl(tmp_path / "ray" / "events.jsonl")
    assert sum(1 for e in events if e.get("kind") == "model") == 60
    assert "executor:\n  kind: ray" in (tmp_path / "ray" / "spec.yaml").read_text(encoding="utf-8")


def test_an_actor_killed_mid_run_loses_and_repeats_nothing_recorded(tmp_path: Path, ray_cluster: RayCluster) -> None:
    n = 300
    # Half a second per call, and the kill only once more calls are in flight than one actor's
    # lanes (8) hold: then both actors have some at the model, whichever is killed, however
    # slowly a loaded host runs them (with 0.05 s the killed actor was sometimes between calls).
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.5)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=n, concurrency=16)
        out = tmp_path / "run"
        proc = start(
            "run", spec, "--out", out, "--executor", "ray", "--workers", "2", "--ray-address", ray_cluster.address,
            "--progress", "none", env={"PROCTOR_PROGRESS": "json"},
        )  # fmt: skip
        try:
            wait_for(
                lambda: (llm.stats()["requests"] >= 60 and llm.stats()["in_flight"] > 8) or proc.poll() is not None
            )
            pids = actor_pids(ray_cluster)
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        counts = llm.counts
    assert proc.returncode == 0, stderr
    rows = ledger_rows(out)
    assert len(rows) == n and all(state == "scored" for state, _ in rows.values())
    # Every sample was answered; those in flight on the dead actor were asked again, once.
    assert set(counts) == set(rows) and all(c in (1, 2) for c in counts.values())
    repeated = {sid for sid, c in counts.items() if c == 2}
    assert repeated, "the kill came mid-run, so some samples were in flight on the dead actor"
    # Dispatched again: the dead actor's batches (some of their samples had not reached the model yet).
    redispatched = {sid for sid, (_, d) in rows.items() if d == 2}
    assert repeated <= redispatched and all(d in (1, 2) for _, d in rows.values())
    # Recorded once: the driver counted each sample once (a second record would push done past n).
    progress = [
        json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("PROCTOR_PROGRESS ")
    ]
    assert progress and progress[-1]["done"] == n and max(p["done"] for p in progress) == n
    assert len(read_jsonl(out / "samples.jsonl")) == n


def test_the_driver_killed_then_resumed_redoes_nothing_finished(tmp_path: Path, ray_cluster: RayCluster) -> None:
    n = 400
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.04)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=n, concurrency=8)
        out = tmp_path / "run"
        ray_flags = ["--executor", "ray", "--ray-address", ray_cluster.address]
        proc = start("run", spec, "--out", out, *ray_flags, "--progress", "none")
        try:
            wait_for(lambda: sum(s == "scored" for s, _ in ledger_rows(out).values()) >= 40 or proc.poll() is not None)
        finally:
            proc.kill()  # SIGKILL: the driver gets no chance to clean up
            proc.communicate(timeout=30)
        finished = {sid for sid, (state, _) in ledger_rows(out).items() if state == "scored"}
        assert 0 < len(finished) < n
        before = llm.counts
        # The resume command proctor prints (spec.yaml in the run directory; it records the
        # executor), joining the same cluster.
        command = resume_command(out).split()
        assert command[:2] == ["proctor", "run"]
        resumed = run_proctor(*command[1:], "--ray-address", ray_cluster.address, "--progress", "none", timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        after = llm.counts
    rows = ledger_rows(out)
    assert len(rows) == n and all(state == "scored" for state, _ in rows.values())
    assert all(after[sid] == before[sid] for sid in finished), "a finished sample was requested again"
    stats = json.loads((out / "eval_stats.json").read_text(encoding="utf-8"))
    assert stats["counts"]["scored"] == n and stats["resumed_samples"] >= len(finished)


def test_the_private_ray_listens_on_loopback_only(tmp_path: Path, ray_cluster: RayCluster) -> None:
    # During a run, so the actors' and the joining driver's sockets count too.
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.05)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=200, concurrency=8)
        proc = start(
            "run", spec, "--out", tmp_path / "run", "--executor", "ray", "--ray-address", ray_cluster.address,
            "--progress", "none",
        )  # fmt: skip
        try:
            wait_for(lambda: llm.stats()["requests"] >= 20 or proc.poll() is not None)
            pids = {p.pid for p in ray_cluster.members()} | {proc.pid}
            sockets = listening(pids)
        finally:
            proc.kill()
            proc.communicate(timeout=30)
    assert len({pid for pid, _ in sockets}) >= 3, sockets  # GCS, raylet, workers at least
    outside = [(pid, local) for pid, local in sockets if not local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert not outside, f"Ray listens beyond loopback: {outside}"
