"""A sample the agent loop fails on keeps what happened before the failure (issue 10).

The loop attaches the partial trajectory to the error it raises; the engine must record it, so
``traj_log_all.jsonl`` shows the turns that led to an infrastructure failure.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from helpers import read_jsonl, run_proctor, write_jsonl

from proctor.testing import FakeLLMConfig, FakeLLMThread

SCRIPT = [{"tool_calls": [{"name": "ask", "arguments": {"task": "what is 6*7?"}}]}, {"content": "42"}]


def test_an_infra_error_keeps_the_partial_trajectory_in_the_traj_log(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"id": "q1", "question": "What is 6*7?", "answer": "42"}])
    subject_cfg = FakeLLMConfig(model="orch", script=SCRIPT)
    expert_cfg = FakeLLMConfig(model="expert", fail_rate=1.0)
    with FakeLLMThread(subject_cfg) as subject, FakeLLMThread(expert_cfg) as expert:
        (tmp_path / "spec.yaml").write_text(
            textwrap.dedent(f"""
            name: partial
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
            """)
        )
        result = run_proctor("run", tmp_path / "spec.yaml", "--out", tmp_path / "run", "--progress", "none")
    assert result.returncode == 1, result.stdout + result.stderr  # finished, one sample errored
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert samples[0]["state"] == "error" and samples[0]["error"]["class"] == "http_5xx"
    lines = read_jsonl(tmp_path / "run" / "traj_log_all.jsonl")
    assert [line["id"] for line in lines] == ["q1"]
    messages = lines[0]["messages"]
    assert messages[-1]["role"] == "assistant"  # the subject's call to the expert, before the failure
    assert messages[-1]["tool_calls"][0]["function"]["name"] == "ask"
    assert lines[0]["state"] == "error" and len(lines[0]["turns"]) == 1
