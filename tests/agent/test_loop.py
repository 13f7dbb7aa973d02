"""The agent loop's own rules: calls, parsing, limits, truncation, trajectory, images, spec errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from proctor.errors import ContextOverflowError, InfraError, SpecError
from proctor.evals.agent.loop import (
    AgentSolver,
    SampleSkipped,
    agent_solver,
    parse_text_tool_calls,
    truncate_context,
)
from proctor.evals.agent.tools.base import Tool, ToolCallContext
from proctor.evals.types import SOLVERS, Sample
from proctor.models.config import ModelConfig

from .conftest import FakeModels, FakeRole, arun, make_ctx, reply, tool_call


class EchoTool(Tool):
    name = "echo"
    description = "Echo the text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    timeout = 5.0

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        return "echo:" + args["text"]


def solver(tools: list[Any] | None = None, **opts: Any) -> AgentSolver:
    s = agent_solver({"tools": tools if tools is not None else ["answer"], **opts})
    s.tools["echo"] = EchoTool()
    s.tool_names = frozenset(s.tools)
    s.schemas = [t.schema() for t in s.tools.values()]
    return s


def test_registered_and_answer_tool_ends_the_sample(sample: Sample) -> None:
    assert SOLVERS["agent"] is agent_solver
    role = FakeRole(
        [
            reply(None, [tool_call("echo", {"text": "hi"})]),
            reply("", [tool_call("answer", {"answer": "4"})]),
            reply("never"),
        ]
    )
    ctx, events = make_ctx(FakeModels(subject=role))
    res = arun(solver()(sample, ctx))
    assert res.output == "4" and res.outcome is None
    assert res.extra["answer_source"] == "tool:answer"
    assert res.model_calls == 2 and len(role.calls) == 2
    assert res.tokens_in == 20 and res.tokens_out == 10
    # every assistant message sent has content "" rather than null (llama.cpp rejects null)
    sent = role.calls[1]["messages"]
    assert all(m["content"] is not None for m in sent)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[3] == {"role": "tool", "tool_call_id": sent[2]["tool_calls"][0]["id"], "content": "echo:hi"}
    # the trajectory has timings on assistant and tool messages, and one record per turn
    timed = [m for m in res.messages if "timing" in m]
    assert [m["role"] for m in timed] == ["assistant", "tool", "assistant", "tool"]
    assert [t["turn"] for t in res.extra["turns"]] == [1, 2]
    assert res.extra["turns"][0]["tool_calls"][0]["tool"] == "echo"
    assert [e["tool"] for e in events.tools()] == ["echo", "answer"]
    assert role.calls[0]["tools"] and role.calls[0]["sample_id"] == "s1"


def test_final_message_rule_and_nudge(sample: Sample) -> None:
    role = FakeRole([reply("The answer is 4.")])
    res = arun(solver()(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.output == "The answer is 4." and res.extra["answer_source"] == "final_message"

    role = FakeRole([reply("thinking..."), reply(None, [tool_call("answer", {"answer": "4"})])])
    res = arun(solver(final_message=False)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.output == "4"
    assert role.calls[1]["messages"][-1]["role"] == "user"  # the nudge


def test_turn_limit_scores_the_answer_so_far(sample: Sample) -> None:
    role = FakeRole([reply("maybe 4", [tool_call("echo", {"text": "x"})])])
    res = arun(solver(max_turns=3)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.outcome == "turn_limit" and len(role.calls) == 3
    assert res.output == "maybe 4" and res.extra["answer_source"] == "last_message"


def test_token_limit(sample: Sample) -> None:
    role = FakeRole([reply("", [tool_call("echo", {"text": "x"})], prompt_tokens=400, completion_tokens=100)])
    res = arun(solver(max_turns=50, max_total_tokens=1200)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.outcome == "token_limit" and len(role.calls) == 3  # 500, 1000, 1500 >= 1200


def test_time_limit_during_a_model_call(sample: Sample) -> None:
    async def slow(messages: Any, kwargs: Any) -> Any:
        if len(role.calls) == 1:
            return reply("draft answer", [tool_call("echo", {"text": "x"})])
        await asyncio.sleep(60)  # cut off by the limit, never awaited to the end
        return reply("late")

    role = FakeRole(responder=slow)
    res = arun(solver(time_limit=0.5, max_turns=10)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.outcome == "time_limit" and res.output == "draft answer"


def test_engine_deadline_is_honoured(sample: Sample) -> None:
    role = FakeRole([reply("", [tool_call("echo", {"text": "x"})])])
    ctx, _ = make_ctx(FakeModels(subject=role), deadline=time.monotonic() - 1)
    res = arun(solver()(sample, ctx))
    assert res.outcome == "time_limit" and role.calls == []


def test_context_overflow_is_a_model_outcome(sample: Sample) -> None:
    role = FakeRole([reply("partial", [tool_call("echo", {"text": "x"})]), ContextOverflowError("too long")])
    res = arun(solver()(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.outcome == "context_overflow" and res.output == "partial"


def test_infra_error_propagates_with_the_trajectory(sample: Sample) -> None:
    role = FakeRole([reply("", [tool_call("echo", {"text": "x"})]), InfraError("down", error_class="connection")])
    with pytest.raises(InfraError) as info:
        arun(solver()(sample, make_ctx(FakeModels(subject=role))[0]))
    assert [m["role"] for m in info.value.trajectory] == ["system", "user", "assistant", "tool"]  # type: ignore[attr-defined]


def test_malformed_calls_are_reported_back_to_the_model(sample: Sample) -> None:
    calls = [
        tool_call("echo", '{"text": "unterminated', "bad_json"),
        tool_call("nope", {"x": 1}, "unknown"),
        tool_call("echo", {"txt": "typo"}, "missing"),
        tool_call("echo", {"text": ["a"]}, "badtype"),
        tool_call("echo", "[1, 2]", "notobject"),
    ]
    role = FakeRole([reply("", calls), reply("done")])
    res = arun(solver()(sample, make_ctx(FakeModels(subject=role))[0]))
    tool_msgs = {m["tool_call_id"]: m["content"] for m in role.calls[1]["messages"] if m["role"] == "tool"}
    assert "not a JSON object" in tool_msgs["bad_json"] and "invalid JSON" in tool_msgs["bad_json"]
    assert "unknown tool 'nope'" in tool_msgs["unknown"] and "echo" in tool_msgs["unknown"]
    assert "missing required argument(s): text" in tool_msgs["missing"]
    assert "must be of type string" in tool_msgs["badtype"]
    assert "expected a JSON object" in tool_msgs["notobject"]
    assert res.extra["tool_errors"] == 5 and res.output == "done"


def test_bare_json_and_tagged_calls_in_content(sample: Sample) -> None:
    bare = 'Let me check.\n{"name": "echo", "arguments": {"text": "bare"}}'
    tagged = '<tool_call>\n{"name": "echo", "arguments": {"text": "tagged"}}\n</tool_call>'
    role = FakeRole(
        [reply(bare), reply(tagged), reply('```json\n{"name": "answer", "parameters": {"answer": "4"}}\n```')]
    )
    res = arun(solver()(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.output == "4" and res.outcome is None
    sent = role.calls[2]["messages"]
    assert sent[2]["content"] == "Let me check." and sent[2]["tool_calls"][0]["function"]["name"] == "echo"
    assert sent[3]["content"] == "echo:bare" and sent[5]["content"] == "echo:tagged"
    assert sent[4]["content"] == ""
    assert all(t["tool_calls_from_text"] for t in res.extra["turns"])


def test_text_parsing_rules() -> None:
    names = frozenset({"python", "answer"})
    # a JSON answer that names no tool is not a call
    calls, rest = parse_text_tool_calls('{"name": "Alice", "age": 3}', names)
    assert calls == [] and rest == '{"name": "Alice", "age": 3}'
    calls, _ = parse_text_tool_calls(
        '[{"name": "python", "arguments": {"code": "1"}}, {"name": "answer", "arguments": {"answer": "x"}}]', names
    )
    assert [c.name for c in calls] == ["python", "answer"]
    calls, _ = parse_text_tool_calls('<tool_call>{bad json, "name": "python"}</tool_call>', names)
    assert calls[0].name == "python" and calls[0].arguments is None and "invalid JSON" in (calls[0].parse_error or "")
    calls, _ = parse_text_tool_calls(
        '<tool_call>{"name": "answer", "arguments": {"answer": "cut off by a stop"}}', names
    )
    assert calls[0].arguments == {"answer": "cut off by a stop"}
    calls, _ = parse_text_tool_calls('{"function": {"name": "python", "arguments": "{\\"code\\": \\"2\\"}"}}', names)
    assert calls[0].arguments == {"code": "2"}


def test_no_text_parsing_when_disabled(sample: Sample) -> None:
    role = FakeRole([reply('{"name": "echo", "arguments": {"text": "x"}}')])
    res = arun(solver(parse_text_tool_calls=False)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.extra["tool_calls"] == 0 and res.output.startswith('{"name"')


class RendezvousTool(Tool):
    """Finishes only once ``n`` calls are running at the same time; sequential calls would time out."""

    name = "meet"
    description = "wait for the others"
    parameters = {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}
    timeout = 10.0

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrived = 0
        self.all_here: asyncio.Event | None = None

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        if self.all_here is None:
            self.all_here = asyncio.Event()
        self.arrived += 1  # calls running right now
        try:
            if self.arrived == self.n:
                self.all_here.set()
            await self.all_here.wait()
            await asyncio.sleep(0.01)
            return f"met {args['who']}"
        finally:
            self.arrived -= 1


@pytest.mark.parametrize("parallel", [True, False])
def test_tool_calls_of_one_turn_run_concurrently(sample: Sample, parallel: bool) -> None:
    meet = RendezvousTool(3)
    meet.timeout = 10.0 if parallel else 0.3
    s = solver(parallel_tool_calls=parallel)
    s.tools["meet"] = meet
    calls = [tool_call("meet", {"who": w}, f"id_{w}") for w in "abc"]
    role = FakeRole([reply("", calls), reply("done")])
    ctx, events = make_ctx(FakeModels(subject=role))
    arun(s(sample, ctx))
    evs = [e for e in events.tools() if e["tool"] == "meet"]
    assert len(evs) == 3
    statuses = [e["status"] for e in evs]
    intervals = [(e["start"], e["start"] + e["duration"]) for e in evs]
    overlap = all(a0 < b1 and b0 < a1 for i, (a0, a1) in enumerate(intervals) for (b0, b1) in intervals[i + 1 :])
    if parallel:
        assert statuses == ["ok"] * 3 and overlap
        # results come back in call order, whatever order they finished in
        tool_ids = [m["tool_call_id"] for m in role.calls[1]["messages"] if m["role"] == "tool"]
        assert tool_ids == ["id_a", "id_b", "id_c"]
    else:
        assert statuses == ["timeout"] * 3 and not overlap


def test_truncation_keeps_head_and_whole_recent_turns() -> None:
    head = [{"role": "system", "content": "s" * 40}, {"role": "user", "content": "task" * 10}]
    turns = []
    for i in range(5):
        turns.append(
            {
                "role": "assistant",
                "content": f"a{i}" * 20,
                "tool_calls": [{"function": {"name": "x", "arguments": "{}"}}],
            }
        )
        turns.append({"role": "tool", "tool_call_id": str(i), "content": f"r{i}" * 20})
    msgs = head + turns
    assert truncate_context(msgs, 2, None) == (msgs, 0)
    assert truncate_context(msgs, 2, 10_000) == (msgs, 0)
    kept, dropped = truncate_context(msgs, 2, 80)
    assert kept[:2] == head and dropped >= 1
    assert kept[2]["role"] == "assistant"  # whole turns only: never a tool result without its call
    assert kept[-2:] == turns[-2:]
    # over budget even with one turn: the latest turn is still sent
    kept, dropped = truncate_context(msgs, 2, 1)
    assert kept == head + turns[-2:] and dropped == 4


def test_context_budget_applies_to_prompts_not_trajectory(sample: Sample) -> None:
    role = FakeRole([reply("", [tool_call("echo", {"text": "y" * 400})])])
    res = arun(solver(max_turns=6, context_budget=300)(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.outcome == "turn_limit"
    last = role.calls[-1]["messages"]
    assert len(last) < 2 + 5 * 2 and last[1]["content"] == "What is 2+2?"
    assert res.extra["turns"][-1]["dropped_turns"] > 0
    assert len([m for m in res.messages if m["role"] == "assistant"]) == 6


def test_images_skipped_or_sent() -> None:
    img = Sample(id="i", input="What is shown?", images=["data:image/png;base64,AAAA"])
    role = FakeRole([reply("a cat")])
    with pytest.raises(SampleSkipped) as info:
        arun(solver()(img, make_ctx(FakeModels(subject=role))[0]))
    assert "supports_images: false" in info.value.reason and role.calls == []

    role = FakeRole(
        [reply("a cat")], config=ModelConfig(model="vl", base_url="http://127.0.0.1:1/v1", supports_images=True)
    )
    res = arun(solver()(img, make_ctx(FakeModels(subject=role))[0]))
    content = role.calls[0]["messages"][1]["content"]
    assert content[0] == {"type": "text", "text": "What is shown?"}
    assert content[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert res.output == "a cat"


def test_chat_shaped_input_and_prompt_template() -> None:
    s = Sample(id="c", input=[{"role": "system", "content": "own system"}, {"role": "user", "content": "hi"}])
    role = FakeRole([reply("hello")])
    arun(solver()(s, make_ctx(FakeModels(subject=role))[0]))
    assert [m["content"] for m in role.calls[0]["messages"]] == ["own system", "hi"]
    role = FakeRole([reply("x")])
    arun(
        solver(prompt_template="Q: {input}\nUse tools.", system_prompt=None)(
            Sample(id="t", input="2+2"), make_ctx(FakeModels(subject=role))[0]
        )
    )
    assert role.calls[0]["messages"] == [{"role": "user", "content": "Q: 2+2\nUse tools."}]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_turns": "many"}, "solver.max_turns: expected an integer"),
        ({"max_turnz": 3}, "solver.max_turnz: unknown key"),
        ({"tools": ["pythn"]}, "solver.tools[0].type: unknown tool 'pythn'"),
        ({"tools": [{"type": "python", "timeout": "slow"}]}, "solver.tools[0].timeout: expected a number"),
        ({"tools": [{"type": "retrieve"}]}, "solver.tools[0]: the retrieve tool needs 'url' (or 'launch: "),
        ({"tools": ["answer", "answer"]}, "two tools are named 'answer'"),
        ({"tools": [{"type": "ask_expert", "mode": "python"}]}, "exactly one of 'role'"),
        ({"tools": [{"type": "custom", "path": "no_such_module_xyz:make"}]}, "solver.tools[0].path: cannot import"),
    ],
)
def test_spec_errors_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        agent_solver(options)
    assert message in str(info.value)


def test_custom_tool_from_a_file(tmp_path, sample: Sample) -> None:
    (tmp_path / "mytools.py").write_text(
        "from proctor.evals.agent.tools.base import Tool\n"
        "class Shout(Tool):\n"
        "    name = 'shout'\n"
        "    description = 'upper-case'\n"
        "    parameters = {'type': 'object', 'properties': {'text': {'type': 'string'}}, 'required': ['text']}\n"
        "    def __init__(self, suffix='!'):\n"
        "        self.suffix = suffix\n"
        "    async def run(self, args, ctx):\n"
        "        return args['text'].upper() + self.suffix\n"
        "def make(options):\n"
        "    return [Shout(options.get('suffix', '?'))]\n"
    )
    s = agent_solver(
        {
            "base_dir": str(tmp_path),
            "tools": [{"type": "custom", "path": "mytools.py:make", "options": {"suffix": "!!"}}, "answer"],
        }
    )
    role = FakeRole(
        [reply("", [tool_call("shout", {"text": "hey"})]), reply("", [tool_call("answer", {"answer": "ok"})])]
    )
    res = arun(s(sample, make_ctx(FakeModels(subject=role))[0]))
    assert res.output == "ok"
    assert [m["content"] for m in res.messages if m["role"] == "tool"][0] == "HEY!!"
    s2 = agent_solver(
        {"tools": [{"type": "custom", "path": f"{tmp_path / 'mytools.py'}:Shout", "options": {"suffix": "."}}]}
    )
    assert s2.tools["shout"].suffix == "."  # type: ignore[attr-defined]
    assert json.loads(json.dumps(s2.schemas))[0]["function"]["name"] == "shout"
