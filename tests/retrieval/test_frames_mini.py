"""examples/frames-mini: its data, a CI run with the real retrieval service and a fake model, and
(with --realmodel) a run with the real small tool-calling model."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from helpers import read_jsonl, run_proctor

from proctor.testing import FakeLLMConfig, FakeLLMThread

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "frames-mini"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_data_is_answerable_from_the_corpus() -> None:
    docs = read_jsonl(EXAMPLE / "corpus.jsonl")
    questions = read_jsonl(EXAMPLE / "data.jsonl")
    assert len(docs) >= 500 and len({d["id"] for d in docs}) == len(docs)
    assert len(questions) >= 50 and len({q["id"] for q in questions}) == len(questions)
    text = "\n".join(d["content"] for d in docs)
    assert all(q["answer"] in text for q in questions)
    assert {q["hops"] for q in questions} >= {"town -> founder", "town -> province -> river"}


def _spec_copy(tmp_path: Path, *, bm25_only: bool = False) -> Path:
    """The example's spec, with its own port and index directory (the corpus stays the example's).

    ``bm25_only`` keeps CI fast: the service is the real one, but embedding 500 documents would
    cost most of this file's time budget (the dense path runs in the orchestra example's test).
    """
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    launch = spec["solver"]["tools"][0]["launch"]
    launch.update(port=free_port(), index=str(tmp_path / "index"), corpus=str(EXAMPLE / "corpus.jsonl"))
    if bm25_only:
        launch.update(index_args=["--bm25", "--no-dense"])
    spec["dataset"]["path"] = str(EXAMPLE / "data.jsonl")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_frames_mini_runs_with_the_real_service_and_a_fake_model(tmp_path: Path) -> None:
    script = [
        {"content": '<tool_call>{"name": "retrieve", "arguments": {"query": "founder of Nedbel Bay"}}</tool_call>'},
        {"content": '<tool_call>{"name": "retrieve", "arguments": {"query": "Mirhal Visvis born"}}</tool_call>'},
        {"content": '<tool_call>{"name": "answer", "arguments": {"answer": "1767"}}</tool_call>'},
    ]
    with FakeLLMThread(FakeLLMConfig(model="orch", script=script)) as llm:
        result = run_proctor(
            "run",
            _spec_copy(tmp_path, bm25_only=True),
            "--model",
            f"subject={llm.base_url}@orch",
            "--limit",
            "2",
            "--out",
            tmp_path / "run",
            "--progress",
            "none",
            timeout=300,
        )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    trajectories = read_jsonl(tmp_path / "run" / "traj_log_all.jsonl")
    tools = [m["content"] for m in trajectories[0]["messages"] if m["role"] == "tool"]
    assert "(id=town-0) Nedbel Bay" in tools[0] and "(id=person-150) Mirhal Visvis" in tools[1]
    stats = json.loads((tmp_path / "run" / "eval_stats.json").read_text())
    assert stats["counts"]["scored"] == 2 and stats["accuracy"]["correct"] == 1  # fm-001's answer is 1767
    run_log = (tmp_path / "run" / "run.log").read_text()
    assert "building the retrieval index" in run_log and "stopped the server of role 'retrieval-" in run_log


@pytest.mark.realmodel
def test_frames_mini_with_the_real_small_model(tmp_path: Path) -> None:
    """The real service and Qwen2.5-Coder-0.5B (llama.cpp, launched by proctor) on 10 questions."""
    pytest.importorskip("llama_cpp")
    spec = _spec_copy(tmp_path)
    result = run_proctor("run", spec, "--limit", "10", "--out", tmp_path / "run", "--progress", "none", timeout=1800)
    assert result.returncode in (0, 1), result.stdout + result.stderr[-3000:]
    trajectories = read_jsonl(tmp_path / "run" / "traj_log_all.jsonl")
    assert len(trajectories) == 10
    retrieved = sum(1 for t in trajectories for m in t["messages"] if m["role"] == "tool" and "(id=" in m["content"])
    assert retrieved > 0, "the model never used the retrieval tool"
    stats = json.loads((tmp_path / "run" / "eval_stats.json").read_text())
    print(
        f"frames-mini, real model, 10 questions: accuracy {stats['accuracy']}, tool results with documents: {retrieved}"
    )
