"""``proctor view RUN_DIR...`` as a process: every page and its ``.json`` twin over real runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import stop_process
from web_helpers import FAILING, Runs

from proctor.web.render import Templates


@pytest.fixture(scope="module")
def view(runs: Runs) -> Iterator[httpx.Client]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "view", str(runs.arith), str(runs.agent), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: printed once listening, or EOF when it exits
        assert line.startswith("proctor view: http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[2].removesuffix("/")
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def _expected_accuracy() -> tuple[int, int]:
    scored = [i for i in range(30) if f"q{i}" not in FAILING]
    return sum(1 for i in scored if i % 3), len(scored)


def test_jobs_list_and_its_twin(view: httpx.Client) -> None:
    data = view.get("/jobs.json").json()
    assert [(j["id"], j["name"], j["state"]) for j in data["jobs"]] == [
        ("arith", "arith", "finished"),
        ("agent", "agentic", "finished"),
    ]
    arith = data["jobs"][0]
    assert arith["progress"]["done"] == arith["progress"]["total"] == 30
    correct, n = _expected_accuracy()
    assert arith["progress"]["accuracy"] == round(correct / n, 4)
    page = view.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'href="/jobs/arith"' in page.text and "read-only" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_job_page_matches_the_reports(view: httpx.Client, runs: Runs) -> None:
    stats = json.loads((runs.arith / "eval_stats.json").read_text())
    data = view.get("/jobs/arith.json").json()
    assert data["accuracy"]["value"] == stats["accuracy"]["value"]
    assert data["accuracy"]["ci95"] == list(stats["accuracy"]["ci95"])
    assert data["accuracy"]["denominator"] == stats["accuracy"]["denominator"] == 28
    assert {k: v["value"] for k, v in data["by_category"].items()} == {
        k: v["value"] for k, v in stats["by_category"].items()
    }
    assert data["errors_by_class"] == stats["errors"]["by_class"]
    assert sum(data["errors_by_class"].values()) == len(FAILING)
    assert data["job"]["actions"] == []  # read-only
    page = view.get("/jobs/arith").text
    assert "95% CI" in page and 'id="log"' in page and "Cancel" not in page


def test_samples_are_paged_and_filtered_in_sql(view: httpx.Client) -> None:
    everything = view.get("/jobs/arith/samples.json").json()
    assert everything["matched"] == 30 and len(everything["samples"]) == 30 and everything["pages"] == 1
    errors = view.get("/jobs/arith/samples.json", params={"state": "error"}).json()
    assert sorted(s["id"] for s in errors["samples"]) == sorted(FAILING)
    klass = errors["samples"][0]["error_class"]
    assert view.get("/jobs/arith/samples.json", params={"error_class": klass}).json()["matched"] == len(FAILING)
    wrong = view.get("/jobs/arith/samples.json", params={"score": "wrong"}).json()
    assert {s["id"] for s in wrong["samples"]} == {f"q{i}" for i in range(0, 30, 3)}
    even = view.get("/jobs/arith/samples.json", params={"category": "even"}).json()
    assert even["matched"] == 15 and {s["category"] for s in even["samples"]} == {"even"}
    found = view.get("/jobs/arith/samples.json", params={"q": "What is 11 + 23?"}).json()
    assert [s["id"] for s in found["samples"]] == ["q10"]
    assert view.get("/jobs/arith/samples.json", params={"q": "%"}).json()["matched"] == 0  # a literal %, not LIKE
    second = view.get("/jobs/arith/samples.json", params={"page": 2}).json()
    assert second["samples"] == [] and second["page"] == 2
    html = view.get("/jobs/arith/samples", params={"state": "error"}).text
    assert all(f">{sid}<" in html for sid in FAILING)


def test_the_pager_keeps_the_filters(view: httpx.Client) -> None:
    data = view.get("/jobs/arith/samples.json", params={"q": "is 1 & 2", "state": "scored"}).json()
    data.update(page=1, pages=3)  # as if more than one page matched
    html = Templates().render("samples.html", data=data, viewer=None, read_only=True, login_needed=False, csrf=None)
    link = re.search(r'href="([^"]*)" id="next"', html)
    assert link and link.group(1) == "?state=scored&amp;q=is+1+%26+2&amp;page=2"


def test_a_samples_trajectory(view: httpx.Client) -> None:
    plain = view.get("/jobs/arith/samples/q1.json").json()["sample"]
    assert plain["score"] == 1.0 and plain["state"] == "scored"
    assert [m["role"] for m in plain["messages"]][-1] == "assistant"
    agent = view.get("/jobs/agent/samples/q0.json").json()["sample"]
    roles = [m["role"] for m in agent["messages"]]
    assert "tool" in roles
    call = next(m for m in agent["messages"] if m.get("tool_calls"))
    assert call["tool_calls"][0]["function"]["name"] == "answer"
    assert agent["turns"] and agent["turns"][0]["duration"] >= 0
    assert agent["score"] == 1.0  # its target is 42, the scripted answer
    html = view.get("/jobs/agent/samples/q0").text
    assert "→ answer" in html and "Timing per turn" in html and "role-tool" in html
    assert view.get("/jobs/agent/samples/nope.json").status_code == 404


def test_analysis_and_plots(view: httpx.Client) -> None:
    data = view.get("/jobs/arith/analysis.json").json()
    groups = data["analysis"]["groups"]
    assert any(g["section"] == "model" and g["name"] == "subject" for g in groups)
    fragment = view.get("/jobs/arith/analysis", params={"fragment": 1}).text
    assert 'id="latency"' in fragment and "<html" not in fragment
    plots = view.get("/jobs/arith/plots.json").json()["plots"]
    assert plots and all(p.endswith(".png") for p in plots)
    png = view.get(plots[0])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert view.get("/jobs/arith/plots/..%2Fledger.sqlite").status_code == 404


def test_log_stream_ends_for_a_finished_run(view: httpx.Client) -> None:
    with view.stream("GET", "/jobs/arith/log") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = b"".join(answer.iter_bytes())  # ends by itself: the run is final
    assert b"event: end" in body


def test_view_is_read_only_and_unknown_ids_are_not_found(view: httpx.Client, runs: Runs) -> None:
    before = (runs.arith / "ledger.sqlite").read_bytes()
    answer = view.post("/jobs/arith/delete", data={"csrf": "x"})
    assert answer.status_code == 403
    assert (runs.arith / "ledger.sqlite").read_bytes() == before
    missing = view.get("/jobs/nothing.json")
    assert missing.status_code == 404 and missing.json() == {"ok": False, "error": "not found", "status": 404}
    assert view.get("/jobs/nothing").status_code == 404


def test_view_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "view", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "has no ledger.sqlite" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2
