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
