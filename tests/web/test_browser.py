"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real server.

Skipped, with the reason, only where no browser can be started. Each test saves a screenshot of
every page it visits under its own temporary directory (``tmp_path``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import Running, Served, arith_spec, submit, wait_job

from proctor.testing import FakeLLMConfig, FakeLLMThread

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 60_000
"""Upper bound of every wait in the page (they return as soon as the condition holds)."""


def _no_browser_reason() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no browser: {CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no browser driver: playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _no_browser_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as driver:
        try:
            # --no-sandbox: chromium's own sandbox refuses to start as root (as in CI).
            # A launch gets the tests' generous wait, not Playwright's 30 s: on a loaded host a
            # slow start would otherwise turn into a skip, and the browser tests would not run.
            instance = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=WAIT_MS)
        except Error as exc:
            pytest.skip(f"chromium does not start here: {str(exc).splitlines()[0]}")
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: the pages forbid eval, which Playwright's wait_for_function needs for its own
    # checks; the pages' script is their own file either way (the CSP header is tested apart).
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    try:
        yield tab
    finally:
        context.close()


def log_in(page: Any, server: Running, who: str, shots: Path | None = None) -> None:
    page.goto(f"{server.url}/")
    assert "/login" in page.url  # no session yet: the form
    if shots is not None:
        page.screenshot(path=str(shots / "login.png"))
    page.fill("#token", server.tokens[who])
    page.click("#login")
    page.wait_for_url(f"{server.url}/")


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


@pytest.fixture
def slow_job(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running job that takes minutes: one sample at a time, 0.3 s per model call.

    One per test, cancelled at its end (freeing the server's one slot): a job shared by the
    module made the watching test depend on running before the one that cancels it.
    """
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.3)) as llm:
        spec = arith_spec(tmp_path_factory.mktemp("slow"), llm.base_url, n=400, concurrency=1)
        job = submit(served.server, "alice", spec)
        wait_job(served.server, "alice", job, {"running"})
        yield job
        with_state = wait_job(served.server, "alice", job, {"running", "cancelled", "succeeded", "failed"})
        if with_state["state"] == "running":
            import httpx

            httpx.post(
                f"{served.server.url}/v1/jobs/{job}/cancel",
                headers={"Authorization": f"Bearer {served.server.tokens['alice']}"},
                timeout=60,
            )


def test_log_in_and_see_ones_jobs(served: Served, page: Any, tmp_path: Path) -> None:
    log_in(page, served.server, "alice", tmp_path)
    rows = page.locator("tr[data-job]")
    ids = {rows.nth(i).get_attribute("data-job") for i in range(rows.count())}
    assert served.alice_job in ids and served.agent_job in ids and served.bob_job not in ids
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    shot(page, tmp_path, "jobs")
    page.click(f"a[href='/jobs/{served.alice_job}']")
    page.wait_for_selector("#latency")  # the analysis tables, loaded after the page
    page.wait_for_function("document.getElementById('log').textContent.length > 0")
    assert "95% CI" in page.inner_text("main")
    shot(page, tmp_path, "job")
    page.goto(f"{served.server.url}/jobs/{served.alice_job}/analysis")
    page.wait_for_selector("img.plot")
    page.wait_for_function("Array.from(document.querySelectorAll('img.plot')).every(i => i.complete)")
    shot(page, tmp_path, "analysis")


def test_watch_a_running_jobs_progress_move(served: Served, slow_job: str, page: Any, tmp_path: Path) -> None:
    log_in(page, served.server, "alice")
    page.evaluate("window.notReloaded = true")
    row = f"tr[data-job='{slow_job}'] .done"
    first = int(page.inner_text(row))
    page.wait_for_function(f'Number(document.querySelector("{row}").textContent) > {first}')
    assert page.evaluate("window.notReloaded") is True  # the list moved without a reload
    shot(page, tmp_path, "jobs-live")
    page.goto(f"{served.server.url}/jobs/{slow_job}")
    assert page.inner_text("h1").startswith("arith ")  # the spec's name before any report exists
    done = "#summary .done"
    before = int(page.inner_text(done))
    page.wait_for_function(f"Number(document.querySelector('{done}').textContent) > {before}")
    page.wait_for_function("document.getElementById('log').textContent.includes('PROCTOR_PROGRESS')")
    assert page.inner_text("#summary .eta") != "–"
    page.wait_for_function(  # one source for both figures: the ledger
        "document.querySelector('#summary .accuracy').textContent === document.getElementById('accuracy').textContent"
    )
    shot(page, tmp_path, "job-running")


def test_cancel_a_job(served: Served, slow_job: str, page: Any, tmp_path: Path) -> None:
    log_in(page, served.server, "alice")
    page.goto(f"{served.server.url}/jobs/{slow_job}")
    assert page.inner_text("#state") == "running"
    page.click("#cancel")
    page.wait_for_url(f"{served.server.url}/jobs/{slow_job}")
    page.wait_for_function("document.getElementById('state').textContent === 'cancelled'")
    assert page.locator("#cancel").count() == 0 and page.locator("#resume").count() == 1
    shot(page, tmp_path, "job-cancelled")
    assert wait_job(served.server, "alice", slow_job, {"cancelled"})["state"] == "cancelled"


def test_open_a_samples_trajectory(served: Served, page: Any, tmp_path: Path) -> None:
    log_in(page, served.server, "alice")
    page.goto(f"{served.server.url}/jobs/{served.alice_job}/samples")
    page.select_option("select[name=state]", "error")
    page.click("#apply")
    page.wait_for_function("document.getElementById('matched').textContent === '2'")
    shot(page, tmp_path, "samples")
    page.goto(f"{served.server.url}/jobs/{served.agent_job}/samples")
    page.click("a[href$='/samples/q0']")
    page.wait_for_selector("#trajectory")
    text = page.inner_text("#trajectory")
    assert "→ answer" in text and "tool" in text
    assert page.locator("#turns tbody tr").count() >= 1
    assert page.inner_text("#score") == "1"
    shot(page, tmp_path, "sample")


def test_another_users_job_is_not_found(served: Served, page: Any, tmp_path: Path) -> None:
    log_in(page, served.server, "alice")
    answer = page.goto(f"{served.server.url}/jobs/{served.bob_job}")
    assert answer is not None and answer.status == 404
    assert page.inner_text("h1") == "not found"
    shot(page, tmp_path, "not-found")
