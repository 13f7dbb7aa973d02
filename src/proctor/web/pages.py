"""The data behind each page, as plain JSON-able dicts: the HTML templates and the ``.json`` twins
render the very same dict, so the two can never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from proctor.web.rundata import RunData, SampleFilter
from proctor.web.source import JobInfo

BATCHLESS = ""


def _progress(job: JobInfo, summary: dict[str, Any]) -> dict[str, Any]:
    """done / total / errors / accuracy from the ledger (what is recorded), so the list, the job
    page and the samples table agree; the ETA from the engine's live line while it runs (its rate
    is the engine's own), else from the ledger's last minute."""
    counts = summary["counts"]
    live = job.progress if (job.active and job.progress) else None
    total = counts["total"] or (live.get("total", 0) if live else 0)
    eta = live.get("eta") if live else None
    return {
        "done": summary["done"],
        "total": total,
        "errors": counts["error"],
        "accuracy": summary["accuracy"]["value"],
        "ci95": summary["accuracy"]["ci95"],
        "eta_s": eta if eta is not None or not job.active else summary["eta_s"],
    }


def job_row(job: JobInfo, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of the jobs list (``summary``: the run's ledger figures, when already read)."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "owner": job.owner,
        "kind": job.kind,
        "batch_id": job.batch_id,
        "created_at": job.created_at,
        "progress": _progress(job, summary if summary is not None else RunData(job.run_dir).summary()),
    }


def jobs_page(jobs: list[JobInfo]) -> dict[str, Any]:
    """Every visible job; a batch's jobs side by side (one group per batch, in order of appearance)."""
    rows = [job_row(j) for j in jobs]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["batch_id"] or BATCHLESS, []).append(row)
    return {
        "ok": True,
        "jobs": rows,
        "batches": [{"batch_id": key or None, "jobs": members} for key, members in groups.items()],
    }


def job_page(job: JobInfo) -> dict[str, Any]:
    summary = RunData(job.run_dir).summary()
    return {
        "ok": True,
        "job": {
            **job_row(job, summary),
            "note": job.note,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "actions": job.actions,
        },
        "counts": summary["counts"],
        "accuracy": summary["accuracy"],
        "by_category": summary["by_category"],
        "errors_by_class": summary["errors_by_class"],
        "has_events": (job.run_dir / "events.jsonl").is_file(),
        "updated": time.time(),
    }


def samples_page(job: JobInfo, flt: SampleFilter, page: int) -> dict[str, Any]:
    data = RunData(job.run_dir)
    return {
        "ok": True,
        "job": {"id": job.id, "name": job.name, "state": job.state},
        "filters": flt.as_dict(),
        "facets": data.facets(),
        **data.samples(flt, page=page),
    }


def sample_page(job: JobInfo, sample: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "job": {"id": job.id, "name": job.name, "state": job.state}, "sample": sample}


def analysis_page(job: JobInfo, result: dict[str, Any] | None, problem: str | None) -> dict[str, Any]:
    return {"ok": True, "job": {"id": job.id, "name": job.name}, "analysis": result, "problem": problem}


def plot_names(plot_dir: Path) -> list[str]:
    return sorted(p.name for p in plot_dir.glob("*.png"))
