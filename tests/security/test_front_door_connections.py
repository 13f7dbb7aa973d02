"""Issue 17, item 2: idle sockets cannot lock everyone out, and the open-files limit is raised.

Filed: 1,100 idle sockets under a 1,024 open-files limit made ``/health`` fail 10 of 10. Here
the same attack at a smaller scale (400 idle sockets, a limit of 256) keeps the test light.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from pathlib import Path

import httpx
import psutil
from security.frontdoor_kit import served


def open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def test_idle_sockets_do_not_lock_out_health(tmp_path: Path) -> None:
    with served(tmp_path, {"header_timeout": 600}, nofile=(256, 256)) as srv:
        idle = open_idle(srv.port, 400)
        try:
            with httpx.Client(base_url=srv.url, timeout=20) as client:
                answers = [client.get("/health", headers={"Connection": "close"}).status_code for _ in range(10)]
            assert answers == [200] * 10
        finally:
            for sock in idle:
                with contextlib.suppress(OSError):
                    sock.close()
    assert "Too many open files" not in srv.log_text()


def test_open_files_soft_limit_raised_to_hard(tmp_path: Path) -> None:
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    with served(tmp_path, nofile=(256, hard)) as srv:
        assert psutil.Process(srv.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)


def test_header_timeout_spares_streams_and_tunnels(tmp_path: Path) -> None:
    """A log follow (SSE) and a tunnel WebSocket outlive header_timeout: only heads are timed."""
    import asyncio
    import sys

    import websockets

    script = {
        "argv": [sys.executable, str(Path(__file__).parents[1] / "server" / "jobscript.py"), "sleep", "{arg}"],
        "params": {"arg": {"pattern": "^[0-9.]+$"}},
    }
    with served(tmp_path, {"header_timeout": 1, "templates": {"script": script}}) as srv, srv.client() as alice:
        job_id = alice.post("/v1/jobs", json={"kind": "command", "template": "script", "params": {"arg": "3"}}).json()[
            "job"
        ]["id"]
        with alice.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": 1}) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("event:")]
        assert events[-1] == "event: end"  # the stream lasted 3 s and ended normally
        private = alice.post(
            "/v1/jobs",
            json={
                "kind": "command",
                "template": "script",
                "params": {"arg": "30"},
                "private": True,
                "models": {"subject": {"model": "m"}},
            },
        ).json()

        async def hold() -> None:
            headers = {
                "Authorization": f"Bearer {srv.tokens['alice']}",
                "x-proctor-tunnel-secret": private["tunnel_secret"],
            }
            url = srv.url.replace("http", "ws") + f"/v1/jobs/{private['job']['id']}/tunnel"
            async with websockets.connect(url, additional_headers=headers, ping_interval=None) as ws:
                await asyncio.sleep(2.5)
                await asyncio.wait_for(await ws.ping(), 10)  # still open past header_timeout

        asyncio.run(hold())
