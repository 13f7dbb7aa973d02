"""Helpers for tunnel tests: a real uvicorn server hosting a ``TunnelHub`` in a thread.

The hub lives on the server thread's loop, exactly as in ``proctor serve``; tests run the agent,
the fake LLM and their HTTP clients on their own loop (``asyncio.run`` in a plain test), so every
byte crosses real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from aiohttp import web
from fastapi import FastAPI

from proctor.server.tunnel.hub import TunnelHub
from proctor.tunnel.agent import TunnelAgent


@dataclass(frozen=True)
class User:
    """Shaped like the server's ``Principal``."""

    name: str
    admin: bool = False


TOKENS = {"tok-alice": User("alice"), "tok-bob": User("bob"), "tok-root": User("root", admin=True)}


class HubServer:
    """uvicorn on 127.0.0.1:<free port> in a thread, serving an app that includes ``hub.router``."""

    def __init__(self, **hub_options: Any) -> None:
        self.states: queue.Queue[tuple[str, bool]] = queue.Queue()
        self.hub = TunnelHub(on_tunnel_state=lambda job, up: self.states.put((job, up)), **hub_options)
        self.hub.set_authenticator(TOKENS.get)
        app = FastAPI()
        app.include_router(self.hub.router)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_ping_interval=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        for _ in range(6000):  # bounded: 60 s
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            time.sleep(0.01)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def facade(self, job_id: str) -> str:
        return f"{self.url}/internal/jobs/{job_id}/v1"

    def next_state(self, timeout: float = 20.0) -> tuple[str, bool]:
        return self.states.get(timeout=timeout)


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 15.0, what: str = "condition") -> None:
    """Bounded wait for state owned by another loop or thread (test set-up only)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run(coro: Awaitable[Any], *, timeout: float = 60.0) -> Any:
    """Run a test body with a hard upper bound, so a hang fails instead of freezing the suite."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": text}], **extra}


async def gated_stream_server(gate: asyncio.Event, sent_first: asyncio.Event) -> tuple[web.AppRunner, str]:
    """A model that sends one SSE chunk, then waits for ``gate`` before finishing."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"one"}}]}\n\n')
        sent_first.set()
        await gate.wait()
        await resp.write(b'data: {"choices":[{"delta":{"content":"two"}}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


@contextlib.asynccontextmanager
async def running_agent(
    server: HubServer, job: str, secret: str, model_url: str, **kw: Any
) -> AsyncIterator[TunnelAgent]:
    """Alice's agent for ``job`` serving ``model_url`` for the duration of the block."""
    agent = TunnelAgent(server.url, job, "tok-alice", secret, model_url, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await task
