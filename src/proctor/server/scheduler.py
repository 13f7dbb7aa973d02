"""Slots, the persistent queue, and each job's way from submission to a claimed slot.

What happens once a job holds a slot (spawning, supervision, recording its end) is
``supervisor.py``'s; scrubbing a finished job's secrets is ``scrub.py``'s.

The queue is the ``jobs`` table itself (state ``queued``, ordered by priority then arrival), so a
restart loses nothing. One scheduler task sleeps on an ``asyncio.Event``; a submission, a resume or
a job ending sets it, so a freed slot starts the next job at once, with no polling interval.

Secrets (public-mode API keys, the private-mode internal token) live only in ``self.secrets``, in
memory; a restart drops them and the jobs that needed them wait in ``waiting_for_credentials``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import secrets as secrets_mod
import shutil
import time
from pathlib import Path
from typing import Any

from proctor import sandbox as sandbox_mod
from proctor.errors import ConflictError, InputError, PermissionDeniedError, QueueFullError
from proctor.server import jobs as jobmod
from proctor.server.auth import Principal, check_access
from proctor.server.batches import submission_labels
from proctor.server.jobs import JobSecrets, key_env_name
from proctor.server.leases import NO_STOP_REQUEST, STOP_POLL, Instance, Leases
from proctor.server.logs import Watch
from proctor.server.metrics import Metrics
from proctor.server.quotas import Quota
from proctor.server.schemas import JOB_ID_RE, JobView, ResumeRequest, SubmitRequest
from proctor.server.settings import ServerSettings
from proctor.server.store import ACTIVE_STATES, TERMINAL_STATES, JobRow, JobStore
from proctor.server.supervisor import Running, Supervisor, outcome
from proctor.server.tunnel.hub import TunnelHub
from proctor.tunnel.protocol import facade_base_url

log = logging.getLogger("proctor.server")

SHARED_QUEUE_POLL = 1.0
"""Seconds between looks at a shared store's queue (see ``JobStore.shared``) when nothing woke us."""
REMOTE_FOLLOW_POLL = 0.25
"""Seconds between looks at the log of a job another server of the fleet may be running."""
STOP_WAIT_POLL = 0.2
"""Seconds between looks at a job another server was asked to stop, while the cancel waits."""
STOP_WAIT = 10.0
"""Seconds, beyond ``kill_grace``, that a cancel waits for another server to stop its job: that
server looks for stop requests every ``leases.STOP_POLL`` s. Not tied to the lease, which may be
long: an HTTP request must not hang."""


def new_job_id() -> str:
    """128 random bits as 26 lower-case base32 characters.

    Not ``token_urlsafe``: one id in 64 would start with ``-``, which every command line then
    reads as an option (``proctor status -x5...``); base32 is also safe in any shell or file name.
    """
    return base64.b32encode(secrets_mod.token_bytes(16)).decode("ascii").rstrip("=").lower()


