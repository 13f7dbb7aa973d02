"""The life of one claimed job on this server: spawn its process, watch it, record how it ended.

The scheduler (``scheduler.JobManager``) decides *which* job runs and claims it in the store; this
module only runs what it is handed. Keeping the two apart means the queue logic never waits on a
process, and a job's end is recorded in one place (``Supervisor.finish``) whatever stopped it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctor import sandbox as sandbox_mod
from proctor.errors import (
    CRASH_EXIT_CODE,
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SAMPLE_ERRORS,
    ProctorError,
)
from proctor.evals.progress import PROGRESS_PREFIX
from proctor.server import cgroups
from proctor.server import jobs as jobmod
from proctor.server.jobs import JobSecrets
from proctor.server.leases import Leases
from proctor.server.logs import LogTail, Watch
from proctor.server.metrics import Metrics
from proctor.server.scrub import scrub_secrets
from proctor.server.settings import ServerSettings
from proctor.server.store import JobRow, JobStore
from proctor.server.uids import UidLease, UidPool

log = logging.getLogger("proctor.server")


@dataclass(slots=True)
class Running:
    """A job holding a slot."""

    job_id: str
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    tail: LogTail | None = None
    stop_reason: str | None = None
    """``cancelled`` / ``timed_out`` / ``shutdown`` once the server decided to stop the job."""
    stop_note: str | None = None
    """The note of a job cancelled through another server of the fleet (who asked, through which)."""
    secrets: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the process is spawned (or failed to): a cancel waits for it, never misses it."""
    slot: int = 0
    """Which slot it holds (of ``settings.slots``)."""
    uid: UidLease | None = None
    """As root, the host-wide uid the job's sandbox runs as; given back once its processes are gone."""


def outcome(kind: str, code: int, last_line: str | None = None) -> tuple[str, str | None]:
    """Map the engine's exit code to a final state and a note for the user.

    ``last_line``: the job log's last line, which for a crash is the error itself. A sandboxed
    job's exit code comes from bwrap, which reports death by signal N as 128 + N.
    """
    if code == EXIT_OK:
        return "succeeded", None
    if code == EXIT_SAMPLE_ERRORS and kind == "lm_eval":
        return "failed", "some requests failed after their retries; metrics withheld (resume with --retry-errors)"
    if code == EXIT_SAMPLE_ERRORS and kind == "proctor":
        return (
            "succeeded",
            "the run finished but some samples errored (see eval_stats.json; resume with --retry-errors)",
        )
    if code == EXIT_BAD_INPUT:
        return "failed", "bad input (see the job log)"
    if code == CRASH_EXIT_CODE and kind in ("proctor", "lm_eval"):
        return "failed", f"the engine crashed: {last_line or 'see the job log'}"
    if code in (EXIT_INTERRUPTED, -2):
        return "failed", "interrupted"
    if code < 0:
        return "failed", f"killed by signal {-code}"
    if 128 < code < 160:
        return "failed", f"killed by signal {code - 128} (a sandbox ceiling, e.g. memory?)"
    return "failed", f"exited with code {code}" + (f": {last_line}" if last_line else "")


