"""Issue 17, item 2: malformed bodies get a 4xx in the documented error shape, never a 500."""

from __future__ import annotations

from pathlib import Path

from security.frontdoor_kit import proctor_job, served, spec_text

MALFORMED: dict[str, bytes] = {
    "deeply nested JSON": b'{"spec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested object": b'{"params": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    "a list, not an object": b"[]",
    "wrong type for files": b'{"kind": "proctor", "spec": "x", "files": ["a"]}',
    "wrong type for a param": b'{"kind": "command", "template": "t", "params": {"a": ["x"]}}',
    "wrong type for kind": b'{"kind": 5}',
    "a number for the token": b'{"models": {"subject": {"api_key": 5}}}',
    "not JSON": b"\xff\xfe{",
    "nul bytes": b'{"spec": "\\u0000"}',
    "an integer too long for Python's parser": b'{"limit": ' + b"1" * 10_000 + b"}",
    "an invalid surrogate": b'{"spec": "\\ud800"}',
}


def test_malformed_bodies_are_4xx_in_the_error_shape(tmp_path: Path) -> None:
    with served(tmp_path) as srv, srv.client() as alice:
        for what, body in MALFORMED.items():
            answer = alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:200]}"
            shape = answer.json()
            assert shape["ok"] is False and shape["status"] == answer.status_code and shape["error"], what
        deep_yaml = proctor_job(spec_text("generate:\n  extra_body: {x: " + "[" * 20_000 + "]" * 20_000 + "}\n"))
        answer = alice.post("/v1/jobs", json=deep_yaml)
        assert answer.status_code == 400 and answer.json()["ok"] is False
        unknown = alice.get("/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.json() == {"ok": False, "error": "Not Found", "status": 404}
    log = srv.log_text()
    assert "Traceback" not in log and " 500" not in log
