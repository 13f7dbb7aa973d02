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
    """done / total / errors / accuracy / ETA: the engine's live line while it runs, else the ledger."""
    counts = summary["counts"]
    live = job.progress if (job.active and job.progress) else None
    accuracy = summary["accuracy"]
    return {
        "done": live.get("done", summary["done"]) if live else summary["done"],
        "total": live.get("total", counts["total"]) if live else counts["total"],
        "errors": counts["error"],
        "accuracy": live.get("accuracy") if live and live.get("accuracy") is not None else accuracy["value"],
        "ci95": accuracy["ci95"],
        "eta_s": live.get("eta") if live else (summary["eta_s"] if job.active else None),
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
