"""Calls through the facade reach the submitter's model over the tunnel and come back intact."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from tunnel.tunnelkit import chat, gated_stream_server, run, wait_until
from yarl import URL

from proctor.testing import FakeLLM, FakeLLMConfig
from proctor.tunnel.agent import TunnelAgent


def _agent(server: Any, job: str, secret: str, model_url: str, **kw: Any) -> TunnelAgent:
    return TunnelAgent(server.url, job, "tok-alice", secret, model_url, **kw)


def test_round_trip_keys_and_upstream_errors_preserved(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-rt", owner="alice")
    lines: list[str] = []

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", require_key="local-key")) as llm:
            agent = _agent(server, "job-rt", secret, llm.base_url, api_key="local-key", log=lines.append)
            task = asyncio.create_task(agent.run())
            auth = {"Authorization": f"Bearer {internal}"}
            async with aiohttp.ClientSession(headers=auth) as http:
                url = server.facade("job-rt")
                async with http.post(f"{url}/chat/completions", json=chat("hello tunnel")) as resp:
                    assert resp.status == 200
                    data = await resp.json()
                    assert data["choices"][0]["message"]["content"] == "hello tunnel"
                async with http.get(f"{url}/models") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["data"][0]["id"] == "fake"
                # The model's own error (unknown model -> 404) arrives unchanged.
                async with http.post(f"{url}/chat/completions", json={**chat("x"), "model": "nope"}) as resp:
                    assert resp.status == 404
                    assert (await resp.json())["error"]["code"] == "model_not_found"
                # Rate limits keep their status and Retry-After for the engine's retry logic.
                llm.reconfigure(rate_limit_rate=1.0, retry_after=7)
                async with http.post(f"{url}/chat/completions", json=chat("y")) as resp:
                    assert resp.status == 429
                    assert resp.headers["Retry-After"] == "7"
                    assert (await resp.json())["error"]["type"] == "rate_limit_error"
                llm.reconfigure(rate_limit_rate=0.0)
                # Legacy completions take the same road.
                async with http.post(f"{url}/completions", json={"model": "fake", "prompt": "p q"}) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["choices"][0]["text"] == "p q"
                # Paths outside the OpenAI surface are not forwarded, nor a way out of /v1/models.
                async with http.post(f"{url}/embeddings", json={}) as resp:
                    assert resp.status == 404
                escape = URL(f"{url}/models/%2e%2e/%2e%2e/metrics", encoded=True)
                async with http.get(escape) as resp:
                    assert resp.status == 404
                    assert "not forwarded" in (await resp.json())["error"]["message"]  # refused by the hub
            server.hub.unregister_job("job-rt")
            stats = await task  # the agent exits by itself when the job ends
            assert stats.served == 5
            assert stats.connects == 1

    run(body())
    text = "\n".join(lines)
    assert "connected" in text and "served 5 calls" in text
    assert "local-key" not in text and "127.0.0.1" not in text and secret not in text


def test_stream_is_relayed_chunk_by_chunk(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-stream", owner="alice")

    async def body() -> None:
        gate, sent_first = asyncio.Event(), asyncio.Event()
        runner, model_url = await gated_stream_server(gate, sent_first)
        stop = asyncio.Event()
        task = asyncio.create_task(_agent(server, "job-stream", secret, model_url).run(stop))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-stream')}/chat/completions"
                async with http.post(url, json=chat("s", stream=True)) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("text/event-stream")
                    # The first chunk arrives while the model is still holding the second one:
                    # nothing between the model and the job buffers the stream.
                    first = await resp.content.readuntil(b"\n\n")
                    assert b'"one"' in first
                    assert not gate.is_set()
                    gate.set()
                    rest = await resp.content.read()
                    assert b'"two"' in rest and rest.endswith(b"data: [DONE]\n\n")
        finally:
            stop.set()
            await task
            await runner.cleanup()

    run(body())


def test_stream_cut_when_the_agent_is_lost_mid_stream(hub_server: Any) -> None:
    """Bytes already reached the job, so no replay: the job sees a truncated response, not a
    spliced one, and the call is not left behind in the hub."""
    server = hub_server()
    secret, internal = server.hub.register_job("job-cut", owner="alice")

    async def body() -> None:
        gate, sent_first = asyncio.Event(), asyncio.Event()
        runner, model_url = await gated_stream_server(gate, sent_first)
        stop = asyncio.Event()
        agent = _agent(server, "job-cut", secret, model_url)
        task = asyncio.create_task(agent.run(stop))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-cut')}/chat/completions"
                async with http.post(url, json=chat("s", stream=True)) as resp:
                    assert b'"one"' in await resp.content.readuntil(b"\n\n")
                    agent.drop_connections()
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resp.content.read()
            await wait_until(lambda: server.hub.stats("job-cut")["calls"] == 0, what="call forgotten")
        finally:
            gate.set()
            stop.set()
            await task
            await runner.cleanup()

    run(body())


def test_fake_llm_stream_through_tunnel(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-fs", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="a b c d e f")) as llm:
            stop = asyncio.Event()
            task = asyncio.create_task(_agent(server, "job-fs", secret, llm.base_url).run(stop))
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-fs')}/chat/completions"
                async with http.post(url, json=chat("s", stream=True)) as resp:
                    raw = await resp.read()
            stop.set()
            await task
        events = [line[6:] for line in raw.decode().split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text == "a b c d e f"

    run(body())


def test_ten_megabyte_request_and_response(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-big", owner="alice")
    big = "x" * (10 * 1024 * 1024)

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo")) as llm:
            stop = asyncio.Event()
            task = asyncio.create_task(_agent(server, "job-big", secret, llm.base_url).run(stop))
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-big')}/chat/completions"
                # Echo: a 10 MB prompt comes back as a 10 MB answer; the same connection then
                # still serves a small call (the big bodies did not break it).
                async with http.post(url, json=chat(big)) as resp:
                    assert resp.status == 200
                    data = await resp.json()
                assert data["choices"][0]["message"]["content"] == big
                async with http.post(url, json=chat("small")) as resp:
                    assert (await resp.json())["choices"][0]["message"]["content"] == "small"
            stop.set()
            stats = await task
            assert stats.connects == 1

    run(body())


def test_body_over_cap_refused_with_413(hub_server: Any) -> None:
    server = hub_server(max_body=1024)
    _, internal = server.hub.register_job("job-cap", owner="alice")

    async def body() -> None:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
            url = f"{server.facade('job-cap')}/chat/completions"
            async with http.post(url, json=chat("z" * 2000)) as resp:
                assert resp.status == 413
                assert "cap" in (await resp.json())["error"]["message"]

    run(body())


def test_inflight_cap_applies_backpressure_not_failure(hub_server: Any) -> None:
    server = hub_server(max_inflight=2)
    secret, internal = server.hub.register_job("job-bp", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", latency=0.05)) as llm:
            stop = asyncio.Event()
            task = asyncio.create_task(_agent(server, "job-bp", secret, llm.base_url).run(stop))
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-bp')}/chat/completions"

                async def one(i: int) -> int:
                    async with http.post(url, json=chat(f"m{i}")) as resp:
                        return resp.status

                statuses = await asyncio.gather(*(one(i) for i in range(12)))
            assert statuses == [200] * 12
            assert llm.max_in_flight <= 2
            stop.set()
            await task

    run(body())


def test_unreachable_model_is_a_502_that_names_no_address(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-down", owner="alice")

    async def body() -> None:
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        stop = asyncio.Event()
        agent = _agent(server, "job-down", secret, dead)
        task = asyncio.create_task(agent.run(stop))
        url = f"{server.facade('job-down')}/chat/completions"
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http,
            http.post(url, json=chat("q")) as resp,
        ):
            assert resp.status == 502
            text = await resp.text()
        assert "could not reach its model" in text and "127.0.0.1" not in text
        await wait_until(lambda: agent.stats.failed == 1, what="failure counted")
        stop.set()
        await task

    run(body())
