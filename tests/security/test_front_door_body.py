"""Issue 17, item 2: request bodies. Authentication comes before the body, sizes are capped as
declared and as streamed, stalled bodies and heads time out, uploads have file and disk caps.

Raw sockets send exactly what an attacker would: a head that promises a huge body, then little
or nothing. A server that waits for the body never answers, and the socket's timeout ends the test.
"""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

from security.frontdoor_kit import answer_complete, proctor_job, raw_request, served, spec_text

MIB = 1024 * 1024


def head(
    method: str, path: str, *, token: str | None = None, length: int | None = None, chunked: bool = False
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    first, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(first.split()[1]), json.loads(body)


def test_unauthenticated_huge_post_refused_before_its_body(tmp_path: Path) -> None:
    with served(tmp_path) as srv:
        for token in (None, "pt_not_a_token"):
            answer = raw_request(srv.port, head("POST", "/v1/jobs", token=token, length=256 * MIB) + b"{" * 1024)
            status, body = status_and_body(answer)
            assert status == 401 and body["ok"] is False and body["status"] == 401
        # The huge body over the size cap is refused too, and a small valid post still works.
        with srv.client() as alice:
            assert alice.post("/v1/jobs", json=proctor_job(spec_text())).status_code == 201
    assert "Traceback" not in srv.log_text()


def test_declared_length_over_cap_is_413_at_once(tmp_path: Path) -> None:
    with served(tmp_path) as srv:  # the default cap, 512 MiB: the filed attack stored 600 MiB
        answer = raw_request(srv.port, head("POST", "/v1/jobs", token=srv.tokens["alice"], length=600 * MIB))
        status, body = status_and_body(answer)
        assert status == 413 and "larger than" in str(body["error"])


def test_streamed_body_over_cap_is_413(tmp_path: Path) -> None:
    with served(tmp_path, {"max_upload_bytes": MIB}) as srv:
        chunk = b"x" * (64 * 1024)
        data = head("POST", "/v1/jobs", token=srv.tokens["alice"], chunked=True)
        data += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))  # 1.06 MiB, never finished
        status, body = status_and_body(raw_request(srv.port, data))
        assert status == 413 and body["ok"] is False
        with srv.client() as alice:
            assert alice.get("/v1/jobs").json()["jobs"] == []


def test_stalled_body_is_408(tmp_path: Path) -> None:
    with served(tmp_path, {"body_timeout": 1}) as srv:
        answer = raw_request(srv.port, head("POST", "/v1/jobs", token=srv.tokens["alice"], length=1000) + b'{"kind":')
        status, body = status_and_body(answer)
        assert status == 408 and "stalled" in str(body["error"])


def test_idle_and_half_sent_heads_are_closed(tmp_path: Path) -> None:
    with served(tmp_path, {"header_timeout": 1}) as srv:
        for sent in (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
                sock.sendall(sent)
                assert sock.recv(1024) == b""  # closed by the server, not by our 30 s timeout
        # A connection that sends its head in time is served as before.
        with srv.client(None) as anyone:
            assert anyone.get("/health").status_code == 200


def test_upload_file_count_and_job_disk_caps(tmp_path: Path) -> None:
    with served(tmp_path, {"max_job_disk_bytes": 200_000}) as srv, srv.client() as alice:
        many = proctor_job(spec_text())
        many["files"].update({f"f/{i}.txt": {"content": "x"} for i in range(20_000)})
        answer = alice.post("/v1/jobs", json=many)
        assert answer.status_code == 413, answer.text
        assert "20,001 files" in answer.json()["error"]
        big = proctor_job(spec_text())
        big["files"]["blob.bin"] = {"content": base64.b64encode(b"\0" * 300_000).decode(), "encoding": "base64"}
        answer = alice.post("/v1/jobs", json=big)
        assert answer.status_code == 413, answer.text
        assert alice.get("/v1/jobs").json()["jobs"] == []
        assert not (srv.data / "jobs").exists() or not any((srv.data / "jobs").iterdir())


def test_job_disk_cap_counts_what_a_resumed_job_already_holds(tmp_path: Path) -> None:
    with served(tmp_path, {"max_job_disk_bytes": 200_000}) as srv, srv.client() as alice:
        first = proctor_job(spec_text())
        first["job_id"] = "mine-0001"
        first["files"]["a.txt"] = {"content": "a" * 150_000}
        assert alice.post("/v1/jobs", json=first).status_code == 201
        again = proctor_job(spec_text())
        again["job_id"] = "mine-0001"
        again["files"]["b.txt"] = {"content": "b" * 100_000}  # fits alone, not with a.txt
        answer = alice.post("/v1/jobs", json=again)
        assert answer.status_code == 413, answer.text
        assert not (srv.data / "jobs" / "mine-0001" / "b.txt").exists()


def test_idle_keep_alive_connection_closed(tmp_path: Path) -> None:
    with served(tmp_path, {"keep_alive_timeout": 1}) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer_complete(answer):  # bounded by the socket's timeout
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            assert sock.recv(1024) == b""  # closed by the server once idle, not by our 30 s timeout
