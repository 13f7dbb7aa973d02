"""The agent loop through the real ModelRouter, fake LLM servers and the retrieval stand-in."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from proctor.evals.agent.loop import agent_solver
from proctor.evals.types import Sample, SolveContext
from proctor.models.config import ModelConfig
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig
from proctor.testing.retrieval import RetrievalServer

from .conftest import arun

DOCS = [
    {"id": "eiffel", "content": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."},
    {"id": "everest", "content": "Mount Everest is 8849 metres high."},
]

ORCHESTRATOR_SCRIPT = [
    # turn 0: two tools at once, one of them an expert that writes code
    {
        "tool_calls": [
            {"name": "search", "arguments": {"task": "when was the Eiffel Tower completed"}},
            {"name": "enhance_reasoning", "arguments": {"task": "compute 6*7"}},
        ]
    },
    # turn 1: a model without a tool parser writes the call in its text
    {"content": '<tool_call>\n{"name": "retrieve", "arguments": {"query": "Eiffel Tower Paris"}}\n</tool_call>'},
    # turn 2: an expert gives the final answer
    {"tool_calls": [{"name": "answer", "arguments": {"task": "It was completed in 1889.", "model": "answerer"}}]},
]


def test_orchestra_loop_through_router(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))

    async def go() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncExitStack() as stack:
            orch = await stack.enter_async_context(
                FakeLLM(FakeLLMConfig(model="orch", script=ORCHESTRATOR_SCRIPT), host="127.0.0.1", port=0)
            )
            searcher = await stack.enter_async_context(
                FakeLLM(FakeLLMConfig(model="searcher", reply="Eiffel Tower completed"), host="127.0.0.1", port=0)
            )
            coder = await stack.enter_async_context(
                FakeLLM(FakeLLMConfig(model="coder", reply="```python\nprint(6*7)\n```"), host="127.0.0.1", port=0)
            )
            answerer = await stack.enter_async_context(
                FakeLLM(FakeLLMConfig(model="answerer", reply="1889"), host="127.0.0.1", port=0)
            )
            retr = await stack.enter_async_context(RetrievalServer(DOCS))
            model_events: list[dict[str, Any]] = []
            models = {
                "subject": ModelConfig(model="orch", base_url=orch.base_url),
                "searcher": ModelConfig(model="searcher", base_url=searcher.base_url),
                "coder": ModelConfig(model="coder", base_url=coder.base_url),
                "answerer": ModelConfig(model="answerer", base_url=answerer.base_url),
            }
            router = await stack.enter_async_context(ModelRouter(models, on_event=model_events.append))
            solver = agent_solver(
                {
                    "max_turns": 10,
                    "tools": [
                        {
                            "type": "ask_expert",
                            "name": "search",
                            "role": "searcher",
                            "mode": "retrieve",
                            "retrieve": {"url": retr.url, "topk": 1},
                        },
                        {"type": "ask_expert", "name": "enhance_reasoning", "role": "coder", "mode": "python"},
                        {"type": "retrieve", "url": retr.url, "topk": 1},
                        {
                            "type": "ask_expert",
                            "name": "answer",
                            "roles": ["answerer"],
                            "mode": "answer",
                            "final": True,
                        },
                    ],
                }
            )
            tool_events: list[dict[str, Any]] = []
            try:
                res = await solver(
                    Sample(id="q1", input="When was the Eiffel Tower completed?", target="1889"),
                    SolveContext(models=router, emit=tool_events.append),
                )
            finally:
                await solver.aclose()
            assert retr.requests == 2
            return res, model_events, tool_events

    res, model_events, emitted = arun(go())
    tool_events = [e for e in emitted if e["kind"] == "tool"]
    # and one record of the whole sample, for `proctor analyze`
    assert [(e["turns"], e["tool_calls"], e["outcome"]) for e in emitted if e["kind"] == "sample"] == [
        (3, res.extra["tool_calls"], None)
    ]
    assert res.output == "1889" and res.outcome is None and res.model_calls == 3
    assert res.extra["answer_source"] == "tool:answer"
    tools = [m for m in res.messages if m["role"] == "tool"]
    assert "Eiffel Tower completed" in tools[0]["content"] and "(id=eiffel)" in tools[0]["content"]
    assert tools[1]["content"].rstrip().endswith("42")
    assert tools[2]["content"].startswith("[1] (id=eiffel)")
    assert res.extra["turns"][1]["tool_calls_from_text"] is True
    assert all(m["content"] is not None for m in res.messages)
    by_tool = {e["tool"]: e for e in tool_events}
    assert by_tool["search"]["expert_role"] == "searcher" and by_tool["search"]["expert_model"] == "searcher"
    assert set(by_tool["search"]["steps"]) == {"query_writing", "retrieval"}
    assert set(by_tool["enhance_reasoning"]["steps"]) == {"code_writing", "execution"}
    assert all(e["status"] == "ok" and e["sample_id"] == "q1" for e in tool_events)
    roles = sorted(e.get("role") for e in model_events)
    assert roles == ["answerer", "coder", "searcher", "subject", "subject", "subject"]


def test_context_overflow_from_the_server_ends_the_sample() -> None:
    script = [
        {"content": "", "tool_calls": [{"name": "python", "arguments": {"code": "print('x' * 5000)"}}]},
        {"content": "unreachable"},
    ]

    async def go() -> Any:
        async with FakeLLM(
            FakeLLMConfig(model="m", script=script, context_limit=3000), host="127.0.0.1", port=0
        ) as llm:
            async with ModelRouter({"subject": ModelConfig(model="m", base_url=llm.base_url)}) as router:
                solver = agent_solver({"tools": [{"type": "python", "output_chars": 20000}, "answer"]})
                return await solver(
                    Sample(id="o", input="print a lot"), SolveContext(models=router, emit=lambda e: None)
                )

    res = arun(go())
    assert res.outcome == "context_overflow" and res.model_calls == 1
