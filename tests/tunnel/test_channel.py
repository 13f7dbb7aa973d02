"""The job channel: a proctor job's private calls over one WebSocket to the hub.

The engine's own client (``ModelRouter`` with ``transport: tunnel``) or ``TunnelChannel`` talks
to a real uvicorn hub; a real agent forwards to the fake LLM. The channel must keep every promise
of the facade: who may use it, what is forwarded, replay, deadlines, backpressure, big bodies
and streams.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
from tunnel.tunnelkit import chat, gated_stream_server, run, running_agent, wait_until

from proctor.errors import ModelAbortError
from proctor.models.config import GenerateParams, ModelConfig
from proctor.models.router import ModelRouter
from proctor.models.transport.channel import ChannelError, TunnelChannel, channel_url
from proctor.testing import FakeLLM, FakeLLMConfig


def _router(server: Any, job: str, internal: str, **config: Any) -> ModelRouter:
    base = {"model": "fake", "base_url": server.facade(job), "transport": "tunnel", "api_key_env": "K"}
    models = {"subject": ModelConfig(**{**base, **config})}
    return ModelRouter(models, environ={"K": internal})


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _body(text: str, **extra: Any) -> bytes:
    return json.dumps(chat(text, **extra)).encode()


def _channel(server: Any, job: str, internal: str, http: aiohttp.ClientSession) -> TunnelChannel:
    return TunnelChannel(channel_url(server.facade(job)), {"Authorization": f"Bearer {internal}"}, http)


def test_channel_refused_without_the_jobs_internal_token_or_through_a_proxy(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-a", owner="alice")
    _, other_internal = server.hub.register_job("job-b", owner="alice")
    url = channel_url(server.facade("job-a"))

    async def body() -> None:
        async with aiohttp.ClientSession() as http:
            refused = [
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {other_internal}"},  # another job's token
                {"Authorization": f"Bearer {secret}"},  # the tunnel secret is not the internal token
                {"Authorization": "Bearer tok-alice"},  # nor is the user token
                {"Authorization": f"Bearer {internal}", "X-Forwarded-For": "203.0.113.9"},
            ]
            for headers in refused:
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(url, headers=headers)
                assert info.value.status == 403, headers
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(channel_url(server.facade("job-unknown")), headers={"Authorization": "Bearer x"})
            assert info.value.status == 403
            # The engine's client turns a refusal into a connection failure it can report.
            channel = TunnelChannel(url, {"Authorization": "Bearer wrong"}, http)
            with pytest.raises(ChannelError, match="refused"):
                await channel.request("POST", "/chat/completions", _body("x"), None, timeout=5)
            ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {internal}"})
            await ws.close()
        assert server.hub.stats("job-a")["calls"] == 0

    run(body())


def test_engine_calls_go_over_the_channel_with_statuses_and_headers_preserved(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-rt", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", require_key="local-key")) as llm:
            async with running_agent(server, "job-rt", secret, llm.base_url, api_key="local-key"):
                async with _router(server, "job-rt", internal) as router:
                    role = router.role("subject")
                    results = await asyncio.gather(*(role.chat(_messages(f"n{i}")) for i in range(40)))
                    assert [r.content for r in results] == [f"n{i}" for i in range(40)]
                    stats = server.hub.stats("job-rt")
                    assert stats["channels"] == 1  # one connection carried them all
                    # The agent got the welcome, the router's start-up probe (GET /models, through
                    # the facade) and one request per call: no CANCEL for an answered call.
                    assert stats["messages"]["sent_envelopes"] == 1 + 1 + 40
                    channel = role.pool.replicas[0].channel
                    # A 429 keeps its status and Retry-After.
                    llm.reconfigure(rate_limit_rate=1.0, retry_after=7)
                    answer = await channel.request("POST", "/chat/completions", _body("y"), None, timeout=5)
                    assert answer.status == 429 and answer.headers["retry-after"] == "7"
                    assert json.loads(answer.body)["error"]["type"] == "rate_limit_error"
                    llm.reconfigure(rate_limit_rate=0.0)
                    # Only the OpenAI surface is forwarded, and nothing else of the model's server.
                    answer = await channel.request("POST", "/embeddings", b"{}", None, timeout=5)
                    assert answer.status == 404
                    for path in ("/models/../../metrics", "/models/%2E%2E/admin", "/models/./x"):
                        answer = await channel.request("GET", path, b"", None, timeout=5)
                        assert answer.status == 404, path
                        assert "not forwarded" in json.loads(answer.body)["error"]["message"]
                    answer = await channel.request("GET", "/models", b"", None, timeout=5)
                    assert answer.status == 200 and json.loads(answer.body)["data"][0]["id"] == "fake"
                # The model's own 404 (unknown model) arrives as such: the engine aborts the role.
                async with _router(server, "job-rt", internal, model="nope") as router:
                    with pytest.raises(ModelAbortError, match="nope"):
                        await router.role("subject").chat(_messages("z"))
            # Counted for the server's metrics, which cannot see these calls as HTTP requests.
            assert server.hub.channel_answers[200] == 41  # the 40 chats and GET /models
            assert server.hub.channel_answers[429] == 1
        assert llm.successes == {f"n{i}": 1 for i in range(40)}

    run(body())


def test_channel_stream_is_relayed_chunk_by_chunk(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-stream", owner="alice")

    async def body() -> None:
        gate, sent_first = asyncio.Event(), asyncio.Event()
        runner, model_url = await gated_stream_server(gate, sent_first)
        try:
            async with running_agent(server, "job-stream", secret, model_url), aiohttp.ClientSession() as http:
                channel = _channel(server, "job-stream", internal, http)
                answer = await channel.request("POST", "/chat/completions", _body("s", stream=True), None, timeout=10)
                assert answer.status == 200 and answer.streaming
                assert answer.headers["content-type"].startswith("text/event-stream")
                chunks = answer.chunks()
                first = await chunks.__anext__()
                # The first chunk is here while the model still holds the second one.
                assert b'"one"' in first and not gate.is_set()
                gate.set()
                rest = b"".join([piece async for piece in chunks])
                assert b'"two"' in rest and rest.endswith(b"data: [DONE]\n\n")
                await channel.aclose()
        finally:
            gate.set()
            await runner.cleanup()

    run(body())


def test_engine_streams_over_the_channel_and_a_lost_agent_cuts_the_stream(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-cut", owner="alice")

    async def body() -> None:
        async with (
            FakeLLM(FakeLLMConfig(reply="a b c d e f")) as llm,
            running_agent(server, "job-cut", secret, llm.base_url),
        ):
            async with _router(server, "job-cut", internal) as router:
                result = await router.role("subject").chat(_messages("s"), params=GenerateParams(stream=True))
                assert result.content == "a b c d e f" and result.ttft is not None

        gate, sent_first = asyncio.Event(), asyncio.Event()
        runner, model_url = await gated_stream_server(gate, sent_first)
        try:
            async with running_agent(server, "job-cut", secret, model_url) as agent, aiohttp.ClientSession() as http:
                channel = _channel(server, "job-cut", internal, http)
                answer = await channel.request("POST", "/chat/completions", _body("s", stream=True), None, timeout=10)
                chunks = answer.chunks()
                assert b'"one"' in await chunks.__anext__()
                agent.drop_connections()  # bytes already reached the job: no replay, a cut stream
                with pytest.raises(ChannelError, match="disconnected"):
                    async for _ in chunks:
                        pass
                await wait_until(lambda: server.hub.stats("job-cut")["calls"] == 0, what="call forgotten")
                await channel.aclose()
        finally:
            gate.set()
            await runner.cleanup()

    run(body())


def test_ten_megabyte_request_and_response_over_the_channel(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-big", owner="alice")
    big = "x" * (10 * 1024 * 1024)

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo")) as llm:
            async with running_agent(server, "job-big", secret, llm.base_url) as agent:
                async with _router(server, "job-big", internal) as router:
                    role = router.role("subject")
                    result = await role.chat(_messages(big))
                    assert result.content == big
                    small = await role.chat(_messages("small"))
                    assert small.content == "small"
                    assert server.hub.stats("job-big")["channels"] == 1  # the big bodies broke nothing
            assert agent.stats.connects == 1

    run(body())


def test_channel_body_over_cap_is_a_413(hub_server: Any) -> None:
    server = hub_server(max_body=1024)
    _, internal = server.hub.register_job("job-cap", owner="alice")

    async def body() -> None:
        async with aiohttp.ClientSession() as http:
            channel = _channel(server, "job-cap", internal, http)
            answer = await channel.request("POST", "/chat/completions", _body("z" * 2000), None, timeout=5)
            assert answer.status == 413
            assert "cap" in json.loads(answer.body)["error"]["message"]
            await channel.aclose()

    run(body())


def test_channel_inflight_cap_applies_backpressure_not_failure(hub_server: Any) -> None:
    server = hub_server(max_inflight=2)
    secret, internal = server.hub.register_job("job-bp", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", latency=0.05)) as llm:
            async with running_agent(server, "job-bp", secret, llm.base_url):
                async with _router(server, "job-bp", internal) as router:
                    role = router.role("subject")
                    results = await asyncio.gather(*(role.chat(_messages(f"m{i}")) for i in range(12)))
            assert [r.content for r in results] == [f"m{i}" for i in range(12)]
            assert all(r.attempts == 1 for r in results)  # waited, never failed
            assert llm.max_in_flight <= 2

    run(body())


def test_agent_disconnect_replays_channel_calls_and_none_fails(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-replay", owner="alice")
    n = 8

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", hang_rate=1.0, hang_seconds=300)) as llm:
            async with running_agent(server, "job-replay", secret, llm.base_url) as agent:
                async with _router(server, "job-replay", internal) as router:
                    role = router.role("subject")
                    calls = [asyncio.create_task(role.chat(_messages(f"s{i}"))) for i in range(n)]
                    await wait_until(lambda: llm.in_flight == n, what="all calls at the model")
                    llm.reconfigure(hang_rate=0.0)
                    agent.drop_connections()
                    results = await asyncio.gather(*calls)
            assert [r.content for r in results] == [f"s{i}" for i in range(n)]
            assert all(r.attempts == 1 for r in results)  # the hub replayed them; the engine saw nothing
            assert llm.successes == {f"s{i}": 1 for i in range(n)}

    run(body())


def test_channel_call_without_an_agent_gets_503_waiting_for_tunnel(hub_server: Any) -> None:
    server = hub_server(request_deadline=0.3, grace=0.1)
    _, internal = server.hub.register_job("job-none", owner="alice")

    async def body() -> None:
        async with aiohttp.ClientSession() as http:
            channel = _channel(server, "job-none", internal, http)
            answer = await channel.request("POST", "/chat/completions", _body("x"), None, timeout=10)
            assert answer.status == 503 and answer.headers["retry-after"] == "5"
            error = json.loads(answer.body)["error"]
            assert error["code"] == "waiting_for_tunnel" and "proctor tunnel" in error["message"]
            await channel.aclose()
        assert await asyncio.to_thread(server.next_state) == ("job-none", False)

    run(body())


def test_caller_timeout_cancels_the_call_at_the_agent(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-cancel", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", hang_rate=1.0, hang_seconds=300)) as llm:
            async with running_agent(server, "job-cancel", secret, llm.base_url) as agent:
                async with aiohttp.ClientSession() as http:
                    channel = _channel(server, "job-cancel", internal, http)
                    with pytest.raises(TimeoutError):
                        await channel.request("POST", "/chat/completions", _body("slow"), None, timeout=0.5)
                    await wait_until(lambda: server.hub.stats("job-cancel")["calls"] == 0, what="hub forgot the call")
                    await wait_until(lambda: agent.stats.in_flight == 0, what="agent stopped the call")
                    await channel.aclose()

    run(body())


def test_job_end_answers_waiting_channel_calls_and_closes_the_channel(hub_server: Any) -> None:
    server = hub_server()
    _, internal = server.hub.register_job("job-end", owner="alice")

    async def body() -> None:
        async with aiohttp.ClientSession() as http:
            channel = _channel(server, "job-end", internal, http)
            waiting = asyncio.create_task(channel.request("POST", "/chat/completions", _body("x"), None, timeout=30))
            await wait_until(lambda: server.hub.stats("job-end")["waiting"] == 1, what="call waiting for an agent")
            server.hub.unregister_job("job-end")
            try:
                answer = await asyncio.wait_for(waiting, 5)  # at once, not after its 30 s
                assert answer.status == 503 and b"the job has finished" in answer.body
            except ChannelError:
                pass  # the close may overtake the answer; either way the call ended at once
            with pytest.raises(ChannelError):
                await channel.request("POST", "/chat/completions", _body("y"), None, timeout=5)
            await channel.aclose()

    run(body())


def test_engine_aborts_when_the_channel_is_refused(hub_server: Any) -> None:
    """A wrong internal token, or a base_url that is no proctor facade: every call would be
    refused, so the role aborts at its first call instead of failing sample after sample."""
    server = hub_server()
    server.hub.register_job("job-ab", owner="alice")

    async def body() -> None:
        async with _router(server, "job-ab", "pti_wrong", health={"check_at_start": False}) as router:
            with pytest.raises(ModelAbortError, match="refused the job channel") as info:
                await router.role("subject").chat(_messages("x"))
            assert info.value.status == 403 and info.value.hint and "facade" in info.value.hint
        async with FakeLLM(FakeLLMConfig(reply="echo")) as llm:
            config = {"model": "fake", "base_url": llm.base_url, "transport": "tunnel"}
            async with ModelRouter({"subject": ModelConfig(**config)}) as router:
                with pytest.raises(ModelAbortError, match="HTTP 404"):
                    await router.role("subject").chat(_messages("x"))
            assert llm.stats()["requests"] == 0  # no chat call ever reached the model

    run(body())


def test_dead_server_is_a_connection_failure_not_a_hang() -> None:
    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with aiohttp.ClientSession() as http:
            channel = TunnelChannel(f"ws://127.0.0.1:{port}/internal/jobs/j/v1/channel", {}, http)
            with pytest.raises(ChannelError, match="cannot open"):
                await channel.request("POST", "/chat/completions", b"{}", None, timeout=5)

    run(body())
