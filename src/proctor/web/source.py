"""Where the dashboard's jobs come from: a server's job store, or run directories on disk.

The pages are the same for both; only this layer differs. A server job's run directory is its
``out/`` (the engine's ``--out``); a local run is a directory given to ``proctor view``, named by
its last path component (made unique), always read-only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from proctor.errors import InputError, PermissionDeniedError
from proctor.server.logs import Watch, follow

LOCAL_LOG_POLL_S = 1.0

ACTIVE = {"queued", "running", "waiting_for_tunnel", "waiting_for_credentials", "in_progress"}


@dataclass
class JobInfo:
    """One job (or local run) as the pages show it."""

    id: str
    name: str
    state: str
    run_dir: Path
    log_path: Path | None
    owner: str | None = None
    kind: str = "proctor"
    batch_id: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    note: str | None = None
    progress: dict[str, Any] | None = None
    """The engine's latest progress line (done, total, accuracy, rate, eta), when the server has one."""
    actions: list[str] = field(default_factory=list)
    """What the viewer may do: ``cancel``, ``resume``, ``delete`` (never in ``proctor view``)."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class JobSource(Protocol):
    """The jobs a viewer may see; ``get`` answers None for unknown and other users' jobs alike."""

    read_only: bool

    def list_jobs(self, viewer: Any) -> list[JobInfo]: ...

    def get(self, viewer: Any, job_id: str) -> JobInfo | None: ...

    def follow_log(self, job: JobInfo, offset: int) -> AsyncIterator[bytes]: ...

    async def act(self, viewer: Any, job: JobInfo, action: str) -> None: ...


def run_name(run_dir: Path, default: str) -> str:
    """The run's name from its ``eval_stats.json`` (the spec's ``name``), else ``default``."""
    try:
        stats = json.loads((run_dir / "eval_stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    name = stats.get("name") if isinstance(stats, dict) else None
    return str(name) if name else default


def _final(run_dir: Path) -> bool | None:
    try:
        stats = json.loads((run_dir / "eval_stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return bool(stats.get("final")) if isinstance(stats, dict) else None


class LocalSource:
    """``proctor view RUN_DIR...``: each directory is a read-only job, visible to whoever is local."""

    read_only = True

    def __init__(self, run_dirs: list[Path]) -> None:
        self.runs: dict[str, Path] = {}
        for run_dir in run_dirs:
            if not run_dir.is_dir():
                raise InputError(f"{run_dir} is not a directory: give run directories made by `proctor run`")
            if not (run_dir / "ledger.sqlite").is_file():
                raise InputError(f"{run_dir} has no ledger.sqlite: is it a run directory made by `proctor run`?")
            base = re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.resolve().name).strip("-") or "run"
            job_id, n = base, 1
            while job_id in self.runs:
                n += 1
                job_id = f"{base}-{n}"
            self.runs[job_id] = run_dir

    def _info(self, job_id: str, run_dir: Path) -> JobInfo:
        final = _final(run_dir)
        # A run's reports say ``final`` once it ended; before that (running, or killed) it is open.
        state = "finished" if final else "in_progress"
        return JobInfo(
            id=job_id,
            name=run_name(run_dir, job_id),
            state=state,
            run_dir=run_dir,
            log_path=run_dir / "run.log",
            kind="local",
        )

    def list_jobs(self, viewer: Any) -> list[JobInfo]:
        return [self._info(job_id, run_dir) for job_id, run_dir in self.runs.items()]

    def get(self, viewer: Any, job_id: str) -> JobInfo | None:
        run_dir = self.runs.get(job_id)
        return None if run_dir is None else self._info(job_id, run_dir)

    async def follow_log(self, job: JobInfo, offset: int) -> AsyncIterator[bytes]:
        """``run.log`` as SSE; nobody tells a viewer that a local file grew, so it looks every second."""
        assert job.log_path is not None
        watch = Watch()

        def finished() -> str | None:
            return "finished" if _final(job.run_dir) else None

        async def tick() -> None:
            while True:
                await asyncio.sleep(LOCAL_LOG_POLL_S)
                watch.notify()

        ticker = asyncio.create_task(tick())
        try:
            async for chunk in follow(job.log_path, offset, watch, finished):
                yield chunk
        finally:
            ticker.cancel()

    async def act(self, viewer: Any, job: JobInfo, action: str) -> None:
        raise PermissionDeniedError("proctor view is read-only")
