"""The typed event records are what the model layer and the agent emit, and their lines on disk
are what they always were (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NotRequired, get_origin, get_type_hints

from agent.conftest import FakeModels, FakeRole, arun, make_ctx, reply, tool_call
from agent.test_loop import solver
from models.modelkit import fast_config, user

from proctor.evals.types import Sample
from proctor.models.router import ModelRouter
from proctor.profiling.events import Event, EventLog, ModelEvent, SampleEvent, ToolEvent, read_events
from proctor.testing import FakeLLM, FakeLLMConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_real_model_call_emits_exactly_the_typed_model_event(tmp_path: Path) -> None:
    async def main() -> list[Event]:
        events: list[Event] = []
        async with FakeLLM(FakeLLMConfig(reply="arith")) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append) as router:
                await router.role("subject").chat(user("what is 1 + 1"), sample_id="s1")
        return events

    [event] = arun(main())
    assert list(event) == list(get_type_hints(ModelEvent))  # the same keys, in the order written
    log = EventLog(tmp_path / "events.jsonl")
    log.write(event)
    log.close()
    assert (tmp_path / "events.jsonl").read_text() == json.dumps(event, default=str) + "\n"


def test_the_agents_tool_and_sample_events_match_their_types() -> None:
    role = FakeRole(
        [reply(None, [tool_call("echo", {"text": "hi"})]), reply("", [tool_call("answer", {"answer": "4"})])]
    )
    ctx, events = make_ctx(FakeModels(subject=role))
    arun(solver()(Sample(id="s1", input="What is 2+2?", target="4"), ctx))
    tools = [e for e in events if e["kind"] == "tool"]
    samples = [e for e in events if e["kind"] == "sample"]
    assert tools and samples
    hints = get_type_hints(ToolEvent, include_extras=True)
    tool_keys = set(hints)
    required = {key for key, hint in hints.items() if get_origin(hint) is not NotRequired}
    assert all(required <= set(e) <= tool_keys for e in tools)
    assert all(list(e) == list(get_type_hints(SampleEvent)) for e in samples)


def test_the_profiling_fixtures_still_load() -> None:
    for name in ("events_known.jsonl", "events_c32.jsonl"):
        events: list[dict[str, Any]] = read_events(FIXTURES / name)
        assert events and all(e.get("kind", "model") in ("model", "tool", "sample") for e in events)
