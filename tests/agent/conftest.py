"""Fakes for the agent tests: a ``models`` object whose roles answer from a script.

They stand in for ``ModelRouter`` where a test is about the loop's own logic (limits, parsing,
truncation); ``test_integration.py`` runs the same loop through the real router and fake server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from proctor.evals.types import Sample, SolveContext
from proctor.models.config import ModelConfig
from proctor.models.types import ChatResult

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def tool_call(name: str, arguments: Any, call_id: str | None = None) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": call_id or f"c_{name}_{abs(hash(args)) % 10000}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def reply(
    content: str | None = None,
    calls: list[dict[str, Any]] | None = None,
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
) -> ChatResult:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return ChatResult(
        content=content,
        tool_calls=calls or [],
        finish_reason="tool_calls" if calls else "stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        message=message,
        endpoint="fake://role",
        duration=0.0,
    )


Responder = Callable[[list[dict[str, Any]], dict[str, Any]], "ChatResult | Awaitable[ChatResult] | BaseException"]


class FakeRole:
    """Answers call k with ``script[k]`` (clamped), or with ``responder(messages, kwargs)``."""

    def __init__(
        self, script: list[Any] | None = None, responder: Responder | None = None, *, config: ModelConfig | None = None
    ) -> None:
        self.script = script or []
        self.responder = responder
        self.config = config or ModelConfig(model="fake-model", base_url="http://127.0.0.1:1/v1")
        self.calls: list[dict[str, Any]] = []

    async def chat(
        self,
        messages: list[dict[str, Any]],
        params: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        sample_id: str | None = None,
    ) -> ChatResult:
        kwargs = {"params": params, "tools": tools, "tool_choice": tool_choice, "sample_id": sample_id}
        self.calls.append({"messages": json.loads(json.dumps(messages)), **kwargs})
        if self.responder is not None:
            item: Any = self.responder(messages, kwargs)
        else:
            item = self.script[min(len(self.calls) - 1, len(self.script) - 1)]
        if asyncio.iscoroutine(item):
            item = await item
        if isinstance(item, BaseException):
            raise item
        return item


class FakeModels:
    def __init__(self, **roles: FakeRole) -> None:
        self.roles = roles

    def role(self, name: str) -> FakeRole:
        return self.roles[name]


class Events(list[dict[str, Any]]):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def tools(self) -> list[dict[str, Any]]:
        return [e for e in self if e.get("kind") == "tool"]


def make_ctx(models: Any, deadline: float | None = None) -> tuple[SolveContext, Events]:
    events = Events()
    return SolveContext(models=models, emit=events, deadline=deadline), events


@pytest.fixture
def sample() -> Sample:
    return Sample(id="s1", input="What is 2+2?", target="4")
