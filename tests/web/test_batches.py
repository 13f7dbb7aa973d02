"""The jobs list puts a batch's jobs together, and works the same without any batch field."""

from __future__ import annotations

from pathlib import Path

from web_helpers import Runs

from proctor.web.pages import jobs_page
from proctor.web.render import Templates
from proctor.web.source import JobInfo


def _job(job_id: str, run_dir: Path, batch: str | None) -> JobInfo:
    return JobInfo(id=job_id, name=job_id, state="succeeded", run_dir=run_dir, log_path=None, batch_id=batch)


def test_a_batchs_jobs_are_listed_together(runs: Runs) -> None:
    jobs = [_job("a", runs.arith, "b1"), _job("b", runs.agent, None), _job("c", runs.agent, "b1")]
    data = jobs_page(jobs)
    assert [(g["batch_id"], [j["id"] for j in g["jobs"]]) for g in data["batches"]] == [
        ("b1", ["a", "c"]),
        (None, ["b"]),
    ]
    assert [j["progress"]["total"] for j in data["jobs"]] == [30, 3, 3]
    html = Templates().render("jobs.html", data=data, viewer=None, read_only=True, login_needed=False, csrf=None)
    assert "batch b1 · 2 jobs" in html
    assert html.index('data-job="a"') < html.index('data-job="c"') < html.index('data-job="b"')


def test_without_batches_there_is_one_group_and_no_heading(runs: Runs) -> None:
    data = jobs_page([_job("a", runs.arith, None), _job("b", runs.agent, None)])
    assert [g["batch_id"] for g in data["batches"]] == [None]
    html = Templates().render("jobs.html", data=data, viewer=None, read_only=True, login_needed=False, csrf=None)
    assert "batch " not in html
