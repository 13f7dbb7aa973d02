"""The dashboard on ``proctor serve``: login, the cookie's flags, CSRF, other users, the JSON twins."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from web_helpers import Served, arith_spec, login, start_server, submit, wait_job

from proctor.server.store import JobStore
from proctor.testing import FakeLLMThread
from proctor.web.session import COOKIE_NAME


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def test_login_sets_a_strict_httponly_cookie_without_the_token(served: Served) -> None:
    server = served.server
    with httpx.Client(base_url=server.url, follow_redirects=False) as client:
        answer = client.post("/login", data={"token": server.tokens["alice"], "next": "/"})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        value = cookie.split(";")[0].split("=", 1)[1]
        assert server.tokens["alice"] not in value and server.tokens["alice"][3:20] not in value
        mine = client.get("/jobs.json").json()
        assert {j["id"] for j in mine["jobs"]} == {served.alice_job, served.agent_job}  # not bob's
        assert {j["owner"] for j in mine["jobs"]} == {"alice"}


def test_a_bad_token_gets_the_form_again_and_no_cookie(served: Served) -> None:
    with httpx.Client(base_url=served.server.url) as client:
        answer = client.post("/login", data={"token": "pt_not-a-token"})
        assert answer.status_code == 401 and "the token is not valid" in answer.text
        assert "set-cookie" not in answer.headers


def test_pages_need_a_login_and_the_api_ignores_the_cookie(served: Served) -> None:
    server = served.server
    with httpx.Client(base_url=server.url, follow_redirects=False) as anonymous:
        page = anonymous.get(f"/jobs/{served.alice_job}")
        assert page.status_code == 303 and page.headers["location"] == f"/login?next=/jobs/{served.alice_job}"
        twin = anonymous.get("/jobs.json")
        assert twin.status_code == 401 and twin.json()["ok"] is False
    with login(server, "alice") as browser:
        assert browser.get(f"/jobs/{served.alice_job}.json").status_code == 200
        assert browser.get("/v1/jobs").status_code == 401  # the API keeps bearer tokens only
        assert browser.get(f"/v1/jobs/{served.alice_job}/logs?follow=1").status_code == 401


def test_another_users_job_is_not_found_on_every_page(served: Served) -> None:
    with login(served.server, "alice") as browser:
        for path in ("", ".json", "/samples", "/samples.json", "/samples/q1", "/samples/q1.json", "/analysis", "/log"):
            answer = browser.get(f"/jobs/{served.bob_job}{path}")
            assert answer.status_code == 404, path
            assert "not found" in answer.text, path
        twin = browser.get(f"/jobs/{served.bob_job}.json").json()
        assert twin == {"ok": False, "error": "not found", "status": 404}
        page = browser.get(f"/jobs/{served.alice_job}").text
        refused = browser.post(f"/jobs/{served.bob_job}/delete", data={"csrf": _csrf(page)})
        assert refused.status_code == 404
    with login(served.server, "root") as admin:  # an admin sees everyone's, as in the API
        assert admin.get(f"/jobs/{served.bob_job}.json").status_code == 200


def test_json_twins_of_a_server_job(served: Served) -> None:
    server = served.server
    with login(server, "alice") as browser:
        api = httpx.get(
            f"{server.url}/v1/jobs/{served.alice_job}/artifacts/out/eval_stats.json",
            headers={"Authorization": f"Bearer {server.tokens['alice']}"},
        ).json()
        job = browser.get(f"/jobs/{served.alice_job}.json").json()
        assert job["accuracy"]["value"] == api["accuracy"]["value"]
        assert job["counts"]["total"] == 30 and job["job"]["state"] == "succeeded"
        assert job["job"]["actions"] == ["resume", "delete"]
        samples = browser.get(f"/jobs/{served.alice_job}/samples.json", params={"state": "error"}).json()
        assert samples["matched"] == 2
        sample = browser.get(f"/jobs/{served.agent_job}/samples/q0.json").json()["sample"]
        assert any(m["role"] == "tool" for m in sample["messages"])
        analysis = browser.get(f"/jobs/{served.alice_job}/analysis.json").json()
        assert analysis["analysis"]["groups"]
        html = browser.get(f"/jobs/{served.alice_job}")
        assert html.status_code == 200 and 'id="delete"' in html.text and 'id="cancel"' not in html.text


def test_the_log_stream_accepts_the_session_cookie(served: Served) -> None:
    with login(served.server, "alice") as browser:
        with browser.stream("GET", f"/jobs/{served.alice_job}/log") as answer:
            assert answer.status_code == 200
            body = b"".join(answer.iter_bytes())
    assert b"event: log" in body and b"event: end" in body


def test_actions_need_the_sessions_csrf_token(served: Served, llm: FakeLLMThread, tmp_path: Path) -> None:
    server = served.server
    job = submit(server, "alice", arith_spec(tmp_path / "d", llm.base_url, n=3))
    wait_job(server, "alice", job, {"succeeded"})
    with login(server, "alice") as browser:
        page = browser.get(f"/jobs/{job}").text
        for csrf in ("", "forged", _csrf(page)[:-1] + "x"):
            refused = browser.post(f"/jobs/{job}/delete", data={"csrf": csrf})
            assert refused.status_code == 403, csrf
            assert browser.get(f"/jobs/{job}.json").status_code == 200  # still there
        with login(server, "alice") as other_session:  # a token from another session does not do
            other = _csrf(other_session.get(f"/jobs/{job}").text)
        assert other != _csrf(page)
        assert browser.post(f"/jobs/{job}/delete", data={"csrf": other}).status_code == 403
        done = browser.post(f"/jobs/{job}/delete", data={"csrf": _csrf(page)})
        assert done.status_code == 303 and done.headers["location"] == "/"
        assert browser.get(f"/jobs/{job}.json").status_code == 404


def test_logout_ends_the_session(served: Served) -> None:
    with login(served.server, "alice") as browser:
        page = browser.get("/").text
        cookie = browser.cookies[COOKIE_NAME]
        assert browser.post("/logout", data={"csrf": _csrf(page)}).status_code == 303
        with httpx.Client(base_url=served.server.url, cookies={COOKIE_NAME: cookie}) as replay:
            assert replay.get("/jobs.json").status_code == 401  # the old cookie is dead
        forged = cookie.split(".")[0] + "." + "0" * 64
        with httpx.Client(base_url=served.server.url, cookies={COOKIE_NAME: forged}) as replay:
            assert replay.get("/jobs.json").status_code == 401


def test_a_revoked_token_ends_its_sessions_and_twins_take_bearer_tokens(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", token_cache_seconds=0)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.tokens['bob']}"}) as script:
            assert script.get("/jobs.json").json() == {"ok": True, "jobs": [], "batches": []}
        with login(server, "bob") as browser:
            assert browser.get("/jobs.json").status_code == 200
            store = JobStore(server.settings.store_url)
            try:
                assert store.revoke_token("bob")
            finally:
                store.close()
            assert browser.get("/jobs.json").status_code == 401
            assert browser.get("/").headers["location"] == "/login?next=/"
    finally:
        server.stop()


def test_open_mode_needs_no_login(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", open=True)
    try:
        with httpx.Client(base_url=server.url) as anyone:
            page = anyone.get("/")
            assert page.status_code == 200 and "Log out" not in page.text
            assert "httponly" in page.headers["set-cookie"].lower()  # a session for the CSRF token
            assert anyone.get("/jobs.json").json()["ok"] is True
    finally:
        server.stop()


def test_the_list_at_root_and_lm_eval_servers_jobs_route_live_side_by_side(served: Served) -> None:
    """``GET /jobs`` is lm-eval-server's API on ``proctor serve``; the dashboard's list is ``/``."""
    server = served.server
    with login(server, "alice") as browser:
        page = browser.get("/")
        assert page.status_code == 200 and served.alice_job in page.text and "<html" in page.text.lower()
    bearer = {"Authorization": f"Bearer {server.tokens['alice']}"}
    api = httpx.get(f"{server.url}/jobs", headers=bearer, timeout=30)
    assert api.status_code == 200 and isinstance(api.json(), list | dict)
    assert "<html" not in api.text.lower()
