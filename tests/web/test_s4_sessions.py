"""Dashboard sessions live in the job store: a restart keeps them, and every server of a fleet knows them.

Real ``proctor serve`` processes (on SQLite, and on the throwaway PostgreSQL of ``tests/pg_kit.py``),
logged into through the login form with httpx; tokens made and revoked with the real CLI.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pg_kit
import pytest
import test_browser
import yaml
from helpers import create_token, start_server, stop_process, store_args
from sqlalchemy import func, select

from proctor.server.store import JobStore, hash_token
from proctor.web.session import COOKIE_NAME

browser, page = test_browser.browser, test_browser.page  # the real chromium's fixtures (Playwright)
JOBSCRIPT = str(Path(__file__).parents[1] / "server" / "jobscript.py")


@pytest.fixture(autouse=True)
def _every_store(store_backend: str) -> str:
    """Each test runs on every job-store back end it is not marked for only one of (tests/conftest.py)."""
    return store_backend


class Servers:
    """``proctor serve`` children on one data directory (so one store), each stopped by its handle."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.log = tmp_path / "servers.log"
        self.config = tmp_path / "server.yaml"
        template = {
            "argv": [sys.executable, JOBSCRIPT, "{mode}", "{arg}"],
            "params": {"mode": {"pattern": "^lines$"}, "arg": {"default": "1"}},
        }
        self.config.write_text(yaml.safe_dump({"kill_grace": 2, "templates": {"script": template}}))
        self.tokens = {"alice": create_token(self.data, "alice"), "bob": create_token(self.data, "bob")}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *extra: str) -> str:
        proc, url = start_server(self.data, self.log, "--config", str(self.config), *extra)
        self.procs.append(proc)
        return url

    def stop(self, index: int) -> None:
        stop_process(self.procs[index])
        assert self.procs[index].returncode is not None

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)

    def revoke(self, name: str) -> None:
        """``proctor server token revoke NAME``, as an admin would."""
        args = ["server", "token", "revoke", name, "--data", str(self.data), *store_args(self.data)]
        done = subprocess.run([sys.executable, "-m", "proctor", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    made = Servers(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def log_in(url: str, token: str) -> str:
    """The session cookie the login form sets for ``token``."""
    with httpx.Client(base_url=url, follow_redirects=False, timeout=30) as client:
        answer = client.post("/login", data={"token": token, "next": "/"})
        assert answer.status_code == 303, answer.text
        return str(client.cookies[COOKIE_NAME])


@contextmanager
def cookie_client(url: str, cookie: str) -> Iterator[httpx.Client]:
    """A client that sends ``cookie`` to ``url`` (any server of the fleet), as a browser would."""
    with httpx.Client(base_url=url, cookies={COOKIE_NAME: cookie}, follow_redirects=False, timeout=30) as client:
        yield client


def csrf_of(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    match = re.search(r'name="csrf" value="([^"]+)"', answer.text)
    assert match, "the page has no CSRF field"
    return match.group(1)


def logged_in_as(client: httpx.Client) -> int:
    """The status of the job list's twin: 200 with a live session, 401 without one."""
    return client.get("/jobs.json").status_code


def finished_job(url: str, headers: dict[str, str]) -> str:
    """A command job submitted through the API and run to its end (bounded wait): its id."""
    with httpx.Client(base_url=url, headers=headers, timeout=30) as api:
        submitted = api.post("/v1/jobs", json={"kind": "command", "template": "script", "params": {"mode": "lines"}})
        assert submitted.status_code in (200, 201), submitted.text
        job = str(submitted.json()["job"]["id"])
        for _ in range(1200):  # at most ~2 min
            if api.get(f"/v1/jobs/{job}").json()["state"] in {"succeeded", "failed", "cancelled", "timed_out"}:
                break
            time.sleep(0.1)
        assert api.get(f"/v1/jobs/{job}").json()["state"] == "succeeded"
    return job


def test_a_login_and_its_forms_survive_a_server_restart(servers: Servers) -> None:
    first = servers.start()
    cookie = log_in(first, servers.tokens["alice"])
    with cookie_client(first, cookie) as tab:
        assert logged_in_as(tab) == 200
        csrf = csrf_of(tab.get("/"))
    servers.stop(0)

    again = servers.start()  # the same data directory and store
    with cookie_client(again, cookie) as tab:
        assert logged_in_as(tab) == 200  # not bounced to the login form
        page = tab.get("/")
        assert page.status_code == 200 and "Log out" in page.text
        assert csrf_of(page) == csrf  # the form the browser holds from before the restart still works
        assert tab.post("/logout", data={"csrf": csrf}).status_code == 303
        assert logged_in_as(tab) == 401
        assert tab.get("/").headers["location"] == "/login?next=/"


def test_open_mode_forms_survive_a_restart(servers: Servers) -> None:
    """No login in ``--open`` mode, but the session that carries a form's CSRF token is in the store too."""
    first = servers.start("--open")
    job = finished_job(first, {})
    with httpx.Client(base_url=first, follow_redirects=False, timeout=30) as anyone:
        csrf = csrf_of(anyone.get(f"/jobs/{job}"))
        cookie = str(anyone.cookies[COOKIE_NAME])
    servers.stop(0)
    again = servers.start("--open")
    with cookie_client(again, cookie) as tab:
        assert tab.post(f"/jobs/{job}/delete", data={"csrf": "forged"}).status_code == 403
        assert "set-cookie" not in tab.get("/").headers  # the same session, not a new one
        assert tab.post(f"/jobs/{job}/delete", data={"csrf": csrf}).status_code == 303
        assert tab.get(f"/jobs/{job}.json").status_code == 404


@pytest.mark.store("postgres")
def test_a_fleet_knows_every_servers_sessions_and_their_forms(servers: Servers) -> None:
    a, b = servers.start(), servers.start()
    cookie = log_in(a, servers.tokens["alice"])
    job = finished_job(a, {"Authorization": f"Bearer {servers.tokens['alice']}"})

    with cookie_client(a, cookie) as on_a, cookie_client(b, cookie) as on_b:
        assert logged_in_as(on_b) == 200  # made on A, known on B
        assert {j["id"] for j in on_b.get("/jobs.json").json()["jobs"]} == {job}
        csrf = csrf_of(on_a.get(f"/jobs/{job}"))
        assert on_b.post(f"/jobs/{job}/delete", data={"csrf": "forged"}).status_code == 403
        deleted = on_b.post(f"/jobs/{job}/delete", data={"csrf": csrf})  # A's form, sent to B
        assert deleted.status_code == 303, deleted.text
        assert on_a.get(f"/jobs/{job}.json").status_code == 404  # gone for A too

        assert on_b.post("/logout", data={"csrf": csrf_of(on_b.get("/"))}).status_code == 303
        assert logged_in_as(on_a) == 401  # logged out on B: A forgets the session at once
        assert logged_in_as(on_b) == 401


def test_a_revoked_token_ends_its_sessions_on_every_server(servers: Servers, store_backend: str) -> None:
    urls = [servers.start()] + ([servers.start()] if store_backend == "postgres" else [])
    bob = log_in(urls[0], servers.tokens["bob"])
    alice = log_in(urls[-1], servers.tokens["alice"])
    for url in urls:
        with cookie_client(url, bob) as tab:
            assert logged_in_as(tab) == 200
    servers.revoke("bob")
    for url in urls:  # at once, whatever the servers' token cache (10 s by default)
        with cookie_client(url, bob) as tab:
            assert logged_in_as(tab) == 401
        with cookie_client(url, alice) as tab:
            assert logged_in_as(tab) == 200  # another token's sessions go on
    # the same name with a new token does not bring the old sessions back
    create_token(servers.data, "bob")
    for url in urls:
        with cookie_client(url, bob) as tab:
            assert logged_in_as(tab) == 401


@pytest.mark.store("sqlite")
def test_the_store_file_holds_no_token_no_cookie_and_no_csrf_token(servers: Servers) -> None:
    url = servers.start()
    token = servers.tokens["alice"]
    cookie = log_in(url, token)
    with cookie_client(url, cookie) as tab:
        csrf = csrf_of(tab.get("/"))
    servers.stop(0)
    with contextlib.closing(sqlite3.connect(servers.data / "proctor.sqlite")) as db:
        assert db.execute("SELECT count(*) FROM web_sessions").fetchone() == (1,)  # the session is in this file
    raw = b"".join(path.read_bytes() for path in sorted(servers.data.glob("proctor.sqlite*")))  # and any WAL
    for secret in (token, token[3:20], cookie, cookie[:16], csrf):
        assert secret.encode() not in raw, secret[:6]


def test_a_login_loop_keeps_a_bounded_number_of_sessions(tmp_path: Path, store_backend: str) -> None:
    from proctor.server.store import web_sessions_table
    from proctor.server.web_sessions import StoredSessions

    url = pg_kit.store_url_for(tmp_path) or f"sqlite:///{tmp_path / 'store.sqlite'}"
    store = JobStore(url)
    try:
        token = store.create_token("alice")
        sessions = StoredSessions(store, per_owner=3)
        made = [sessions.create("alice", token_digest=hash_token(token))[0] for _ in range(10)]
        assert [sessions.get(c) is not None for c in made] == [False] * 7 + [True] * 3  # the newest three
        sessions.create("bob", token_digest=None)
        count = select(web_sessions_table.c.owner, func.count()).group_by(web_sessions_table.c.owner)
        with store.engine.connect() as conn:
            assert dict(conn.execute(count).all()) == {"alice": 3, "bob": 1}
        expired = StoredSessions(store, lifetime=0.0)
        dead = expired.create("carol", token_digest=None)[0]
        assert expired.get(dead) is None
        sessions.create("bob", token_digest=None)  # making a session clears expired rows
        store.revoke_token("alice")
        sessions.create("bob", token_digest=None)  # ... and the revoked token's
        with store.engine.connect() as conn:
            assert dict(conn.execute(count).all()) == {"bob": 3}
    finally:
        store.close()


def test_the_table_keeps_at_most_max_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many owners (open mode: one per address) cannot grow the table past its cap: the oldest go."""
    from proctor.server import web_sessions

    monkeypatch.setattr(web_sessions, "MAX_SESSIONS", 4)
    store = JobStore(pg_kit.store_url_for(tmp_path) or f"sqlite:///{tmp_path / 'store.sqlite'}")
    try:
        sessions = web_sessions.StoredSessions(store)
        made = [sessions.create(f"ip:10.0.0.{i}", token_digest=None)[0] for i in range(9)]
        assert [sessions.get(c) is not None for c in made] == [False] * 5 + [True] * 4
    finally:
        store.close()


@pytest.mark.store("postgres")
def test_in_a_real_browser_a_login_outlives_a_restart_and_reaches_the_whole_fleet(servers: Servers, page: Any) -> None:
    """Chromium keeps one cookie for 127.0.0.1 whatever the port, as it would behind one load balancer."""
    a, b = servers.start(), servers.start()
    page.goto(f"{a}/")
    assert "/login" in page.url
    page.fill("#token", servers.tokens["alice"])
    page.click("#login")
    page.wait_for_url(f"{a}/")

    page.goto(f"{b}/")  # the other server of the fleet
    assert page.url == f"{b}/" and page.is_visible("#logout")

    servers.stop(0)
    again = servers.start()
    page.goto(f"{again}/")  # the restarted server
    assert page.url == f"{again}/" and page.is_visible("#logout")
    page.click("#logout")
    page.wait_for_url(f"{again}/login", timeout=test_browser.WAIT_MS)

    page.goto(f"{b}/")  # logged out on one server: out on every one
    assert "/login" in page.url
