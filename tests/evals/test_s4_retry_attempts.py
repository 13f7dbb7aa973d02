"""A retried sample's artifacts describe the attempt that produced its record, never an older one.

A sample that fails with an infrastructure error keeps the partial trajectory of that attempt.
When it is dispatched again (``--retry-errors``, or a resume after an interrupted retry), that
partial no longer belongs to anything: the ledger drops it when the new attempt starts, every
event names the attempt it came from, and ``proctor rescore`` never grades a partial as an answer.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from helpers import read_jsonl, run_proctor, wait_for, write_jsonl

from proctor.profiling.analysis import analyze
from proctor.testing import FakeLLMConfig, FakeLLMThread

SCRIPT = [{"tool_calls": [{"name": "ask", "arguments": {"task": "what is 6*7?"}}]}, {"content": "42"}]
ROWS = [
    {"id": "q1", "question": "What is 6*7?", "answer": "42"},
    {"id": "q2", "question": "What is 6*7, again?", "answer": "42"},
]


def write_agent_spec(tmp_path: Path, subject: FakeLLMThread, expert: FakeLLMThread) -> Path:
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""
        name: attempts
        dataset: {{path: data.jsonl, fields: {{id: id, input: question, target: answer}}}}
        models:
          subject: {{base_url: "{subject.base_url}", model: orch}}
          expert:
            base_url: "{expert.base_url}"
            model: expert
            retry: {{max_attempts: 1}}
        solver:
          type: agent
          tools:
            - {{type: ask_expert, name: ask, role: expert}}
        scorer: exact
        concurrency: 2
        """)
    )
    return spec


@contextlib.contextmanager
def q1_failed_once(tmp_path: Path) -> Iterator[tuple[FakeLLMThread, FakeLLMThread, Path, Path]]:
    """(subject, expert, spec, run dir) after a first run in which q1 failed on the expert."""
    with (
        FakeLLMThread(FakeLLMConfig(model="orch", script=SCRIPT)) as subject,
        FakeLLMThread(FakeLLMConfig(model="expert", reply="42", fail_samples={"q1": -1})) as expert,
    ):
        spec = write_agent_spec(tmp_path, subject, expert)
        out = tmp_path / "run"
        first = run_proctor("run", spec, "--out", out, "--progress", "none")
        assert first.returncode == 1, first.stdout + first.stderr  # q1 failed on the expert, q2 scored
        yield subject, expert, spec, out


def by_id(path: Path) -> dict[str, dict[str, object]]:
    return {str(line["id"]): line for line in read_jsonl(path)}


def test_a_retried_sample_keeps_only_the_trajectory_and_events_of_its_last_attempt(tmp_path: Path) -> None:
    with q1_failed_once(tmp_path) as (subject, expert, spec, out):
        traj = by_id(out / "traj_log_all.jsonl")
        assert traj["q1"]["state"] == "error" and traj["q1"]["attempt"] == 1
        assert len(traj["q1"]["turns"]) == 1  # the partial trajectory of attempt 1

        # Attempt 2 hangs on the subject and is interrupted: it produced nothing, so nothing of
        # attempt 1 may be shown as q1's trajectory (q1 is "running", then pending again).
        expert.reconfigure(fail_samples={})
        subject.reconfigure(hang_rate=1.0, hang_seconds=120.0)
        asked = subject.stats()["requests"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--retry-errors"]
            + ["--progress", "none", "--grace", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: subject.stats()["requests"] > asked or proc.poll() is not None)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == 130, stderr
        assert "q1" not in by_id(out / "traj_log_all.jsonl")
        record = by_id(out / "samples.jsonl")["q1"]
        assert record["state"] == "running" and record["attempt"] == 2 and record["outcome"] is None

        # Attempt 3 succeeds: its trajectory, and only its, is q1's.
        subject.reconfigure(hang_rate=0.0)
        third = run_proctor("run", spec, "--out", out, "--progress", "none")
        assert third.returncode == 0, third.stdout + third.stderr
    traj = by_id(out / "traj_log_all.jsonl")
    assert traj["q1"]["state"] == "scored" and traj["q1"]["score"] == 1.0 and traj["q1"]["attempt"] == 3
    assert len(traj["q1"]["turns"]) == 2
    assert traj["q2"]["attempt"] == 1
    # events.jsonl keeps every attempt's calls (it is the run's history), each naming its attempt.
    events = [e for e in read_jsonl(out / "events.jsonl") if e.get("sample_id") == "q1"]
    assert {e["attempt"] for e in events} == {1, 2, 3}
    assert {e["attempt"] for e in events if e["kind"] == "tool"} == {1, 3}
    # `proctor analyze` describes a sample by its last attempt: two turns, one tool call.
    row = next(r for r in analyze(out)["samples"]["slowest"] if r["sample_id"] == "q1")
    assert (row["turns"], row["tool_calls"], row["finished"]) == (2, 1, True)


def test_rescore_never_grades_an_infra_errors_partial_trajectory(tmp_path: Path) -> None:
    with q1_failed_once(tmp_path) as (_, _, _, out):
        pass
    assert by_id(out / "traj_log_all.jsonl")["q1"]["state"] == "error"  # a partial is stored
    result = run_proctor("rescore", out, "--scorer", "includes")
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["counts"]["scored"] == 1 and stats["errors"]["by_class"] == {"http_5xx": 1}
    assert stats["accuracy"]["denominator"] == 1  # the infra error is still not a wrong answer
    record = by_id(out / "samples.jsonl")["q1"]
    assert record["state"] == "error" and record["score"] is None


def test_analyze_describes_a_retried_plain_sample_by_its_last_attempt(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", ROWS)
    with FakeLLMThread(FakeLLMConfig(reply="42", fail_samples={"q1": 1})) as llm:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            textwrap.dedent(f"""
            name: plain
            dataset: {{path: data.jsonl, fields: {{id: id, input: question, target: answer}}}}
            models:
              subject: {{base_url: "{llm.base_url}", model: fake, retry: {{max_attempts: 1}}}}
            solver: generate
            scorer: exact
            """)
        )
        out = tmp_path / "run"
        assert run_proctor("run", spec, "--out", out, "--progress", "none").returncode == 1
        result = run_proctor("run", spec, "--out", out, "--progress", "none", "--retry-errors")
        assert result.returncode == 0, result.stdout + result.stderr
    calls = [e for e in read_jsonl(out / "events.jsonl") if e.get("sample_id") == "q1"]
    assert [(e["attempt"], e["status"]) for e in calls] == [(1, "http_5xx"), (2, "ok")]
    row = next(r for r in analyze(out)["samples"]["slowest"] if r["sample_id"] == "q1")
    assert row["turns"] == 1  # the successful attempt's one call, not both attempts' calls
