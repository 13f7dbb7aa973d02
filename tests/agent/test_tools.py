"""retrieve, web_search, ask_expert and answer tools, and the retrieval stand-in they talk to."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proctor.errors import InfraError
from proctor.evals.agent.tools import build_tools
from proctor.evals.agent.tools._http import close_sessions
from proctor.evals.agent.tools.base import ToolCall, ToolCallContext, ToolOutcome, invoke_tool
from proctor.evals.agent.tools.web_search import UNAVAILABLE
from proctor.evals.types import Sample
from proctor.testing.retrieval import BM25Index, RetrievalServer

from .conftest import FakeModels, FakeRole, arun, make_ctx, reply

DOCS = [
    {"id": "d1", "content": "The Eiffel Tower is in Paris and was completed in 1889."},
    {"id": "d2", "content": "Mount Everest is the highest mountain above sea level, 8849 metres."},
    {"id": "d3", "content": "Python was created by Guido van Rossum and first released in 1991."},
]


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def call(
    tools_spec: list[Any], name: str, args: dict[str, Any], models: Any = None, sample: Sample | None = None
) -> tuple[ToolOutcome, list[dict[str, Any]]]:
    tools = {t.name: t for t in build_tools(tools_spec)}
    ctx, events = make_ctx(models or FakeModels())
    try:
        out = await invoke_tool(
            tools,
            ToolCall("c1", name, args),
            ToolCallContext(sample or Sample(id="s", input="Who created Python?"), ctx),
            turn=1,
        )
    finally:
        await close_sessions()
    return out, events.tools()


def test_bm25_ranks_the_matching_document_first() -> None:
    index = BM25Index(DOCS)
    hits = index.search("who created python", 2)
    assert hits[0]["document"]["id"] == "d3" and hits[0]["score"] > 0
    assert index.search("zzz unknown", 3) == []


def test_retrieval_server_protocol(tmp_path: Path) -> None:
    async def go() -> None:
        async with RetrievalServer.from_file(write_corpus(tmp_path / "c.jsonl")) as srv, aiohttp.ClientSession() as s:
            async with s.post(srv.url, json={"queries": ["highest mountain", "eiffel tower"], "topk": 1}) as r:
                data = await r.json()
            assert [q[0]["document"]["id"] for q in data] == ["d2", "d1"]
            assert set(data[0][0]) == {"document", "score"} and set(data[0][0]["document"]) == {"id", "content"}
            async with s.post(srv.url, json={"queries": "not a list"}) as r:
                assert r.status == 400
            assert srv.requests == 2

    arun(go())


def test_retrieve_tool(tmp_path: Path) -> None:
    async def go() -> None:
        async with RetrievalServer.from_file(write_corpus(tmp_path / "c.jsonl")) as srv:
            out, events = await call(
                [{"type": "retrieve", "url": srv.url, "topk": 2}], "retrieve", {"query": "Guido Python"}
            )
            assert out.status == "ok" and out.content.startswith("[1] (id=d3)")
            assert events[0]["steps"]["retrieval"] >= 0 and events[0]["sample_id"] == "s"

    arun(go())


def test_retrieve_service_down_is_an_error_message_not_a_crash() -> None:
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    out, events = arun(call([{"type": "retrieve", "url": url}], "retrieve", {"query": "x"}))
    assert out.status == "error" and "retrieval service unreachable" in out.content
    assert events[0]["status"] == "error"


def test_web_search_without_key_is_unavailable(monkeypatch) -> None:
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    out, _ = arun(call(["web_search"], "web_search", {"query": "x"}))
    assert out.content == UNAVAILABLE


def test_tavily_adapter_sends_the_key_only_in_a_header(monkeypatch) -> None:
    monkeypatch.setenv("PROCTOR_TEST_TAVILY", "tvly-secret-key")
    seen: list[dict[str, Any]] = []

    async def search(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), "body": body})
        return web.json_response(
            {"results": [{"title": "Python", "url": "https://python.org", "content": "Guido van Rossum"}]}
        )

    async def go() -> tuple[ToolOutcome, list[dict[str, Any]]]:
        app = web.Application()
        app.router.add_post("/search", search)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            spec = {"type": "web_search", "api_key_env": "PROCTOR_TEST_TAVILY", "base_url": f"http://127.0.0.1:{port}"}
            return await call([spec], "web_search", {"query": "python creator"})
        finally:
            await runner.cleanup()

    out, events = arun(go())
    assert "Guido van Rossum" in out.content and "https://python.org" in out.content
    assert seen == [{"auth": "Bearer tvly-secret-key", "body": {"query": "python creator", "max_results": 5}}]
    assert "tvly-secret-key" not in json.dumps(events) + out.content


def test_expert_answer_mode_is_final_and_names_the_expert() -> None:
    expert = FakeRole([reply("Answer: Guido van Rossum")])
    spec = [
        {
            "type": "ask_expert",
            "name": "answer",
            "role": "oracle",
            "final": True,
            "prompt": "Q={question} T={task} {json: 1}",
        }
    ]
    out, events = arun(call(spec, "answer", {"task": "I think it is Guido"}, FakeModels(oracle=expert)))
    assert out.final and out.content == "Answer: Guido van Rossum"
    assert expert.calls[0]["messages"][0]["content"] == "Q=Who created Python? T=I think it is Guido {json: 1}"
    assert events[0]["expert_role"] == "oracle" and events[0]["expert_model"] == "fake-model"
    assert "generation" in events[0]["steps"]


def test_expert_python_mode_runs_the_written_code() -> None:
    expert = FakeRole([reply("Here:\n```python\nprint(sum(int(d) for d in str(2**100)))\n```")])
    spec = [{"type": "ask_expert", "name": "enhance_reasoning", "roles": ["coder", "other"], "mode": "python"}]
    out, events = arun(
        call(
            spec,
            "enhance_reasoning",
            {"task": "digit sum of 2**100", "model": "coder"},
            FakeModels(coder=expert, other=FakeRole()),
        )
    )
    assert out.status == "ok" and out.content.rstrip().endswith("115")
    assert set(events[0]["steps"]) == {"code_writing", "execution"} and events[0]["expert_role"] == "coder"
    bad, _ = arun(call(spec, "enhance_reasoning", {"task": "x", "model": "nobody"}, FakeModels(coder=expert)))
    assert bad.status == "invalid" and "must be one of" in bad.content


def test_expert_retrieve_mode_with_unavailable_fallback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    expert = FakeRole([reply("Query: highest mountain\n")])

    async def go() -> None:
        async with RetrievalServer.from_file(write_corpus(tmp_path / "c.jsonl")) as srv:
            spec = [
                {
                    "type": "ask_expert",
                    "name": "search",
                    "role": "searcher",
                    "mode": "retrieve",
                    "retrieve": {"url": srv.url},
                    "web_search": {},
                }
            ]
            out, events = await call(spec, "search", {"task": "height of Everest"}, FakeModels(searcher=expert))
            assert out.content.startswith("Query: highest mountain\nResults:\n[1] (id=d2)")
            assert set(events[0]["steps"]) == {"query_writing", "retrieval"}
            # nothing found, no web provider configured: the model is told so
            expert.script = [reply("zzzz qqqq")]
            out, _ = await call(spec, "search", {"task": "?"}, FakeModels(searcher=expert))
            assert "(no results)" in out.content

    arun(go())


def test_expert_infra_error_propagates_and_is_recorded() -> None:
    expert = FakeRole([InfraError("expert down", error_class="connection")])
    with pytest.raises(InfraError):
        arun(call([{"type": "ask_expert", "role": "e"}], "ask_expert", {"task": "x"}, FakeModels(e=expert)))


def test_tool_timeout_and_crash_become_messages() -> None:
    slow = FakeRole(responder=lambda m, k: asyncio.sleep(30))
    out, events = arun(
        call([{"type": "ask_expert", "role": "e", "timeout": 0.2}], "ask_expert", {"task": "x"}, FakeModels(e=slow))
    )
    assert out.status == "timeout" and "timed out" in out.content and events[0]["status"] == "timeout"
    broken = FakeRole(responder=lambda m, k: RuntimeError("bug in tool"))
    out, _ = arun(call([{"type": "ask_expert", "role": "e"}], "ask_expert", {"task": "x"}, FakeModels(e=broken)))
    assert out.status == "error" and "RuntimeError: bug in tool" in out.content


def test_answer_tool_accepts_numbers() -> None:
    out, _ = arun(call(["answer"], "answer", {"answer": 42}))
    assert out.final and out.status == "ok" and out.content == "42"
