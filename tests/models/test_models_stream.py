"""Streaming: content and tool-call deltas assembled, usage requested, time to first token recorded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from models.modelkit import StubLLM, fast_config, user

from proctor.models.config import GenerateParams
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig

STREAM = GenerateParams(stream=True)


def test_stream_content_usage_and_ttft() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        cfg = FakeLLMConfig(reply="The answer is forty-two, and here is why it is so.", latency=0.2)
        async with FakeLLM(cfg) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append) as router:
                result = await router.role("subject").chat(user(), params=STREAM, sample_id="s")
        assert result.content == cfg.reply and result.finish_reason == "stop"
        assert result.prompt_tokens > 0 and result.completion_tokens > 0  # from stream_options usage
        assert result.ttft is not None and 0 < result.ttft < result.duration
        assert result.message == {"role": "assistant", "content": cfg.reply}
        [event] = events
        assert event["ttft"] == result.ttft and event["tokens_out"] == result.completion_tokens

    asyncio.run(main())


def test_stream_tool_calls_are_assembled() -> None:
    async def main() -> None:
        script = [
            {
                "tool_calls": [
                    {"name": "python", "arguments": {"code": "print(6*7)"}},
                    {"name": "answer", "arguments": {"text": "42"}},
                ]
            }
        ]
        async with FakeLLM(FakeLLMConfig(script=script)) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}) as router:
                streamed = await router.role("subject").chat(user(), params=STREAM)
                plain = await router.role("subject").chat(user())
        assert streamed.finish_reason == "tool_calls" and len(streamed.tool_calls) == 2
        names = [c["function"]["name"] for c in streamed.tool_calls]
        assert names == ["python", "answer"]
        assert json.loads(streamed.tool_calls[0]["function"]["arguments"]) == {"code": "print(6*7)"}
        assert all(c["id"] and c["type"] == "function" for c in streamed.tool_calls)
        assert streamed.message["tool_calls"] == streamed.tool_calls
        assert [c["function"] for c in plain.tool_calls] == [c["function"] for c in streamed.tool_calls]

    asyncio.run(main())


def test_stream_request_body_and_truncated_stream_retry() -> None:
    async def main() -> None:
        async with StubLLM() as stub:
            chunk = {"choices": [{"index": 0, "delta": {"content": "par"}}]}
            truncated = f"data: {json.dumps(chunk)}\n\n"  # no finish_reason, no [DONE]
            stub.push(200, truncated)
            whole = (
                f"data: {json.dumps(chunk)}\n\n"
                + f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': 'tial'}, 'finish_reason': 'stop'}]})}\n\n"
                + f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 7, 'completion_tokens': 2}})}\n\n"
                + "data: [DONE]\n\n"
            )
            stub.push(200, whole)
            async with ModelRouter({"subject": fast_config(base_url=stub.base_url)}) as router:
                result = await router.role("subject").chat(user(), params=STREAM)
        body = stub.requests[0].body
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert result.attempts == 2 and result.content == "partial"
        assert (result.prompt_tokens, result.completion_tokens) == (7, 2)

    asyncio.run(main())
