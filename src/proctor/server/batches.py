"""What the server keeps about batches: a job's batch id and the labels a table of many jobs shows.

A batch is nothing more than jobs that share a ``batch_id`` (chosen by the client that submitted
them), so it needs no table of its own and a job of a batch is an ordinary job in every other way.
The labels (the task's name, the subject's model) are taken from the submission once, so listing a
batch never reads a job's files.
"""

from __future__ import annotations

from typing import Any

import yaml

from proctor import _yaml
from proctor.server.schemas import BATCH_ID_PATTERN, BatchView, JobView, SubmitRequest
from proctor.server.store import TERMINAL_STATES

__all__ = ["BATCH_ID_PATTERN", "batch_view", "submission_labels"]


def submission_labels(req: SubmitRequest) -> dict[str, Any]:
    """The job row's ``batch_id``, ``spec_name`` and ``model_name`` for a submission.

    A spec that does not parse gets no labels here: refusing it is ``jobs.prepare``'s work.
    """
    spec: dict[str, Any] = {}
    if req.spec:
        try:
            loaded = _yaml.safe_load(req.spec)
        except (yaml.YAMLError, ValueError):
            loaded = None
        spec = loaded if isinstance(loaded, dict) else {}
    name = spec.get("name") if req.kind == "proctor" else req.template
    subject = req.models.get("subject")
    model = subject.model if subject is not None else None
    if model is None:
        models = spec.get("models")
        named = models.get("subject") if isinstance(models, dict) else None
        model = named.get("model") if isinstance(named, dict) else None
    return {
        "batch_id": req.batch_id,
        "spec_name": _short(name, 128),
        "model_name": _short(model, 256),
    }


def _short(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def batch_view(batch_id: str, jobs: list[JobView]) -> BatchView:
    """The batch's answer: its jobs in submission order and a count per state."""
    states: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    return BatchView(id=batch_id, jobs=jobs, states=states, finished=all(job.state in TERMINAL_STATES for job in jobs))