class JobManager:
    """Owns the slots, the queue and every running job of one server process."""

    def __init__(self, settings: ServerSettings, store: JobStore, metrics: Metrics, quota: Quota) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.quota = quota
        self.hub = TunnelHub(
            on_tunnel_state=self.on_tunnel_state,
            grace=settings.tunnel_grace,
            request_deadline=settings.tunnel_request_deadline,
            max_inflight=settings.tunnel_max_inflight,
        )
        """Private jobs' tunnels. Built here, not handed in: it reports each tunnel's state back to
        this manager (``on_tunnel_state``), and every server serves private mode. ``app.py`` mounts
        its routes and gives it the authenticator."""
        self.port = settings.port
        self.secrets: dict[str, JobSecrets] = {}
        self.watches: dict[str, Watch] = {}
        self.wake = asyncio.Event()
        self.instance = Instance.current()
        self.leases = Leases(store, self.instance, settings.lease_seconds)
        self.supervisor = Supervisor(settings, store, metrics, self.leases, watch=self.watch, on_end=self._ended)
        self.running: dict[str, Running] = self.supervisor.running
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._stopping = False
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)

    # lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings.sandbox.enabled:
            await asyncio.to_thread(sandbox_mod.require)  # never run a job unsandboxed by accident
        await self.recover()
        self._loop_task = asyncio.create_task(self._schedule())
        self._lease_task = asyncio.create_task(self._keep_leases())
        self._stop_task = asyncio.create_task(self._watch_stop_requests())
        self.wake.set()

    async def stop(self) -> None:
        """Stop the jobs but keep them ``running`` in the store: the next start re-queues them."""
        self._stopping = True
        for task in (self._loop_task, self._lease_task, self._stop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.supervisor.stop_all()
        try:
            self.leases.release()
        except Exception as exc:  # noqa: BLE001 - the store may be gone; the leases then lapse by themselves
            log.warning("could not release this server's leases: %s", exc)

    async def recover(self) -> None:
        """After a restart: kill orphans of the old server, re-queue their jobs ahead of newer ones.

        On a shared store only the jobs no live instance owns (see ``leases.py``) are touched.
        """
        now = time.time()
        for job in self.store.list_jobs(states=set(ACTIVE_STATES) | {"queued"}):
            if self.store.shared and not self.leases.orphaned(job, now):
                continue
            if (
                job.state in ACTIVE_STATES
                and self.instance.same_host(job.instance)
                and jobmod.is_same_process(job.pid, job.proc_start)
            ):
                assert job.pid is not None
                log.info("job %s: stopping the process the previous server left running", job.id)
                await jobmod.kill_tree(job.pid, grace=self.settings.kill_grace)
            if job.state in ACTIVE_STATES and job.stop_requested_at is not None:
                # Someone asked to stop it before its server died: end it, never run it again.
                await self._take_cancelled(job, f"{job.stop_requested_by}; its server stopped before it stopped it")
            elif job.private_roles and not job.key_envs and job.tunnel_digest:
                # Nothing was lost but the internal token, which is new at each start anyway: the
                # submitter's agent reconnects with the secret it holds, and the job runs again.
                values: dict[str, Any] = {"pid": None, **self.leases.owned()}
                if job.state in ACTIVE_STATES:
                    values.update(
                        state="queued",
                        priority=0,
                        note="re-queued after a server restart; its tunnel client reconnects by itself",
                    )
                if self._take(job, **values):
                    internal_token = self.hub.restore_job(
                        job.id, owner=job.owner, roles=job.private_roles, secret_digest=job.tunnel_digest
                    )
                    self._set_internal_token(job.id, job.private_roles, internal_token)
            elif job.key_envs or job.private_roles:
                self._take(
                    job,
                    state="waiting_for_credentials",
                    pid=None,
                    note="the server restarted and kept no keys: re-supply them with `proctor resume " + job.id + "`",
                    **self.leases.unowned(),
                )
            elif job.state in ACTIVE_STATES:
                self._take(
                    job,
                    state="queued",
                    priority=0,
                    pid=None,
                    note="re-queued after a server restart",
                    **self.leases.unowned(),
                )

    def _take(self, job: JobRow, **values: Any) -> bool:
        """Change a job this server found orphaned; on a shared store, only if no other server
        changed it first (compare-and-set on its owner and lease)."""
        if self.store.shared:
            return self.leases.take(job, **values)
        self.store.update(job.id, **values)
        return True

    # queries --------------------------------------------------------------------------------------

    def watch(self, job_id: str) -> Watch:
        return self.watches.setdefault(job_id, Watch())

    def follow_poll(self, job_id: str) -> float | None:
        """How often a log follower looks at the file by itself: on a shared store the job may run
        on another server, whose tail task wakes nobody here; else never (our tail wakes it)."""
        return max(self.settings.log_poll_interval, REMOTE_FOLLOW_POLL) if self.store.shared else None

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def view(self, job: JobRow, *, queue: list[str] | None = None) -> JobView:
        position = None
        if job.state == "queued":
            ids = queue if queue is not None else [j.id for j in self.store.queued()]
            position = ids.index(job.id) + 1 if job.id in ids else None
        waiting_for = job.key_envs if job.state == "waiting_for_credentials" else []
        return JobView(
            id=job.id,
            owner=job.owner,
            kind=job.kind,
            state=job.state,
            created_at=job.created_at,
            queued_at=job.queued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            exit_code=job.exit_code,
            note=job.note,
            attempts=job.attempts,
            queue_position=position,
            progress=job.progress,
            private_roles=job.private_roles,
            waiting_for=waiting_for,
            batch_id=job.batch_id,
            spec=job.spec_name,
            model=job.model_name,
        )

    def retry_after(self) -> int:
        durations = self.store.recent_durations()
        if not durations:
            return int(self.settings.retry_after_default)
        mean = sum(durations) / len(durations)
        return max(1, math.ceil(mean / self.settings.slots))

    # commands -------------------------------------------------------------------------------------

    def submit(self, principal: Principal, req: SubmitRequest) -> tuple[JobRow, list[str], str | None]:
        """Validate, enqueue, and return (job, warnings, tunnel secret for private mode)."""
        warnings: list[str] = []
        existing: JobRow | None = None
        if req.job_id is not None:
            if not JOB_ID_RE.match(req.job_id):
                raise InputError("job_id must be 8-64 characters of A-Z a-z 0-9 _ -")
            existing = self.store.find(req.job_id)
            if existing is not None:
                check_access(principal, existing)
                if existing.state not in TERMINAL_STATES and existing.state != "waiting_for_credentials":
                    raise ConflictError(f"job {existing.id} is {existing.state}; it cannot be resubmitted now")
                warnings.append(f"job {existing.id} exists: resuming it in its directory (finished samples are kept)")
        self.quota.check(principal)
        if self.store.count({"queued"}) >= self.settings.queue_max:
            retry = self.retry_after()
            raise QueueFullError(
                f"the queue is full ({self.settings.queue_max} jobs); try again in {retry} s", retry_after=retry
            )
        job_id = existing.id if existing else (req.job_id or new_job_id())
        job_dir = self.job_dir(job_id)
        created = not job_dir.exists()
        try:
            prepared = jobmod.prepare(req, job_dir, self.settings)
        except BaseException:
            if created:
                shutil.rmtree(job_dir, ignore_errors=True)
            raise
        timeout = min(
            t
            for t in (
                req.timeout,
                self.settings.templates[req.template].timeout if req.kind == "command" and req.template else None,
                self.settings.job_timeout,
            )
            if t
        )
        now = time.time()
        values: dict[str, Any] = dict(
            owner=existing.owner if existing else principal.name,
            kind=prepared.request["kind"],
            state="queued",
            priority=1,
            queued_at=now,
            finished_at=None,
            exit_code=None,
            note=None,
            timeout=timeout,
            request=prepared.request,
            key_envs=prepared.key_envs,
            private_roles=prepared.private_roles,
            pid=None,
            proc_start=None,
            progress=None,
            # A job whose secrets live in this server's memory can run only here: it is ours while queued.
            **(self.leases.owned(now) if prepared.key_envs or prepared.private_roles else self.leases.unowned()),
        )
        values.update(submission_labels(req))  # batch id and table labels (server/batches.py)
        if existing:
            self.store.update(job_id, **values)
        else:
            self.store.insert_job(JobRow(id=job_id, seq=0, created_at=now, **values))
        self.quota.record(principal, now=now)
        self.metrics.submitted += 1
        self.secrets[job_id] = prepared.secrets
        tunnel_secret = self._register_tunnel(job_id, principal.name, prepared.private_roles)
        self.watch(job_id).notify()
        self.wake.set()
        return self.store.get(job_id), warnings, tunnel_secret

    def _register_tunnel(self, job_id: str, owner: str, roles: list[str]) -> str | None:
        if not roles:
            return None
        tunnel_secret, internal_token = self.hub.register_job(job_id, owner=owner, roles=list(roles))
        self._set_internal_token(job_id, roles, internal_token)
        self.store.update(job_id, tunnel_digest=self.hub.secret_digest(job_id))
        return str(tunnel_secret)

    def _set_internal_token(self, job_id: str, roles: list[str], internal_token: str) -> None:
        """The private roles' API key in the job's environment: the hub's token for this job."""
        for role in roles:
            self.secrets.setdefault(job_id, JobSecrets()).env[key_env_name(role)] = internal_token

    def resume(self, principal: Principal, job: JobRow, req: ResumeRequest) -> tuple[JobRow, str | None]:
        check_access(principal, job)
        live = job.state not in TERMINAL_STATES and job.state != "waiting_for_credentials"
        if live and job.private_roles and self.hub.secret_digest(job.id) is not None:
            # A live private job whose submitter lost the tunnel (e.g. its agent stopped during a
            # server restart): a new secret lets a new agent in; the job itself goes on as it is.
            tunnel_secret: str | None = self.hub.new_secret(job.id)
            self.store.update(job.id, tunnel_digest=self.hub.secret_digest(job.id))
            return self.store.get(job.id), tunnel_secret
        if live:
            raise ConflictError(f"job {job.id} is {job.state}; only a stopped job can be resumed")
        supplied = jobmod.collect_keys(req.models)
        missing = [name for name in job.key_envs if name not in supplied.env]
        if missing:
            roles = ", ".join(name.removeprefix("PROCTOR_API_KEY_").lower() for name in missing)
            raise InputError(
                f"job {job.id} needs the API key of role(s) {roles} again",
                hint="pass it with --api-key-env NAME (or --api-key)",
            )
        self.secrets[job.id] = JobSecrets(env={k: v for k, v in supplied.env.items() if k in job.key_envs})
        request = dict(job.request)
        request["retry_errors"] = req.retry_errors
        self.store.update(
            job.id,
            state="queued",
            priority=0,
            queued_at=time.time(),
            note="resumed",
            request=request,
            **(self.leases.owned() if job.key_envs or job.private_roles else self.leases.unowned()),
        )
        if job.private_roles:
            with contextlib.suppress(Exception):
                self.hub.unregister_job(job.id)
        tunnel_secret = self._register_tunnel(job.id, job.owner, job.private_roles)
        self.watch(job.id).notify()
        self.wake.set()
        return self.store.get(job.id), tunnel_secret

    async def cancel(self, principal: Principal, job: JobRow) -> JobRow:
        """Kill the job's whole process group (or drop it from the queue); returns once it is gone.

        A job another server of the fleet runs is stopped by that server: this one records a stop
        request in the store and waits (at most ``stop_wait`` seconds) for the job to end. A job
        whose server died is cancelled here at once, its process killed if it is on this host.
        """
        check_access(principal, job)
        if job.state in TERMINAL_STATES:
            raise ConflictError(f"job {job.id} is already {job.state}")
        run = self.running.get(job.id)
        if run is not None:
            await self._stop_here(run)
            return self.store.get(job.id)
        if self._cancel_queued(job.id):
            return self.store.get(job.id)
        return await self._stop_elsewhere(job.id, f"{principal.name} through server instance {self.instance.id}")

    @property
    def stop_wait(self) -> float:
        """How long a cancel waits for another server to stop the job (see ``STOP_WAIT``)."""
        return self.settings.kill_grace + STOP_WAIT

    async def _stop_here(self, run: Running, note: str | None = None) -> None:
        """Stop a job this server runs: SIGTERM its group, SIGKILL after ``kill_grace``, record it."""
        if run.stop_reason != "cancelled":  # the first cancel's note stands
            run.stop_note = note
        run.stop_reason = "cancelled"
        await run.started.wait()
        if run.proc is not None:
            await jobmod.kill_tree(run.proc.pid, grace=self.settings.kill_grace, proc=run.proc)
        if run.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(run.task)

    def _cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started: one store transition, wherever it was submitted."""
        if not self.store.transition(
            job_id,
            {"queued", "waiting_for_credentials"},
            state="cancelled",
            finished_at=time.time(),
            note="cancelled before it started",
        ):
            return False
        self.metrics.outcomes["cancelled"] += 1
        self._forget(job_id)
        self.watch(job_id).notify()
        return True

    async def _stop_elsewhere(self, job_id: str, by: str) -> JobRow:
        """Stop a job this server does not run; return it once it ended, or as it is after ``stop_wait``.

        Each look re-reads the row, since the job moves on meanwhile: it may end by itself, be
        queued again by a takeover (then it is cancelled here), or lose its owner (then this
        server takes it, as cancelled).
        """
        deadline = time.monotonic() + self.stop_wait
        requested = False
        while True:
            job = self.store.get(job_id)
            if job.state in TERMINAL_STATES:
                return job
            run = self.running.get(job_id)
            if run is not None:  # claimed here meanwhile
                await self._stop_here(run, f"cancelled by {by}")
                return self.store.get(job_id)
            if self._cancel_queued(job_id):
                return self.store.get(job_id)
            if job.state in ACTIVE_STATES:
                if self.leases.orphaned(job, time.time()):
                    if await self._cancel_orphan(job, by):
                        return self.store.get(job_id)
                elif not requested:
                    requested = self.leases.request_stop(job_id, by)
                    if requested:
                        log.info("job %s: asked the server instance %s to stop it", job_id, job.instance)
            if time.monotonic() >= deadline:
                return self.store.get(job_id)
            await asyncio.sleep(STOP_WAIT_POLL)

    async def _cancel_orphan(self, job: JobRow, by: str) -> bool:
        """Cancel a running job whose server died (its lease lapsed, or its pid on this host is
        gone), as a takeover would, but ending it instead of queueing it again."""
        if self.instance.same_host(job.instance) and jobmod.is_same_process(job.pid, job.proc_start):
            assert job.pid is not None
            await jobmod.kill_tree(job.pid, grace=self.settings.kill_grace)
        return await self._take_cancelled(
            job, f"{by}; the server instance {job.instance or '?'} that ran it had stopped"
        )

    async def _take_cancelled(self, job: JobRow, by: str) -> bool:
        """Take a dead server's job (compare-and-set, see ``_take``) as ``cancelled``; False if another
        server changed it first."""
        values = dict(state="cancelled", finished_at=time.time(), pid=None, note=f"cancelled by {by}")
        if not self._take(job, **values, **self.leases.unowned()):
            return False
        await self._cancelled_by_takeover(job.id)
        return True

    async def _cancelled_by_takeover(self, job_id: str) -> None:
        """What a local cancel does after the kill, for a job another server ran: hooks, counts."""
        await jobmod.run_cleanup_hooks(job_id, self.job_dir(job_id), self.settings)
        self.metrics.outcomes["cancelled"] += 1
        self._forget(job_id)
        self.watch(job_id).notify()

    async def _watch_stop_requests(self) -> None:
        """Stop the jobs this server runs that someone cancelled through another server."""
        while True:
            await asyncio.sleep(STOP_POLL)
            ids = [job_id for job_id, run in self.running.items() if run.stop_reason is None]
            try:
                requests = self.leases.stop_requests(ids)
            except Exception as exc:  # noqa: BLE001 - a store outage must not end the loop
                log.warning("could not look for stop requests: %s", exc)
                continue
            stops = []
            for job_id, by in requests.items():
                run = self.running.get(job_id)
                if run is not None and run.stop_reason is None:
                    log.info("job %s: stopping it as %s asked", job_id, by)
                    stops.append(self._stop_here(run, f"cancelled by {by}"))
            await asyncio.gather(*stops, return_exceptions=True)

    def delete(self, principal: Principal, job: JobRow) -> None:
        check_access(principal, job)
        if job.state not in TERMINAL_STATES and job.state != "waiting_for_credentials":
            raise ConflictError(f"job {job.id} is {job.state}", hint=f"cancel it first: proctor cancel {job.id}")
        self.store.delete(job.id)
        self._forget(job.id)
        shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
        self.watches.pop(job.id, None)

    def on_tunnel_state(self, job_id: str, connected: bool) -> None:
        """Called by the tunnel hub: a running private job without a tunnel is shown as waiting."""
        if connected:
            changed = self.store.transition(job_id, {"waiting_for_tunnel"}, state="running")
        else:
            changed = self.store.transition(job_id, {"running"}, state="waiting_for_tunnel")
        if changed:
            log.info("job %s %s", job_id, "running again: its tunnel is back" if connected else "waiting_for_tunnel")
            self.watch(job_id).notify()

    def _ended(self, job_id: str) -> None:
        """A job left its slot for good: drop its secrets, and let the next job have the slot."""
        self._forget(job_id)
        self.wake.set()

    def _forget(self, job_id: str) -> None:
        self.secrets.pop(job_id, None)
        with contextlib.suppress(Exception):
            self.hub.unregister_job(job_id)

    # scheduling -----------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            if self.store.shared:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), SHARED_QUEUE_POLL)
            else:
                await self.wake.wait()
            self.wake.clear()
            while not self._stopping and len(self.running) < self.settings.slots:
                job = next((j for j in self.store.queued() if self._can_run(j)), None)
                if job is None:
                    break
                await self._start(job)

    def _can_run(self, job: JobRow) -> bool:
        """A job needing secrets runs only on the server holding them (another fleet member's
        memory is out of reach); any server runs the others."""
        return not (job.key_envs or job.private_roles) or job.id in self.secrets

    async def _keep_leases(self) -> None:
        """Renew this server's leases; stop jobs it no longer owns; take over lapsed ones."""
        while True:
            await asyncio.sleep(self.leases.renew_every)
            try:
                mine = self.leases.renew()
            except Exception as exc:  # noqa: BLE001 - a store outage must not end the loop
                log.warning("could not renew this server's leases: %s", exc)
                if self.leases.overdue():
                    await self.supervisor.fence(set(self.running))
                continue
            await self.supervisor.fence(set(self.running) - mine)
            if self.store.shared:
                try:
                    taken = await self.leases.take_over_expired(self.settings.kill_grace)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not look for jobs whose lease lapsed: %s", exc)
                    continue
                for job_id in taken.requeued:
                    log.info("job %s taken over from a server that stopped renewing its lease", job_id)
                    self.watch(job_id).notify()
                for job_id in taken.cancelled:
                    log.info("job %s cancelled as asked: its server stopped renewing its lease", job_id)
                    await self._cancelled_by_takeover(job_id)
                if taken.requeued:
                    self.wake.set()

    async def _start(self, job: JobRow) -> None:
        # The claim: a conditional UPDATE, so of several servers sharing the store exactly one
        # moves the job out of ``queued``; the others see no row changed and look again.
        if not self.store.transition(
            job.id,
            {"queued"},
            state="running",
            started_at=time.time(),
            finished_at=None,
            attempts=job.attempts + 1,
            exit_code=None,
            **self.leases.owned(),
            **NO_STOP_REQUEST,
        ):
            return
        run = self.supervisor.take_slot(job.id)
        await self.supervisor.launch(job, run, self.secrets.get(job.id, JobSecrets()), self.facade_url(job.id))

    def facade_url(self, job_id: str) -> str:
        return facade_base_url(self.settings.internal_host, self.port, job_id)


__all__ = ["JobManager", "PermissionDeniedError", "Running", "new_job_id", "outcome"]
