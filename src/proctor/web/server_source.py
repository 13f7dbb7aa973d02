"""The dashboard's jobs on ``proctor serve``: the job store, with the API's own access rule.

A job the viewer may not access is reported as absent, so a page for another user's job answers
404 "not found" exactly like an unknown id: its existence is not revealed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proctor.errors import NotFoundError
from proctor.server import logs
from proctor.server.auth import Principal
from proctor.server.schemas import ResumeRequest
from proctor.server.store import TERMINAL_STATES, JobRow
from proctor.web.source import JobInfo, run_name

if TYPE_CHECKING:
    from proctor.server.quotas import QueueShare
    from proctor.server.scheduler import JobManager
    from proctor.server.store import JobStore


def batch_of(job: JobRow) -> str | None:
    """The job's batch, when the store has a ``batch_id`` column (``proctor submit`` of a matrix)."""
    value = getattr(job, "batch_id", None) or (job.request or {}).get("batch_id")
    return str(value) if value else None


_NAME_LINE = re.compile(r"^name:[ \t]*['\"]?([^'\"#\n]+?)['\"]?[ \t]*(?:#.*)?$", re.MULTILINE)


def spec_name(spec_path: Path) -> str | None:
    """The spec's top-level ``name:`` (the job's ``spec.yaml``), before the engine's reports exist."""
    try:
        with open(spec_path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return None
    match = _NAME_LINE.search(head)
    return match.group(1).strip() if match else None


class ServerSource:
    """Jobs of a running server, as the viewer (a ``Principal``) may see them."""

    read_only = False

    def __init__(self, store: JobStore, manager: JobManager, queue_share: QueueShare) -> None:
        self.store = store
        self.manager = manager
        self.queue_share = queue_share

    def _info(self, principal: Principal, job: JobRow) -> JobInfo:
        job_dir = self.manager.job_dir(job.id)
        actions: list[str] = []
        stopped = job.state in TERMINAL_STATES
        if not stopped:
            actions.append("cancel")
        if stopped or job.state == "waiting_for_credentials":
            actions += ["resume", "delete"]
        default_name = spec_name(job_dir / "spec.yaml") or str((job.request or {}).get("template") or job.kind)
        return JobInfo(
            id=job.id,
            name=run_name(job_dir / "out", default_name),
            state=job.state,
            run_dir=job_dir / "out",
            log_path=job_dir / "job.log",
            owner=job.owner,
            kind=job.kind,
            batch_id=batch_of(job),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            note=job.note,
            progress=job.progress,
            actions=actions if principal.may_access(job) else [],
        )

    def list_jobs(self, viewer: Any) -> list[JobInfo]:
        principal: Principal = viewer
        owner = None if principal.admin else principal.name
        return [self._info(principal, job) for job in self.store.list_jobs(owner=owner)]

    def get(self, viewer: Any, job_id: str) -> JobInfo | None:
        principal: Principal = viewer
        job = self.store.find(job_id)
        if job is None or not principal.may_access(job):
            return None
        return self._info(principal, job)

    def follow_log(self, job: JobInfo, offset: int) -> AsyncIterator[bytes]:
        """The job's log as SSE until it ends: the same stream as the API's ``logs?follow=1``."""
        job_id = job.id

        def finished() -> str | None:
            if job_id in self.manager.running:
                return None
            current = self.store.find(job_id)
            if current is None:
                return "deleted"
            return current.state if current.state in TERMINAL_STATES else None

        assert job.log_path is not None
        return logs.follow(job.log_path, offset, self.manager.watch(job_id), finished)

    async def act(self, viewer: Any, job: JobInfo, action: str) -> None:
        """Cancel, resume or delete, through the same manager calls (and checks) as the API."""
        principal: Principal = viewer
        row = self.store.get(job.id)
        if action == "cancel":
            await self.manager.cancel(principal, row)
        elif action == "resume":
            if row.state in TERMINAL_STATES or row.state == "waiting_for_credentials":
                self.queue_share.check(principal, retry_after=self.manager.retry_after())
            self.manager.resume(principal, row, ResumeRequest())
        elif action == "delete":
            self.manager.delete(principal, row)
        else:
            raise NotFoundError("not found")
