"""The tunnel's size caps, enforced as bytes arrive, and the per-job byte budget across calls
(issue 17: "an agent sending 1 GiB without finishing grew the server by 1 GiB"; "16 held calls x
60 MiB = 1 GB").

A real hub in uvicorn with small caps; the attacker is an agent holding the job's token and
tunnel secret (what any submitter has) or the job's own process, speaking the wire protocol.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from security.tunnel_kit import RecordingModel, error_code, next_requests, raw_agent, running_hub
from tunnel.tunnelkit import HubServer, chat, run, running_agent, wait_until

from proctor.models.transport.channel import TunnelChannel, channel_url
from proctor.tunnel import protocol
from proctor.tunnel.protocol import CHUNK, Kind

KIB = 1024
MIB = 1024 * KIB


async def _facade_call(server: HubServer, job: str, internal: str, body: bytes) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.facade(job)}/chat/completions",
            data=body,
            headers={
                "Authorization": f"Bearer {internal}",
                "Content-Type": "application/json",
                "X-Proctor-Deadline": "20",
            },
        ) as resp,
    ):
        return resp.status, await resp.read()


async def _channel_call(server: HubServer, job: str, internal: str, body: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        channel = TunnelChannel(channel_url(server.facade(job)), {"Authorization": f"Bearer {internal}"}, http)
        try:
            answer = await channel.request("POST", "/chat/completions", body, None, timeout=20)
            return answer.status, await answer.read()
        finally:
            await channel.aclose()


CALLERS = {"facade": _facade_call, "channel": _channel_call}


async def _answer_without_end(ws: aiohttp.ClientWebSocketResponse, rid: int, pieces: list[int]) -> None:
    """A head, then body pieces of the given sizes, and never the last piece."""
    await ws.send_bytes(protocol.encode(Kind.RESPONSE, rid, {"s": 200, "h": {}}, b"", fin=False))
    for size in pieces:
        await ws.send_bytes(protocol.encode(Kind.DATA, rid, None, b"x" * size, fin=False))


async def _cancelled(ws: aiohttp.ClientWebSocketResponse, rids: set[int]) -> None:
    """Read until the hub has told the agent to stop each of ``rids``."""
    async with asyncio.timeout(20):
        while rids:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            for env in protocol.decode(msg.data):
                if env.kind == Kind.CANCEL:
                    rids.discard(env.rid)


@pytest.mark.parametrize("via", sorted(CALLERS))
def test_an_answer_that_never_ends_is_refused_as_it_arrives(via: str) -> None:
    with running_hub(max_body=1 * MIB) as server:
        secret, internal = server.hub.register_job("job-cap", owner="alice")

        async def body() -> None:
            async with raw_agent(server.url, "job-cap", "tok-alice", secret) as ws:
                call = asyncio.create_task(CALLERS[via](server, "job-cap", internal, json.dumps(chat("hi")).encode()))
                (request,) = await next_requests(ws)
                # 3 MiB against a 1 MiB cap, and no last piece: the job must not wait for one.
                await _answer_without_end(ws, request.rid, [CHUNK] * 6)
                status, answer = await call
                assert (status, error_code(answer)) == (502, "body_too_large"), answer[:300]
                assert "cap" in json.loads(answer)["error"]["message"]
                await _cancelled(ws, {request.rid})  # the agent is told to stop sending
                await wait_until(lambda: server.hub.stats("job-cap")["held_bytes"] == 0, what="bytes given back")
                # The connection is still good for the next call.
                call = asyncio.create_task(
                    CALLERS[via](server, "job-cap", internal, json.dumps(chat("again")).encode())
                )
                (request,) = await next_requests(ws)
                await ws.send_bytes(protocol.encode(Kind.RESPONSE, request.rid, {"s": 200, "h": {}}, b'{"ok": 1}'))
                assert await call == (200, b'{"ok": 1}')

        run(body())


@pytest.mark.parametrize("via", sorted(CALLERS))
def test_held_answers_share_one_budget_per_job(via: str) -> None:
    with running_hub(max_body=1 * MIB, max_job_bytes=2 * MIB) as server:
        secret, internal = server.hub.register_job("job-budget", owner="alice")
        pieces = [CHUNK, 900 * KIB - CHUNK]  # 900 KiB each: under the call's cap, three over the job's

        async def body() -> None:
            async with raw_agent(server.url, "job-budget", "tok-alice", secret) as ws:
                payload = json.dumps(chat("hi")).encode()
                calls = [asyncio.create_task(CALLERS[via](server, "job-budget", internal, payload)) for _ in range(3)]
                rids = [request.rid for request in await next_requests(ws, 3)]
                for rid in rids:
                    await _answer_without_end(ws, rid, pieces)
                await _cancelled(ws, {rids[2]})  # the third went over the budget while none had ended
                for rid in rids[:2]:
                    await ws.send_bytes(protocol.encode(Kind.DATA, rid, None, b"", fin=True))
                results = sorted(await asyncio.gather(*calls))
                assert [status for status, _ in results] == [200, 200, 502]
                assert all(len(answer) == 900 * KIB for _, answer in results[:2])  # the others are whole
                assert error_code(results[2][1]) == "body_too_large" and b"budget" in results[2][1]
                await wait_until(lambda: server.hub.stats("job-budget")["held_bytes"] == 0, what="bytes given back")

        run(body())


def test_held_requests_share_one_budget_per_job_on_the_facade() -> None:
    with running_hub(max_body=1 * MIB, max_job_bytes=2 * MIB) as server:
        secret, internal = server.hub.register_job("job-req", owner="alice")
        big = json.dumps(chat("x" * (900 * KIB))).encode()

        async def body() -> None:
            model = await RecordingModel().start()
            try:
                # No agent yet: the calls wait, holding their bodies.
                waiting = [asyncio.create_task(_facade_call(server, "job-req", internal, big)) for _ in range(2)]
                await wait_until(lambda: server.hub.stats("job-req")["waiting"] == 2, what="two waiting calls")
                status, answer = await _facade_call(server, "job-req", internal, big)
                assert (status, error_code(answer)) == (413, "body_too_large") and b"budget" in answer
                assert not any(task.done() for task in waiting)
                async with running_agent(server, "job-req", secret, model.url):
                    assert [status for status, _ in await asyncio.gather(*waiting)] == [200, 200]
                assert server.hub.stats("job-req")["held_bytes"] == 0
            finally:
                await model.stop()

        run(body())


def test_held_requests_share_one_budget_per_job_on_the_channel() -> None:
    with running_hub(max_body=1 * MIB, max_job_bytes=2 * MIB) as server:
        _, internal = server.hub.register_job("job-chan", owner="alice")

        async def body() -> None:
            headers = {"Authorization": f"Bearer {internal}"}
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(channel_url(server.facade("job-chan")), headers=headers) as ws,
            ):
                # Requests whose bodies never end, as a hostile job process could send them.
                meta = {"m": "POST", "p": "/chat/completions"}
                for rid in (1, 2, 3):
                    await ws.send_bytes(protocol.encode(Kind.REQUEST, rid, meta, b"x" * CHUNK, fin=False))
                    await ws.send_bytes(protocol.encode(Kind.DATA, rid, None, b"x" * (900 * KIB - CHUNK), fin=False))
                async with asyncio.timeout(20):
                    msg = await ws.receive()
                (answer,) = list(protocol.decode(msg.data))
                assert (answer.kind, answer.rid, answer.meta and answer.meta["s"]) == (Kind.RESPONSE, 3, 413)
                assert b"budget" in answer.body
                held = server.hub.stats("job-chan")["held_bytes"]
                assert 0 < held <= 2 * MIB
                for rid in (1, 2):
                    await ws.send_bytes(protocol.encode(Kind.CANCEL, rid))
                await wait_until(lambda: server.hub.stats("job-chan")["held_bytes"] == 0, what="bytes given back")

        run(body())


@pytest.mark.parametrize("via", sorted(CALLERS))
def test_a_stream_longer_than_the_caps_passes_when_it_is_relayed(via: str) -> None:
    """The caps bound what is held, not what flows: relayed stream chunks are given back."""
    with running_hub(max_body=1 * MIB, max_job_bytes=1 * MIB) as server:
        secret, internal = server.hub.register_job("job-flow", owner="alice")

        async def body() -> None:
            async with raw_agent(server.url, "job-flow", "tok-alice", secret) as ws:
                payload = json.dumps(chat("hi", stream=True)).encode()
                call = asyncio.create_task(CALLERS[via](server, "job-flow", internal, payload))
                (request,) = await next_requests(ws)
                head = {"s": 200, "h": {"content-type": "text/event-stream"}, "stream": True}
                await ws.send_bytes(protocol.encode(Kind.RESPONSE, request.rid, head, b"", fin=False))
                for _ in range(12):  # 3 MiB in all, three times both caps
                    await ws.send_bytes(protocol.encode(Kind.DATA, request.rid, None, b"d" * (256 * KIB), fin=False))
                    # Relayed: only the small request body is still held.
                    await wait_until(lambda: server.hub.stats("job-flow")["held_bytes"] < KIB, what="a relayed chunk")
                await ws.send_bytes(protocol.encode(Kind.DATA, request.rid, None, b"", fin=True))
                status, answer = await call
                assert (status, len(answer)) == (200, 3 * MIB)

        run(body())


def test_the_job_budget_is_never_below_one_body() -> None:
    from proctor.server.tunnel.hub import TunnelHub

    assert TunnelHub(max_body=10 * MIB, max_job_bytes=1 * MIB).max_job_bytes == 10 * MIB


def test_a_caller_that_leaves_mid_body_holds_nothing() -> None:
    with running_hub(max_body=1 * MIB, max_job_bytes=2 * MIB) as server:
        _, internal = server.hub.register_job("job-gone", owner="alice")

        async def body() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            head = (
                f"POST /internal/jobs/job-gone/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {internal}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {900 * KIB}\r\n\r\n"
            )
            writer.write(head.encode() + b"x" * (300 * KIB))
            await writer.drain()
            await wait_until(lambda: server.hub.stats("job-gone")["held_bytes"] > 0, what="a body arriving")
            writer.close()  # gone with two thirds of the body unsent
            await wait_until(lambda: server.hub.stats("job-gone")["held_bytes"] == 0, what="bytes given back")
            del reader

        run(body())
