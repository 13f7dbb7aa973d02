"""The jobs list: a batch's jobs together (and the same without any batch field); job names."""

from __future__ import annotations

from pathlib import Path

from web_helpers import Runs

from proctor.web.pages import jobs_page
from proctor.web.render import Templates
from proctor.web.server_source import spec_name
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


def test_a_jobs_name_before_its_reports_exist(tmp_path: Path) -> None:
    def name(text: str) -> str | None:
        (tmp_path / "spec.yaml").write_text(text, encoding="utf-8")
        return spec_name(tmp_path / "spec.yaml")

    assert name("name: arith\nsolver: generate\n") == "arith"
    assert name("solver: generate\nname: 'hle full'  # the whole set\n") == "hle full"
    assert name("dataset:\n  name: nested\n") is None
    assert spec_name(tmp_path / "missing.yaml") is None
