"""Helpers for the model-access tests: fast retry settings, a scripted stub server, dead ports.

Imported as ``models.modelkit`` (pyproject puts ``tests`` on ``sys.path``); the test modules are
named ``test_models_*`` so their names stay unique across the whole suite.

The shared fake LLM (``proctor.testing``) covers realistic behaviour; the stub here exists for
what the fake cannot express: an exact sequence of answers, and a record of every request body
and header the router sent.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proctor.models.config import ModelConfig


def fast_config(**kw: Any) -> ModelConfig:
    """A role config with short backoffs/cooldowns so failure tests take milliseconds, not minutes."""
    retry = {"max_attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05, "total_deadline": 30.0}
    retry.update(kw.pop("retry", {}))
    health = {"interval": 60.0, "timeout": 2.0, "failure_threshold": 100, "cooldown": 0.1}
    health.update(kw.pop("health", {}))
    kw.setdefault("model", "fake")
    kw.setdefault("request_timeout", 10.0)
    return ModelConfig.model_validate({**kw, "retry": retry, "health": health})


def dead_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user(text: str = "hello") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StubLLM:
    """Answers chat requests from a script of ``(status, headers, body)``; then a default reply.

    ``requests`` records each chat request's headers and JSON body so tests can check exactly
    what went over the wire.
    """

    script: deque[tuple[int, dict[str, str], Any]] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    model_status: int = 200
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.script.append((status, headers or {}, body))

    async def _chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append(Recorded(request.path, dict(request.headers), json.loads(raw)))
        if self.script:
            status, headers, body = self.script.popleft()
        else:
            status, headers, body = 200, {}, None
        if body is None and status == 200:
            body = {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        text = body if isinstance(body, str) else json.dumps(body or {})
        return web.Response(status=status, text=text, headers=headers, content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake"}]}, status=self.model_status)

    async def __aenter__(self) -> StubLLM:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
