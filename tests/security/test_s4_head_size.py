"""A request head has a size cap: many headers are a 431, not memory the server keeps.

Before: uvicorn's httptools protocol kept every header of a head, however many. A client sending
190 MiB of 1 KB headers (well within the header timeout on loopback) grew the server by 223 MiB,
and the head was then served as if nothing had happened. Now a head past ``max_head_bytes`` is
answered 431 in the error shape and its connection closed; ordinary heads, and bodies far larger
than the cap that arrive together with their head, are served as before.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from security.frontdoor_kit import proctor_job, raw_request, served, spec_text

CAP = 16384


def test_a_head_past_the_cap_is_431_and_closed(tmp_path: Path) -> None:
    with served(tmp_path, {"max_head_bytes": CAP}) as srv:
        many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(200))  # 200 KB of headers
        answer = raw_request(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), answer[:200]
        assert json.loads(body) == {
            "ok": False,
            "error": f"the request head is larger than this server accepts ({CAP:,} bytes)",
            "status": 431,
        }
        # An attacker who keeps sending after the 431 finds the connection closed.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many)
            received = b""
            while chunk := sock.recv(65536):  # bounded by the socket's timeout; ends when closed
                received += chunk
            assert received.startswith(b"HTTP/1.1 431")
        # A head under the cap is served, and so is a body 20 times the cap sent with its head.
        ok = raw_request(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"c" * 8000 + b"\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
        with srv.client() as alice:
            job = proctor_job(spec_text())
            job["files"]["big.txt"] = {"content": "b" * (20 * CAP)}
            assert alice.post("/v1/jobs", json=job).status_code == 201
    assert "Traceback" not in srv.log_text()