def last_log_line(path: Path, *, tail: int = 8192) -> str | None:
    """The last non-empty line of a job log (its end only is read), cut to 300 characters."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - tail))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln and not ln.startswith(PROGRESS_PREFIX)]
    return lines[-1][:300] if lines else None


class Supervisor:
    """Runs the jobs the scheduler claimed, one ``Running`` per slot, until each one ends.

    ``on_end(job_id)`` is called once a job left its slot for good (its secrets may go, and the
    scheduler may start the next job); it is not called for a job stopped by a server shutdown,
    which stays ``running`` in the store for the next start to pick up.
    """

    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        metrics: Metrics,
        leases: Leases,
        *,
        watch: Callable[[str], Watch],
        on_end: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.leases = leases
        self.watch = watch
        self.on_end = on_end
        self.running: dict[str, Running] = {}
        box = settings.sandbox
        self.uids = UidPool(box.uid, box.uids, box.uid_lock_dir)
        self._progress_saved: dict[str, float] = {}
        self.cgroups = cgroups.detect(box.cgroups) if box.enabled else None

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def take_slot(self, job_id: str) -> Running:
        """Reserve the lowest free slot for a job the scheduler just claimed."""
        used = {r.slot for r in self.running.values()}
        run = Running(job_id, slot=min(set(range(len(self.running) + 1)) - used))
        self.running[job_id] = run
        return run

    async def launch(self, job: JobRow, run: Running, secrets: JobSecrets, facade_url: str) -> None:
        """Spawn the claimed job's process in its slot and start watching it."""
        job_dir = self.job_dir(job.id)
        run.secrets = secrets.values()
        try:
            private_urls = {role: facade_url for role in job.private_roles}
            if job.kind in jobmod.ENGINE_KINDS and job.private_roles:
                jobmod.set_private_waits(
                    job_dir, job.private_roles, tunnel_deadline=self.settings.tunnel_request_deadline
                )
            argv = jobmod.build_argv(job.request, job.id, job_dir, self.settings)
            env = jobmod.build_env(job.request, job.id, job_dir, secrets, self.settings, private_urls=private_urls)
            log_path = job_dir / "job.log"
            box, limits, procs = None, None, None
            if self.settings.sandbox.enabled:
                uid = None
                if sandbox_mod.running_as_root():
                    run.uid = await asyncio.to_thread(self.uids.lease)
                    uid = run.uid.uid
                    await asyncio.to_thread(jobmod.give_out_dir, job_dir, uid)
                box = jobmod.job_sandbox(job.request, job_dir, self.settings, uid=uid)
                limits = jobmod.job_limits(job.request, self.settings)
                if self.cgroups is not None:
                    memory_mb = jobmod.job_ceiling(job.request, self.settings, "job_memory_mb")
                    procs = self.cgroups.create(job.id, memory_mb=memory_mb, processes=limits.processes or 0)
            run.proc = await jobmod.spawn(
                argv, cwd=job_dir, env=env, log_path=log_path, sandbox=box, limits=limits, cgroup_procs=procs
            )
        except (OSError, ProctorError) as exc:
            await self.finish(job, run, "failed", None, f"could not start: {exc}")
            run.started.set()
            return
        proc_start = create_time(run.proc.pid)
        self.store.update(job.id, pid=run.proc.pid, proc_start=proc_start)
        log.info("job %s started (pid %s, attempt %s)", job.id, run.proc.pid, job.attempts + 1)
        run.tail = LogTail(
            log_path,
            self.watch(job.id),
            interval=self.settings.log_poll_interval,
            on_progress=functools.partial(self._progress, job.id),
        )
        run.tail.start()
        self.watch(job.id).notify()
        run.task = asyncio.create_task(self._supervise(job, run, job.timeout or self.settings.job_timeout))
        run.started.set()

    async def stop_all(self) -> None:
        """Server shutdown: stop every job's process, leave the jobs ``running`` in the store."""
        for run in list(self.running.values()):
            run.stop_reason = "shutdown"
            if run.proc is not None:
                await jobmod.kill_tree(run.proc.pid, grace=self.settings.kill_grace, proc=run.proc)
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.cgroups is not None:
            self.cgroups.close()

    async def fence(self, job_ids: set[str]) -> None:
        """Stop the jobs this server may no longer run (its lease on them lapsed or was taken):
        another server may start them, and a job must never run twice at once."""
        for job_id in job_ids:
            run = self.running.get(job_id)
            if run is None or run.stop_reason is not None:
                continue
            log.warning("job %s: this server lost its lease; stopping its process", job_id)
            run.stop_reason = "lease_lost"
            await run.started.wait()
            if run.proc is not None:
                grace = min(self.settings.kill_grace, self.leases.seconds / 4)
                await jobmod.kill_tree(run.proc.pid, grace=grace, proc=run.proc)

    async def _leave(self, run: Running) -> None:
        """The job's processes are gone: free its slot, its cgroups (and any straggler in them) and its uid."""
        self.running.pop(run.job_id, None)
        if self.cgroups is not None:  # removal kills stragglers and retries: off the event loop
            await asyncio.to_thread(self.cgroups.remove, run.job_id)
        if run.uid is not None:
            run.uid.release()
            run.uid = None

    def _progress(self, job_id: str, progress: dict[str, Any]) -> None:
        # The engine prints ~1 line/s; store at most one per second per job, and always the last.
        now = time.monotonic()
        done = progress.get("done") is not None and progress.get("done") == progress.get("total")
        if now - self._progress_saved.get(job_id, 0.0) >= 1.0 or done:
            self._progress_saved[job_id] = now
            self.store.update(job_id, progress=progress)

    async def _supervise(self, job: JobRow, run: Running, timeout: float) -> None:
        assert run.proc is not None
        code: int | None
        try:
            code = await asyncio.wait_for(asyncio.shield(run.proc.wait()), timeout)
        except TimeoutError:
            if run.stop_reason is None:
                run.stop_reason = "timed_out"
            await jobmod.kill_tree(run.proc.pid, grace=self.settings.kill_grace, proc=run.proc)
            code = run.proc.returncode
        if run.stop_reason in ("shutdown", "lease_lost"):
            if run.tail is not None:
                await run.tail.stop()
            await self._leave(run)
            if run.stop_reason == "lease_lost":
                self.on_end(job.id)  # the job is another server's now: its secrets go, the slot is free
            return
        if run.stop_reason in ("cancelled", "timed_out"):
            # The leader may have exited on SIGTERM before its children: make sure none is left.
            await jobmod.kill_tree(run.proc.pid, grace=0, proc=run.proc)
            await jobmod.run_cleanup_hooks(job.id, self.job_dir(job.id), self.settings)
            note = (
                (run.stop_note or "cancelled by its owner")
                if run.stop_reason == "cancelled"
                else f"timed out after {timeout:g} s"
            )
            current = self.store.find(job.id)
            if run.stop_reason == "timed_out" and current is not None and current.state == "waiting_for_tunnel":
                note += " while waiting for its tunnel (no `proctor tunnel` client was connected)"
            await self.finish(job, run, run.stop_reason, code, note)
            return
        # Even a job that ended by itself may have left children in its group.
        if jobmod.group_members(run.proc.pid):
            await jobmod.kill_tree(run.proc.pid, grace=0, proc=run.proc)
        state, end_note = outcome(
            job.kind, code if code is not None else -9, last_log_line(self.job_dir(job.id) / "job.log")
        )
        if state == "failed" and self.cgroups is not None and self.cgroups.oom_killed(job.id):
            ceiling = jobmod.job_ceiling(job.request, self.settings, "job_memory_mb")
            end_note = f"killed by the memory ceiling ({ceiling} MiB)"
        await self.finish(job, run, state, code, end_note)

    async def finish(self, job: JobRow, run: Running, state: str, code: int | None, note: str | None) -> None:
        if run.tail is not None:
            await run.tail.stop()
        if run.secrets:
            await asyncio.to_thread(scrub_secrets, self.job_dir(job.id), run.secrets)
        if self.leases.record_end(job.id, state=state, exit_code=code, note=note, finished_at=time.time(), pid=None):
            self.metrics.outcomes[state] += 1
        else:
            log.warning("job %s ended here after another server took it over: its end is not recorded", job.id)
        await self._leave(run)
        self.on_end(job.id)
        log.info("job %s %s (exit code %s)", job.id, state, code)
        self.watch(job.id).notify()


def create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
