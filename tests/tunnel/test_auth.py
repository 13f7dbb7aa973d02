"""Who may open a job's tunnel, and who may call its facade."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from tunnel.tunnelkit import chat, run

from proctor.errors import PermissionDeniedError
from proctor.testing import FakeLLM, FakeLLMConfig
from proctor.tunnel import protocol
from proctor.tunnel.agent import TunnelAgent, tunnel_ws_url
from proctor.tunnel.protocol import Kind


async def _handshake_status(url: str, headers: dict[str, str]) -> int:
    """HTTP status of a refused handshake (101 would mean accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


def test_handshake_refusals(hub_server: Any) -> None:
    server = hub_server()
    secret, _ = server.hub.register_job("job-a", owner="alice")
    url = tunnel_ws_url(server.url, "job-a")

    async def body() -> None:
        def creds(token: str | None, sec: str | None) -> dict[str, str]:
            h = {}
            if token:
                h["Authorization"] = f"Bearer {token}"
            if sec is not None:
                h[protocol.SECRET_HEADER] = sec
            return h

        # Right job id, right owner, wrong or missing secret.
        assert await _handshake_status(url, creds("tok-alice", "wrong")) == 403
        assert await _handshake_status(url, creds("tok-alice", "")) == 403
        assert await _handshake_status(url, creds("tok-alice", None)) == 403
        # Another user's token with the right secret: still refused.
        assert await _handshake_status(url, creds("tok-bob", secret)) == 403
        # Admins are not the submitter either: the tunnel carries the owner's model traffic.
        assert await _handshake_status(url, creds("tok-root", secret)) == 403
        # Unknown token, or none (one status for every refusal: it tells a prober nothing).
        assert await _handshake_status(url, creds("tok-nobody", secret)) == 403
        assert await _handshake_status(url, creds(None, secret)) == 403
        # The right secret for another (unknown) job id.
        assert await _handshake_status(tunnel_ws_url(server.url, "job-b"), creds("tok-alice", secret)) == 403
        # And the legitimate pair is accepted.
        assert await _handshake_status(url, creds("tok-alice", secret)) == 101

    run(body())


def test_agent_raises_on_refusal_instead_of_retrying(hub_server: Any) -> None:
    server = hub_server()
    secret, _ = server.hub.register_job("job-r", owner="alice")

    async def body() -> None:
        with pytest.raises(PermissionDeniedError):
            await TunnelAgent(server.url, "job-r", "tok-alice", "bad-secret", "http://127.0.0.1:9/v1").run()
        with pytest.raises(PermissionDeniedError):
            await TunnelAgent(server.url, "job-r", "tok-bob", secret, "http://127.0.0.1:9/v1").run()
        with pytest.raises(PermissionDeniedError):
            await TunnelAgent(server.url, "job-r", "tok-unknown", secret, "http://127.0.0.1:9/v1").run()

    run(body())


def test_first_message_authentication(hub_server: Any) -> None:
    """Clients that cannot set handshake headers authenticate with HELLO before anything else."""
    server = hub_server()
    secret, _ = server.hub.register_job("job-h", owner="alice")
    url = tunnel_ws_url(server.url, "job-h")

    async def hello(meta: dict[str, Any] | None, kind: int = Kind.HELLO) -> tuple[int | None, int | None]:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url)
            await ws.send_bytes(protocol.encode(kind, 0, meta))
            msg = await ws.receive()
            first_kind = None
            if msg.type == aiohttp.WSMsgType.BINARY:
                first_kind = next(protocol.decode(msg.data)).kind
            await ws.close()
            return first_kind, ws.close_code

    async def body() -> None:
        kind, code = await hello({"token": "tok-alice", "secret": "nope"})
        assert kind is None and code == protocol.CLOSE_FORBIDDEN
        kind, code = await hello({"token": "tok-bob", "secret": secret})
        assert kind is None and code == protocol.CLOSE_FORBIDDEN
        kind, code = await hello({"token": "junk", "secret": secret})
        assert kind is None and code == protocol.CLOSE_UNAUTHENTICATED
        kind, code = await hello({"t": 1}, kind=Kind.PONG)  # anything but HELLO first
        assert kind is None and code == protocol.CLOSE_UNAUTHENTICATED
        kind, _ = await hello({"token": "tok-alice", "secret": secret})
        assert kind == Kind.WELCOME

    run(body())


def test_facade_guards(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-f", owner="alice")
    _, other_internal = server.hub.register_job("job-g", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig()) as llm:
            stop = asyncio.Event()
            task = asyncio.create_task(TunnelAgent(server.url, "job-f", "tok-alice", secret, llm.base_url).run(stop))
            url = f"{server.facade('job-f')}/chat/completions"
            async with aiohttp.ClientSession() as http:

                async def status(headers: dict[str, str]) -> int:
                    async with http.post(url, json=chat("hi"), headers=headers) as resp:
                        await resp.read()
                        return resp.status

                assert await status({}) == 401
                assert await status({"Authorization": "Bearer wrong"}) == 401
                assert await status({"Authorization": f"Bearer {other_internal}"}) == 401  # another job's
                assert await status({"Authorization": f"Bearer {secret}"}) == 401  # the tunnel secret is not it
                # Something that came through a proxy is not the server's own job process.
                proxied = {"Authorization": f"Bearer {internal}", "X-Forwarded-For": "203.0.113.9"}
                assert await status(proxied) == 403
                assert await status({"Authorization": f"Bearer {internal}"}) == 200
            assert sum(llm.counts.values()) == 1  # refused calls never reached the model
            stop.set()
            await task

    run(body())
