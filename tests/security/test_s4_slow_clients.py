"""Slow clients are shed: slowloris heads and trickled bodies cannot hold the server's connections.

The attack: a stranger with a token opens more connections than the server keeps
(``max_connections``) and keeps every one of them busy, some sending a request head a byte at a
time, most sending a declared body a byte at a time, never pausing long enough for
``body_timeout``. Before: the heads were cut at ``header_timeout``, but the trickled bodies were
kept as long as the attacker went on (every connection busy, so each newcomer was the one
closed), and a normal client's request was never answered. Now a body later than
``body_deadline`` (plus a second per ``body_min_rate`` bytes) is a 408 and its connection closed,
and the normal client gets in.

No timed assertion: each wait is a generous bound on a loop (the attacker trickles for up to
``ATTACK_SECONDS``, far longer than the 2 s deadline configured here), and what is asserted is
the outcome: every slow connection was closed by the server, and the normal request answered.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from pathlib import Path

from security.frontdoor_kit import proctor_job, served, spec_text
from security.s4_kit import normal_client_served

MAX_CONNECTIONS = 8
ATTACK_SECONDS = 60.0
"""How long the attacker trickles at most: the server must close every slow connection first."""


class Trickler:
    """Slow connections kept busy from one thread: a byte per connection every ``interval`` s."""

    def __init__(self, port: int, token: str, *, bodies: int, heads: int, interval: float = 0.25) -> None:
        self.interval = interval
        self.socks: list[socket.socket] = []
        self.pending: dict[socket.socket, bytes] = {}
        self.answers: dict[socket.socket, bytes] = {}
        self.closed: set[socket.socket] = set()
        for i in range(bodies + heads):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i < bodies:
                sock.sendall(
                    b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100000\r\n\r\n"
                )
                self.pending[sock] = b"{" + b" " * 99_999
            else:
                self.pending[sock] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 4000
            sock.setblocking(False)
            self.socks.append(sock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + ATTACK_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline and len(self.closed) < len(self.socks):
            for sock in self.socks:
                if sock in self.closed:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        self.closed.add(sock)
                        continue
                    self.answers[sock] = self.answers.get(sock, b"") + chunk
                data = self.pending[sock]
                if data:
                    try:
                        sock.send(data[:1])
                        self.pending[sock] = data[1:]
                    except OSError:
                        self.closed.add(sock)
            time.sleep(self.interval)

    def join(self) -> None:
        self.thread.join(ATTACK_SECONDS + 30)
        self.stop.set()
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()


def test_slow_heads_and_trickled_bodies_are_shed_and_a_normal_client_is_served(tmp_path: Path) -> None:
    config = {"max_connections": MAX_CONNECTIONS, "header_timeout": 2, "body_deadline": 2, "body_timeout": 30}
    with served(tmp_path, config) as srv:
        attack = Trickler(srv.port, srv.tokens["alice"], bodies=MAX_CONNECTIONS + 2, heads=4)
        try:
            assert normal_client_served(srv, within=ATTACK_SECONDS), "a normal client was never answered"
        finally:
            attack.join()
        assert len(attack.closed) == len(attack.socks), f"{len(attack.socks) - len(attack.closed)} still open"
        refused = [a for a in attack.answers.values() if a.startswith(b"HTTP/1.1 408")]
        assert refused and all(b"too slowly" in a for a in refused)
        with srv.client("bob") as bob:
            assert bob.get("/v1/jobs").json()["jobs"] == []  # no trickled body became a job
    assert "Traceback" not in srv.log_text()


def test_a_slow_but_steady_upload_outlives_the_deadline(tmp_path: Path) -> None:
    """``body_min_rate`` earns a body time: 30 kB at about 10 kB/s takes 3 s, past a 1 s deadline,
    and is still accepted (1 s + 1 s per 1,000 bytes = 31 s allowed)."""
    config = {"body_deadline": 1, "body_min_rate": 1000, "body_timeout": 30}
    with served(tmp_path, config) as srv:
        body = json.dumps(proctor_job(spec_text())).encode()
        body += b" " * (30_000 - len(body))  # JSON allows trailing white space
        head = (
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + srv.tokens["alice"].encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        with socket.create_connection(("127.0.0.1", srv.port), timeout=60) as sock:
            sock.sendall(head)
            for i in range(0, len(body), 1000):
                sock.sendall(body[i : i + 1000])
                time.sleep(0.1)
            answer = b""
            while b"\r\n\r\n" not in answer:  # bounded by the socket's timeout
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
