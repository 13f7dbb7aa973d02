"""Attackers for the tunnel and client security tests: a hostile agent, a hostile hub and a
hostile proctor server, each speaking the real protocol over real loopback sockets.

* ``raw_agent``: a WebSocket client holding a job's token and tunnel secret (what any submitter
  has), which answers calls however the test likes.
* ``HostileHub``: a WebSocket server that plays the proctor server to a real ``proctor tunnel``
  process and sends it the calls the test chooses.
* ``HostileProctor``: an HTTP server that plays the proctor API to a real ``proctor results`` /
  ``proctor submit`` process and lists the artifact paths the test chooses.
* ``RecordingModel``: a local model that records every request it gets (path, query, headers).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web
from tunnel.tunnelkit import HubServer

from proctor.tunnel import protocol
from proctor.tunnel.protocol import Envelope, Kind


@contextmanager
def running_hub(**options: Any) -> Iterator[HubServer]:
    """A real hub in uvicorn (``tests/tunnel``'s ``HubServer``), stopped by its own handle."""
    server = HubServer(**options).start()
    try:
        yield server
    finally:
        server.stop()


def ws_url(server_url: str, job_id: str) -> str:
    return f"ws{server_url[4:]}/v1/jobs/{job_id}/tunnel"


@asynccontextmanager
async def raw_agent(
    server_url: str, job_id: str, token: str, secret: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An authenticated tunnel connection that the test drives envelope by envelope."""
    headers = {"Authorization": f"Bearer {token}", protocol.SECRET_HEADER: secret}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url(server_url, job_id), headers=headers, max_msg_size=64 * 1024 * 1024) as ws,
    ):
        yield ws


async def next_requests(ws: aiohttp.ClientWebSocketResponse, count: int = 1, timeout: float = 60.0) -> list[Envelope]:
    """The next ``count`` ``REQUEST`` envelopes the hub sends (other kinds are skipped; the hub may
    coalesce several requests into one message)."""
    found: list[Envelope] = []
    async with asyncio.timeout(timeout):
        while len(found) < count:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"the tunnel closed before a request arrived: {msg.type} {ws.close_code}")
            found.extend(env for env in protocol.decode(msg.data) if env.kind == Kind.REQUEST)
    assert len(found) == count, f"{len(found)} requests arrived at once, expected {count}"
    return found


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 20.0) -> int | None:
    """Read until the hub closes the connection; its close code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return ws.close_code
            if msg.type == aiohttp.WSMsgType.ERROR:
                return ws.close_code


def error_code(body: bytes) -> str | None:
    """The ``error.code`` of an OpenAI-shaped error body."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on 127.0.0.1 at a free port; the runner (to clean up) and the base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


class RecordingModel:
    """A local model on 127.0.0.1 that answers everything 200 and records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> RecordingModel:
        async def handler(request: web.Request) -> web.Response:
            self.seen.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query_string,
                    "authorization": request.headers.get("Authorization"),
                }
            )
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self._runner, url = await serve_app(app)
        self.url = f"{url}/v1"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class HostileHub:
    """Plays the proctor server to a real agent: welcomes it, sends ``calls`` (meta dicts) and then
    the raw ``frames``, records the answers, and once ``answers`` of them arrived (default: one
    per call) ends the job (close 4010) so the agent exits by itself."""

    def __init__(
        self, job_id: str, calls: list[dict[str, Any]], frames: list[bytes] = (), answers: int | None = None
    ) -> None:
        self.job_id = job_id
        self.calls = calls
        self.frames = list(frames)
        self.expected = len(calls) if answers is None else answers
        self.answers: dict[int, tuple[dict[str, Any], bytes]] = {}
        self.done = asyncio.Event()
        self.handshake_headers: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> HostileHub:
        async def tunnel(request: web.Request) -> web.WebSocketResponse:
            self.handshake_headers = dict(request.headers)
            ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
            await ws.prepare(request)
            welcome = {"heartbeat": 15, "max_body": 1 << 26, "max_inflight": 8, "roles": ["subject"]}
            await ws.send_bytes(protocol.encode(Kind.WELCOME, 0, welcome))
            for rid, meta in enumerate(self.calls, start=1):
                await ws.send_bytes(protocol.encode(Kind.REQUEST, rid, meta, b"{}"))
            for frame in self.frames:
                await ws.send_bytes(frame)
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                for env in protocol.decode(msg.data):
                    if env.kind == Kind.RESPONSE and env.fin:
                        self.answers[env.rid] = (env.meta or {}, env.body)
                if len(self.answers) >= self.expected:
                    break
            self.done.set()
            await ws.close(code=protocol.CLOSE_JOB_FINISHED, message=b"job finished")
            return ws

        app = web.Application()
        app.router.add_get(f"/v1/jobs/{self.job_id}/tunnel", tunnel)
        self._runner, self.url = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class HostileProctor:
    """Plays the proctor API to a real ``proctor`` client process, listing ``artifacts`` (path ->
    content) for job ``job_id``; every artifact download is recorded."""

    def __init__(self, job_id: str, artifacts: dict[str, bytes]) -> None:
        self.job_id = job_id
        self.artifacts = artifacts
        self.downloads: list[str] = []
        kit = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.path == "/v1/jobs":
                    job = {"id": kit.job_id, "state": "queued"}
                    self._send(201, json.dumps({"job": job, "warnings": []}).encode())
                else:
                    self._send(404, b'{"error": "no"}')

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = urlsplit(self.path).path
                base = f"/v1/jobs/{kit.job_id}"
                if path == f"{base}/logs":
                    body = b'event: end\nid: 1\ndata: {"state": "succeeded"}\n\n'
                    self._send(200, body, "text/event-stream")
                elif path == base:
                    self._send(200, json.dumps({"id": kit.job_id, "state": "succeeded"}).encode())
                elif path == f"{base}/artifacts":
                    listing = [{"path": name, "size": len(data)} for name, data in kit.artifacts.items()]
                    self._send(200, json.dumps(listing).encode())
                elif path.startswith(f"{base}/artifacts/"):
                    name = unquote(path[len(base) + len("/artifacts/") :])
                    kit.downloads.append(name)
                    data = kit.artifacts.get(name)
                    self._send(200, data) if data is not None else self._send(404, b'{"error": "no"}')
                else:
                    self._send(404, b'{"error": "no"}')

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileProctor:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
