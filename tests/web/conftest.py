"""Fixtures of the dashboard tests: finished runs, and a server with finished jobs of two users."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from web_helpers import FAILING, Runs, Served, agent_spec, arith_spec, local_run, start_server, submit, wait_job  # noqa: E402

from proctor.testing import FakeLLMConfig, FakeLLMThread  # noqa: E402


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMThread]:
    """Arithmetic answers, and every request of the FAILING samples is a 500."""
    config = FakeLLMConfig(reply="arith", fail_samples=dict.fromkeys(FAILING, -1))
    with FakeLLMThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def agent_llm() -> Iterator[FakeLLMThread]:
    with FakeLLMThread(
        FakeLLMConfig(script=[{"tool_calls": [{"name": "answer", "arguments": {"answer": "42"}}]}])
    ) as s:
        yield s


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMThread, agent_llm: FakeLLMThread) -> Runs:
    """Two finished local runs made by the real engine: arithmetic (with errors) and an agent."""
    root = tmp_path_factory.mktemp("runs")
    arith = local_run(arith_spec(root / "arith-spec", llm.base_url), root / "arith")
    agent = local_run(agent_spec(root / "agent-spec", agent_llm.base_url), root / "agent")
    return Runs(arith, agent)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMThread, agent_llm: FakeLLMThread) -> Iterator[Served]:
    """A real server (uvicorn on loopback) with finished jobs: alice's arithmetic and agent, bob's arithmetic."""
    root = tmp_path_factory.mktemp("served")
    server = start_server(root / "data")
    try:
        alice_job = submit(server, "alice", arith_spec(root / "a", llm.base_url))
        bob_job = submit(server, "bob", arith_spec(root / "b", llm.base_url, n=6))
        agent_job = submit(server, "alice", agent_spec(root / "c", agent_llm.base_url))
        for who, job in (("alice", alice_job), ("bob", bob_job), ("alice", agent_job)):
            final = wait_job(server, who, job, {"succeeded", "failed", "cancelled", "timed_out"})
            assert final["state"] == "succeeded", final
        yield Served(server, alice_job, bob_job, agent_job)
    finally:
        server.stop()
