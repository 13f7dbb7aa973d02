"""Slow readers are shed: a client that asks for a large answer and never reads it loses it.

The attack: a stranger with a token fills every connection the server keeps (``max_connections``)
with downloads of their own job's large log, and reads none of them. Before: each answer waited
forever for the client to take the next bytes, every connection stayed busy, each newcomer was the
one shed, and a normal client's request was never answered. Now an answer that cannot be sent for
``send_timeout`` seconds has its connection cut, and the normal client gets in.

No timed assertion: waits are generous bounds on loops, and what is asserted is the outcome.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

from security.frontdoor_kit import served
from security.s4_kit import normal_client_served

MAX_CONNECTIONS = 8
JOBSCRIPT = str(Path(__file__).parents[1] / "server" / "jobscript.py")
BOUND = 90.0
"""Seconds any wait here may take at most (the cut itself is configured at 2 s)."""


def test_downloads_nobody_reads_are_cut_and_a_normal_client_is_served(tmp_path: Path) -> None:
    script = {"argv": [sys.executable, JOBSCRIPT, "lines", "{arg}"], "params": {"arg": {"pattern": "^[0-9]+$"}}}
    config = {"max_connections": MAX_CONNECTIONS, "send_timeout": 2, "templates": {"script": script}}
    with served(tmp_path, config) as srv, srv.client() as alice:
        job = alice.post("/v1/jobs", json={"kind": "command", "template": "script", "params": {"arg": "200000"}})
        job_id = job.json()["job"]["id"]
        deadline = time.monotonic() + BOUND
        while alice.get(f"/v1/jobs/{job_id}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline, "the log job did not finish"
            time.sleep(0.2)
        size = len(alice.get(f"/v1/jobs/{job_id}/artifacts/job.log").content)
        assert size > 8 * 1024 * 1024  # far more than the socket buffers hold
        request = (
            f"GET /v1/jobs/{job_id}/artifacts/job.log HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {srv.tokens['alice']}\r\n\r\n"
        ).encode()
        readers = []
        try:
            for _ in range(MAX_CONNECTIONS + 2):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(BOUND)
                sock.connect(("127.0.0.1", srv.port))
                sock.sendall(request)
                readers.append(sock)
            assert normal_client_served(srv, within=BOUND), "a normal client was never answered"
            for sock in readers:  # each download ends short of the whole log: the server cut it
                received = 0
                with contextlib.suppress(ConnectionResetError):
                    while chunk := sock.recv(1024 * 1024):  # bounded by the socket's timeout
                        received += len(chunk)
                assert received < size
        finally:
            for sock in readers:
                sock.close()
    assert "Traceback" not in srv.log_text()
