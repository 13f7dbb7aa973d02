"""A hostile server against the submitter's real agent (``proctor tunnel`` as a process): only the
facade's allow-list reaches the local model with the local key (issue 17: "``GET /secret?x=1``
reached the local model with the local key").
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from security.tunnel_kit import HostileHub, RecordingModel, error_code
from tunnel.tunnelkit import run

from proctor.tunnel import protocol
from proctor.tunnel.agent import AgentStats, TunnelAgent
from proctor.tunnel.protocol import Kind

MODEL_KEY = "sk-local-model-key-0123456789"

HOSTILE_CALLS = [
    {"m": "GET", "p": "/secret", "q": "x=1"},  # the issue's own example
    {"m": "DELETE", "p": "/models/fake"},
    {"m": "POST", "p": "/embeddings"},
    {"m": "GET", "p": "/chat/completions"},  # an allowed path with the wrong method
    {"m": "GET", "p": "/models/../../metrics"},
    {"m": "GET", "p": "/models/%2e%2e/%2E%2E/metrics"},
    {"m": "GET", "p": "/models/a%2f..%2f..%2fmetrics"},
    {"m": "GET", "p": "/models/..\\..\\metrics"},
    {"m": "GET", "p": "/models//etc"},
    {"m": "GET", "p": "//evil.example/v1/models"},
    {"m": "GET", "p": "models"},  # not absolute: would glue onto the base URL's host
    {"m": ["GET"], "p": "/models"},
    {"m": "GET", "p": "/models", "q": "a=1#frag"},
    {"m": "GET", "p": "/models", "q": "a=1 HTTP/1.1\r\nHost: evil"},
    {"m": "POST", "p": "/chat/completions", "h": {"Authorization": "Bearer stolen"}},
    {"m": "POST", "p": "/chat/completions", "h": {"content-type": "text/plain\r\nX-Evil: 1"}},
    {"m": "POST", "p": "/chat/completions", "h": ["content-type"]},
    {"m": "GET", "p": "/models/x\n\x1b[2Jfake log line"},  # must not reach the log as it is
]

ALLOWED_CALLS = [
    {"m": "POST", "p": "/chat/completions", "h": {"content-type": "application/json"}},
    {"m": "GET", "p": "/models/meta-llama/Llama-3.1-8B-Instruct"},
    {"m": "GET", "p": "/models", "q": "limit=5"},
]


async def _serve_hostile_hub(tmp_path: Path) -> tuple[HostileHub, RecordingModel, int, str]:
    model = await RecordingModel().start()
    hub = await HostileHub("job-x", HOSTILE_CALLS + ALLOWED_CALLS).start()
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PROCTOR_TOKEN": "pt-user-token",
        "PROCTOR_TUNNEL_SECRET": "the-tunnel-secret",
        "MY_MODEL_KEY": MODEL_KEY,
    }
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proctor",
        "tunnel",
        "job-x",
        "--model",
        model.url,
        "--api-key-env",
        "MY_MODEL_KEY",
        "--server",
        hub.url,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            async with asyncio.timeout(30):
                await agent.wait()  # the agent exits when the hub ends the job
        except TimeoutError:
            agent.kill()  # the assertions below say what went wrong
            await agent.wait()
        assert agent.stdout is not None and agent.stderr is not None
        output = (await agent.stdout.read() + await agent.stderr.read()).decode(errors="replace")
    finally:
        await hub.stop()
        await model.stop()
    assert agent.returncode is not None
    return hub, model, agent.returncode, output


def test_the_agent_forwards_only_the_allow_list(tmp_path: Path) -> None:
    hub, model, code, output = run(_serve_hostile_hub(tmp_path), timeout=90)
    # The local model saw the allowed calls only, each with the local key.
    seen = sorted((r["method"], r["path"], r["query"]) for r in model.seen)  # the agent works concurrently
    assert seen == [
        ("GET", "/v1/models", "limit=5"),
        ("GET", "/v1/models/meta-llama/Llama-3.1-8B-Instruct", ""),
        ("POST", "/v1/chat/completions", ""),
    ], seen
    assert all(r["authorization"] == f"Bearer {MODEL_KEY}" for r in model.seen)
    assert code == 0, output
    assert hub.done.is_set() and len(hub.answers) == len(HOSTILE_CALLS) + len(ALLOWED_CALLS), output
    # Every hostile call was answered 403 in OpenAI's error shape, and logged in one line.
    for rid in range(1, len(HOSTILE_CALLS) + 1):
        meta, body = hub.answers[rid]
        assert (meta["s"], error_code(body)) == (403, "not_allowed"), (HOSTILE_CALLS[rid - 1], meta, body)
    for rid in range(len(HOSTILE_CALLS) + 1, len(hub.answers) + 1):
        assert hub.answers[rid][0]["s"] == 200
    assert output.count("refused a call from the server") == len(HOSTILE_CALLS), output
    assert "Traceback" not in output and MODEL_KEY not in output and "\x1b" not in output
    assert MODEL_KEY not in json.dumps(hub.handshake_headers) and protocol.SECRET_HEADER in {
        k.lower() for k in hub.handshake_headers
    }


def test_the_agent_caps_request_bodies_the_server_never_finishes() -> None:
    """A server that sends request bodies past the agent's caps, or never ends them, cannot make
    the submitter's machine hold them: 413 once past a cap, and the model is not called."""
    chat_meta = {"m": "POST", "p": "/chat/completions", "h": {"content-type": "application/json"}}
    piece = b" " * (512 * 1024)

    def request(rid: int, *data: bytes, fin: bool = False) -> list[bytes]:
        frames = [protocol.encode(Kind.REQUEST, rid, chat_meta, piece, fin=False)]
        frames += [protocol.encode(Kind.DATA, rid, None, d, fin=fin and i == len(data) - 1) for i, d in enumerate(data)]
        return frames

    frames = (
        request(1, piece, piece)  # 1.5 MiB against a 1 MiB cap: refused as it arrives
        + request(2, b" " * (388 * 1024))  # 900 KiB held, not ended yet
        + request(3, b" " * (388 * 1024))  # 900 KiB held: 1.8 MiB
        + request(4)  # 512 KiB more would pass the 2 MiB of bodies arriving at once
        + [protocol.encode(Kind.CANCEL, 3), protocol.encode(Kind.DATA, 2, None, b"{}", fin=True)]
    )

    async def body() -> tuple[HostileHub, RecordingModel, AgentStats]:
        model = await RecordingModel().start()
        hub = await HostileHub("job-y", [], frames, answers=3).start()
        agent = TunnelAgent(
            hub.url,
            "job-y",
            "tok",
            "secret",
            model.url,
            log=lambda _line: None,
            max_request_body=1024 * 1024,
            max_partial_bytes=2 * 1024 * 1024,
        )
        try:
            stats = await agent.run()  # ends when the hub ends the job
        finally:
            await hub.stop()
            await model.stop()
        return hub, model, stats

    hub, model, stats = run(body(), timeout=60)
    statuses = {rid: meta["s"] for rid, (meta, _) in hub.answers.items()}
    assert statuses == {1: 413, 4: 413, 2: 200}, statuses
    assert error_code(hub.answers[1][1]) == error_code(hub.answers[4][1]) == "body_too_large"
    assert [r["path"] for r in model.seen] == ["/v1/chat/completions"] and stats.refused == 2
