"""The fields `proctor analyze` needs, at the sites that emit them.

A model event says how long the call waited for a free replica slot (``queue_s``); the agent
emits one ``sample`` event per sample with its turns, tool calls, wall time and the limit it hit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agent.conftest import FakeModels, FakeRole, arun, make_ctx, reply, tool_call
from agent.test_loop import solver
from models.modelkit import fast_config, user

from proctor.errors import InfraError
from proctor.evals.types import Sample
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig


def test_model_events_say_how_long_each_call_queued_for_a_replica() -> None:
    async def main() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with FakeLLM(FakeLLMConfig(reply="arith", latency=0.05)) as llm:
            config = fast_config(base_url=llm.base_url, max_connections=1, adaptive_concurrency=False)
            async with ModelRouter({"subject": config}, on_event=events.append) as router:
                role = router.role("subject")
                await asyncio.gather(*(role.chat(user("what is 1 + 1"), sample_id=f"s{i}") for i in range(3)))
        return events

    events = arun(main())
    queued = sorted(e["queue_s"] for e in events)
    # One slot, three calls at once: the first goes straight in, the other two wait their turn.
    assert queued[0] == 0.0 and queued[1] > 0 and queued[2] > queued[1]
    assert all(e["queue_s"] <= e["duration"] for e in events)


def test_the_agent_records_each_sample_with_its_turns_and_limit() -> None:
    sample = Sample(id="s1", input="What is 2+2?", target="4")
    role = FakeRole([reply("maybe", [tool_call("echo", {"text": "x"}), tool_call("echo", {"text": "y"})])])
    ctx, events = make_ctx(FakeModels(subject=role))
    arun(solver(max_turns=3)(sample, ctx))
    [record] = [e for e in events if e["kind"] == "sample"]
    assert record["sample_id"] == "s1" and record["outcome"] == "turn_limit"
    assert record["turns"] == 3 and record["tool_calls"] == 6 and record["duration"] >= 0

    failing = FakeRole([InfraError("down", error_class="connection")])
    ctx, events = make_ctx(FakeModels(subject=failing))
    with pytest.raises(InfraError):
        arun(solver()(sample, ctx))
    [record] = [e for e in events if e["kind"] == "sample"]
    assert record["outcome"] == "connection" and record["turns"] == 0
