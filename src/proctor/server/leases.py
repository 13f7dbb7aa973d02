"""Leases: which server instance owns a job, and taking over the jobs of an instance that died.

Several servers may share one PostgreSQL store (a fleet). Each server process is an *instance*
with an id made at start (``host/pid/process start time/random``). When it claims a job it writes
its id and ``lease_until`` (now + ``lease_seconds``) in the job's row, and renews that every
quarter of the lease for every job it owns. A job is owned while it runs, and also while it is
queued if its secrets (API keys, a tunnel registration) live in that instance's memory only: no
other instance could run it.

An instance that stops renewing (SIGKILL, a lost machine, a lost store) loses its jobs: once
``lease_until`` has passed, any other instance takes each over with a compare-and-set ``UPDATE``
(same owner, lease still expired), so exactly one succeeds. Fencing, so that a job never runs
twice at once: the new owner starts the job only after the lease expired; the old instance kills
a job whose row it no longer owns, and every job of its own once it could not renew for half a
lease; a job's end is recorded only by the instance that owns it (``record_end``).

Times are ``time.time()`` of each instance: the fleet's clocks must agree to well under a lease
(NTP does). A restarted instance on the same host takes its dead predecessor's jobs at once (the
predecessor's pid and start time show it is gone); a graceful stop releases its leases at once.

Stopping a job through an instance that does not run it: that instance writes a *stop request*
into the job's row (``request_stop``); the owner looks for requests on the jobs it runs every
``STOP_POLL`` seconds (``stop_requests``) and stops them as it would a local cancel. A job whose
owner died before it saw the request is cancelled by whoever takes it over, never run again.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, update

from proctor.server import jobs as jobmod
from proctor.server.store import ACTIVE_STATES, JobRow, JobStore, _encode, jobs_table

OWNED_STATES: frozenset[str] = ACTIVE_STATES | {"queued"}
"""States in which a job may have an owning instance whose lease matters."""
STOP_POLL = 1.0
"""Seconds between an instance's looks for stop requests on the jobs it runs."""
NO_STOP_REQUEST: dict[str, Any] = {"stop_requested_at": None, "stop_requested_by": None}
"""A claim starts a new run: a stop request left from an earlier run does not apply to it."""


@dataclass(slots=True)
class Takeover:
    """What ``take_over_expired`` did: jobs queued again, and jobs cancelled as requested."""

    requeued: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Instance:
    """Where an instance runs: enough to tell, on the same host, whether it is still alive."""

    id: str
    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Instance:
        import psutil

        host, pid = socket.gethostname(), os.getpid()
        started = float(psutil.Process(pid).create_time())
        return cls(f"{host}/{pid}/{started:.2f}/{secrets.token_hex(3)}", host, pid, started)

    @classmethod
    def parse(cls, instance_id: str) -> Instance | None:
        parts = instance_id.split("/")
        if len(parts) != 4:
            return None
        try:
            return cls(instance_id, parts[0], int(parts[1]), float(parts[2]))
        except ValueError:
            return None

    def same_host(self, other: str | None) -> bool:
        """Is the instance ``other`` on this host (so its pids mean something here)? An unknown one
        (a row from before leases) is taken to be: that was the only possible case then."""
        parsed = Instance.parse(other) if other else None
        return parsed is None or parsed.host == self.host

    def known_dead(self, other: str | None) -> bool:
        """True only when ``other`` is an instance on this host whose process is gone."""
        parsed = Instance.parse(other) if other else None
        if parsed is None or parsed.host != self.host:
            return False
        return not jobmod.is_same_process(parsed.pid, parsed.started)


