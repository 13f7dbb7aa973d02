"""The ways in this round added, attacked: the dashboard's forms, a client-chosen batch id, and
lm-eval-server's routes (a caller before the body)."""

from __future__ import annotations

from pathlib import Path

import httpx
from security.frontdoor_kit import raw_request, served

from proctor.web.routes import MAX_FORM_BYTES


def test_an_oversized_or_crowded_login_form_is_refused_without_a_session(tmp_path: Path) -> None:
    with served(tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=30) as browser:
        # A valid token, padded past the cap: only the bound stands between it and a session.
        padded = f"token={srv.tokens['alice']}&pad=".encode() + b"x" * MAX_FORM_BYTES
        big = browser.post("/login", content=padded, headers={"content-type": "application/x-www-form-urlencoded"})
        assert 400 <= big.status_code < 500 and "set-cookie" not in big.headers
        crowded = browser.post("/login", data={f"f{i}": "1" for i in range(40)} | {"token": srv.tokens["alice"]})
        assert 400 <= crowded.status_code < 500 and "set-cookie" not in crowded.headers


def test_a_hostile_batch_id_is_refused_and_nothing_is_queued(tmp_path: Path) -> None:
    with served(tmp_path) as srv, srv.client() as alice:
        for batch in ("../../etc", "x" * 300, "a b"):
            answer = alice.post("/v1/jobs", json={"kind": "command", "template": "none", "batch_id": batch})
            assert answer.status_code == 422, (batch, answer.text)
            assert "batch_id" in answer.text
        assert alice.get("/v1/jobs").json()["jobs"] == []


def test_lm_eval_servers_routes_want_a_caller_before_the_body(tmp_path: Path) -> None:
    with served(tmp_path) as srv:
        # A body far over any cap is announced; without a token the answer comes before it is sent.
        head = b"POST /job HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
        answer = raw_request(srv.port, head)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        for method, path in (("GET", "/jobs"), ("GET", "/jobs/stop"), ("DELETE", "/jobs"), ("GET", "/job/abc")):
            assert httpx.request(method, srv.url + path, timeout=30).status_code == 401, path