class Leases:
    """This instance's leases in the store."""

    def __init__(self, store: JobStore, instance: Instance, seconds: float) -> None:
        self.store = store
        self.instance = instance
        self.seconds = seconds
        self.last_renewed = time.monotonic()

    @property
    def renew_every(self) -> float:
        return self.seconds / 4

    def owned(self, now: float | None = None) -> dict[str, Any]:
        """The columns that make this instance a job's owner, with a fresh lease."""
        return {"instance": self.instance.id, "lease_until": (now or time.time()) + self.seconds}

    @staticmethod
    def unowned() -> dict[str, Any]:
        return {"instance": None, "lease_until": None}

    def renew(self) -> set[str]:
        """Extend every lease this instance holds; return the ids of the jobs it still owns."""
        mine = and_(jobs_table.c.instance == self.instance.id, jobs_table.c.state.in_(list(OWNED_STATES)))
        with self.store.engine.begin() as conn:
            conn.execute(update(jobs_table).where(mine).values(lease_until=time.time() + self.seconds))
            ids = {row.id for row in conn.execute(select(jobs_table.c.id).where(mine))}
        self.last_renewed = time.monotonic()
        return ids

    def overdue(self) -> bool:
        """No renewal for half a lease: another instance may take the jobs soon, so stop them."""
        return time.monotonic() - self.last_renewed > self.seconds / 2

    def release(self) -> None:
        """A graceful stop: let any instance (or this one restarted) take the jobs at once."""
        with self.store.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.instance == self.instance.id, jobs_table.c.state.in_(list(OWNED_STATES)))
                .values(lease_until=0.0)
            )

    def orphaned(self, job: JobRow, now: float) -> bool:
        """May this instance take ``job`` over from its owner?"""
        if job.instance == self.instance.id:
            return False
        if job.instance is None:
            return job.state in ACTIVE_STATES  # a row from before leases, or a claim never made
        return (job.lease_until or 0.0) < now or self.instance.known_dead(job.instance)

    def expired(self) -> list[JobRow]:
        """Jobs owned by another instance whose lease has passed, oldest first."""
        now = time.time()
        query = (
            select(jobs_table)
            .where(
                jobs_table.c.state.in_(list(OWNED_STATES)),
                jobs_table.c.instance.is_not(None),
                jobs_table.c.instance != self.instance.id,
                jobs_table.c.lease_until < now,
            )
            .order_by(jobs_table.c.seq)
        )
        with self.store.engine.connect() as conn:
            return [JobRow.from_mapping(r) for r in conn.execute(query).mappings()]

    def take(self, job: JobRow, **values: Any) -> bool:
        """Compare-and-set: move ``job`` away from its old owner, only if it still is as we saw it
        (same owner, same state, lease still expired or the owner known dead; and if it had no
        stop request then, still none: such a job is cancelled, not re-queued). One taker wins."""
        now = time.time()
        owner = jobs_table.c.instance == job.instance if job.instance else jobs_table.c.instance.is_(None)
        lapsed = or_(jobs_table.c.lease_until.is_(None), jobs_table.c.lease_until < now)
        condition = owner if self.instance.known_dead(job.instance) else and_(owner, lapsed)
        if job.stop_requested_at is None:  # a stop asked for meanwhile is not lost by re-queueing the job
            condition = and_(condition, jobs_table.c.stop_requested_at.is_(None))
        with self.store.engine.begin() as conn:
            result = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job.id, jobs_table.c.state == job.state, condition)
                .values(**_encode(values))
            )
        return bool(result.rowcount)

    def record_end(self, job_id: str, **values: Any) -> bool:
        """Write a job's end only while this instance owns it (fencing: a job taken over meanwhile
        belongs to its new owner, whose run must not be marked finished by the old one)."""
        with self.store.engine.begin() as conn:
            result = conn.execute(
                update(jobs_table)
                .where(
                    jobs_table.c.id == job_id,
                    or_(jobs_table.c.instance == self.instance.id, jobs_table.c.instance.is_(None)),
                )
                .values(**_encode(values))
            )
        return bool(result.rowcount)

    def request_stop(self, job_id: str, by: str) -> bool:
        """Ask the instance running ``job_id`` to stop it; False when the job no longer runs.

        ``by`` (who asked, through which instance) becomes the cancelled job's note.
        """
        return self.store.transition(
            job_id,
            ACTIVE_STATES,
            stop_requested_at=time.time(),
            stop_requested_by=by,
            note=f"stop requested by {by}; the server instance running it stops it",
        )

    def stop_requests(self, job_ids: Collection[str]) -> dict[str, str]:
        """The stop requests for jobs among ``job_ids`` that this instance owns: job id -> who asked."""
        if not job_ids:
            return {}
        query = select(jobs_table.c.id, jobs_table.c.stop_requested_by).where(
            jobs_table.c.id.in_(list(job_ids)),
            jobs_table.c.instance == self.instance.id,
            jobs_table.c.stop_requested_at.is_not(None),
        )
        with self.store.engine.connect() as conn:
            return {row.id: row.stop_requested_by or "another server instance" for row in conn.execute(query)}

    async def take_over_expired(self, kill_grace: float) -> Takeover:
        """Take every job whose owner's lease has passed.

        A job that needs no secret is queued again (priority 0, ahead of newer ones) and resumes
        from its ledger wherever it is claimed next. A job whose API keys or tunnel lived in the
        dead instance's memory cannot run elsewhere: it waits for ``proctor resume`` (which brings
        the keys, or a new tunnel secret, to the instance that answers). A job someone asked to
        stop is cancelled, whatever it needs.
        """
        done = Takeover()
        for job in self.expired():
            was = job.instance or "?"
            if job.state in ACTIVE_STATES and self.instance.same_host(job.instance):
                # Fencing for a dead server on this host: its job may outlive it (own session).
                if jobmod.is_same_process(job.pid, job.proc_start):
                    assert job.pid is not None
                    await jobmod.kill_tree(job.pid, grace=kill_grace)
            if job.stop_requested_at is not None:
                values: dict[str, Any] = dict(
                    state="cancelled",
                    finished_at=time.time(),
                    note=f"cancelled by {job.stop_requested_by}; the server instance {was} that ran it "
                    "stopped renewing its lease before it stopped it",
                )
            elif job.key_envs or job.private_roles:
                needs = "a new tunnel (its agent)" if job.private_roles else "its API keys"
                values = dict(
                    state="waiting_for_credentials",
                    note=f"the server instance {was} that held it stopped renewing its lease and it needs "
                    f"{needs} again: `proctor resume {job.id}`",
                )
            else:
                values = dict(
                    state="queued",
                    priority=0,
                    note=f"taken over: the server instance {was} stopped renewing its lease",
                )
            if self.take(job, pid=None, **values, **self.unowned()):
                if values["state"] == "queued":
                    done.requeued.append(job.id)
                elif values["state"] == "cancelled":
                    done.cancelled.append(job.id)
        return done
