"""Batches on a server: ``proctor submit SPEC... --model ...`` of a matrix, and the ``--watch`` table.

A batch is the jobs of one matrix (``proctor.batch.expand``), each submitted as an ordinary job
carrying the batch's id. The jobs are queued one by one, and a batch is all or nothing: if the
server refuses one (a full queue, a quota, a spec it rejects) or the connection drops, every job
of the batch queued so far is cancelled and the report says which cell failed, what was
cancelled, and that the same command submits the whole batch again. There is no batch endpoint to
queue many jobs in one transaction (``/v1/batches/{id}`` only reads), so the client withdraws.

``--watch`` redraws one table (job, spec, model, state, progress, accuracy, ETA) until every job
is in a final state, or until Ctrl-C (exit 130; nothing is cancelled). When the output is not a
terminal it prints a plain table each interval instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from proctor.batch import expand, new_batch_id
from proctor.cli._console import LazyConsole
from proctor.errors import (
    EXIT_INTERRUPTED,
    ConflictError,
    InputError,
    NotFoundError,
    ProctorError,
    QueueFullError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from proctor.api_models import JobView
    from proctor.client import Client

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
"""The server's final job states (``proctor.server.store.TERMINAL_STATES``, not imported: the
client side does not load the server's packages)."""

console = LazyConsole()
err_console = LazyConsole(stderr=True)


def submit_batch(
    client: Client,
    specs: Sequence[Path],
    model_values: Sequence[str],
    *,
    models_for: Callable[[list[str]], dict[str, dict[str, Any]]],
    check_roles: Callable[[Path, list[str]], None],
    detach: bool,
    interval: float,
    **job_options: Any,
) -> int:
    """Queue every cell of the matrix as one batch; then watch it unless ``detach``.

    ``models_for`` turns one cell's ``--model`` values into the submission's models (the remote
    commands' own parser), ``check_roles`` refuses a role the spec does not use; both run for
    every cell before anything is queued.
    """
    cells = expand(specs, model_values)
    bodies = []
    for cell in cells:
        models = models_for(list(cell.models))
        check_roles(cell.spec, list(models))
        bodies.append(models)
    batch_id = new_batch_id()
    queued: list[JobView] = []
    refused = ""
    try:
        for cell, models in zip(cells, bodies, strict=True):
            names = {role: model.get("model") or model.get("base_url") or "-" for role, model in models.items()}
            refused = f"{cell.spec} × {cell.label(names)}"
            answer = client.submit(cell.spec, models=models, batch_id=batch_id, **job_options)
            for warning in answer.warnings:
                err_console.print(f"[yellow]warning:[/] {warning}")
            queued.append(answer.job)
    except (ProctorError, KeyboardInterrupt) as exc:
        why = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else exc.message
        err_console.print(_withdraw(client, batch_id, queued, len(cells), refused, why), markup=False, soft_wrap=True)
        raise
    console.print(f"batch {batch_id}: {len(queued)} jobs queued", markup=False)
    if detach:
        console.print(_plain_table(client.batch(batch_id).jobs))  # as they are now, not as queued
        console.print(f"watch it with: proctor status {batch_id} --watch", markup=False)
        return 0
    return outcome(watch(lambda: client.batch(batch_id).jobs, interval=interval))


def _withdraw(client: Client, batch_id: str, queued: list[JobView], total: int, cell: str, why: str) -> str:
    """Cancel every job of a batch whose submission failed part way; say what happened and what to do.

    All or nothing: a half batch left queued would run, and count, behind the user's back. The
    server's own list of the batch is asked first, since a submission whose answer was lost
    (a dropped connection) may have queued a job this client never heard of.
    """
    try:
        jobs = client.batch(batch_id).jobs
    except NotFoundError:
        jobs = []
    except ProctorError:
        jobs = queued
    finished = [f"{job.id} ({job.state})" for job in jobs if job.state in TERMINAL]
    jobs = [job for job in jobs if job.state not in TERMINAL]
    withdrawn: list[str] = []
    left: list[str] = []
    for job in jobs:
        try:
            client.cancel(job.id)
            withdrawn.append(job.id)
        except ConflictError:  # it finished in the meantime
            finished.append(job.id)
        except ProctorError as exc:
            left.append(f"{job.id} ({exc.message})")
    lines = [f"batch {batch_id}: job {len(queued) + 1} of {total} ({cell}) was not queued: {why}."]
    if withdrawn:
        lines.append(f"The {len(withdrawn)} job(s) of the batch already queued were cancelled: {', '.join(withdrawn)}.")
    if finished:
        lines.append(f"Already finished, so left as they are: {', '.join(finished)}.")
    if left:
        lines.append(f"Could not cancel: {', '.join(left)}; cancel each with `proctor cancel JOB`.")
    elif not withdrawn and not finished:
        lines.append("Nothing of the batch was queued.")
    if not left:
        lines.append("Nothing of this batch runs: fix the cause, then run the same command again.")
    return " ".join(lines)


RETRY_FOR = 300.0
"""Seconds ``--watch`` keeps trying a server that went away before it gives up (``--retry-for``)."""

MAX_BACKOFF = 15.0
"""The longest wait between two tries of an unreachable server: it is back in view soon after it is."""


def watch(fetch: Callable[[], list[JobView]], *, interval: float, retry_for: float = RETRY_FOR) -> list[JobView]:
    """Show ``fetch()`` as a table every ``interval`` seconds until every job is final; return them.

    A server that goes away (a restart, a 502/503, a dropped connection) is said once on stderr
    and tried again with a growing wait (``_Patient``), the table resuming when it answers; after
    ``retry_for`` seconds of nothing but failures the watch gives up (one line, exit 1). Ctrl-C
    stops watching (exit 130) and nothing else: the jobs go on.
    """
    patient = _Patient(fetch, interval=interval, retry_for=retry_for)
    try:
        jobs = patient.fetch()
        if console.is_terminal:
            from rich.live import Live

            with Live(job_table(jobs), console=console.real, auto_refresh=False) as live:
                while not _finished(jobs):
                    time.sleep(interval)
                    jobs = patient.fetch()
                    live.update(job_table(jobs), refresh=True)
        else:
            console.print(_plain_table(jobs))
            while not _finished(jobs):
                time.sleep(interval)
                jobs = patient.fetch()
                console.print(_plain_table(jobs))
    except KeyboardInterrupt:
        err_console.print("\nstopped watching; nothing was cancelled")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return jobs


class _Patient:
    """``fetch`` that waits out a server that is away, for at most ``retry_for`` seconds at a time.

    Only ``ServerUnavailableError`` (no connection, a 5xx) and ``QueueFullError`` (a 503) are
    waited out: any other error (a bad token, a job that does not exist) is the answer itself.
    """

    def __init__(self, fetch: Callable[[], list[JobView]], *, interval: float, retry_for: float) -> None:
        self._fetch, self.interval, self.retry_for = fetch, interval, retry_for

    def fetch(self) -> list[JobView]:
        try:
            return self._fetch()
        except (ServerUnavailableError, QueueFullError) as exc:
            first = exc
        since = time.monotonic()
        err_console.print(
            f"the server is unreachable ({first.message}); retrying for up to {self.retry_for:g} s "
            "(Ctrl-C to stop watching)",
            markup=False,
            soft_wrap=True,
        )
        wait = self.interval
        while True:
            left = self.retry_for - (time.monotonic() - since)
            if left <= 0:
                raise ServerUnavailableError(
                    f"gave up watching: the server has been unreachable for {self.retry_for:g} s ({first.message})",
                    hint="nothing was cancelled; watch again when the server is back (--retry-for sets how long to wait)",
                )
            time.sleep(min(wait, left))
            wait = min(wait * 2, MAX_BACKOFF)
            try:
                jobs = self._fetch()
            except (ServerUnavailableError, QueueFullError):
                continue
            err_console.print(f"the server answers again after {time.monotonic() - since:.0f} s", markup=False)
            return jobs


def outcome(jobs: list[JobView]) -> int:
    """A watch's exit code: 0 when every job succeeded, else 1."""
    return 0 if all(job.state == "succeeded" for job in jobs) else 1


def _finished(jobs: list[JobView]) -> bool:
    return all(job.state in TERMINAL for job in jobs)


def job_table(jobs: list[JobView], *, title: str | None = None) -> Any:
    """One row per job: job, spec, model, state, progress, accuracy, ETA."""
    from rich.table import Table

    from proctor.evals.progress import _fmt_eta

    table = Table(title=title or time.strftime("%H:%M:%S"), title_justify="left")
    for column in ("job", "spec", "model", "state", "progress", "accuracy", "ETA"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        record: dict[str, Any] = job.progress or {}
        total, done = record.get("total"), record.get("done") or 0
        accuracy = record.get("accuracy")
        running = job.state not in TERMINAL and job.state != "queued"
        table.add_row(
            job.id,
            job.spec or "-",
            job.model or "-",
            job.state + (f" (#{job.queue_position})" if job.queue_position else ""),
            f"{done}/{total}" if total is not None else "-",
            "-" if accuracy is None else f"{accuracy:.1%}",
            _fmt_eta(record.get("eta")) if running and record else "",
        )
    return table


def _plain_table(jobs: list[JobView]) -> Any:
    from rich import box

    table = job_table(jobs)
    table.box = box.SIMPLE
    return table


def status_of(client: Client, target: str, *, watching: bool, interval: float, retry_for: float = RETRY_FOR) -> int:
    """``proctor status ID`` when ID names a batch (or with ``--watch``): the batch's table."""
    try:
        client.status(target)
        fetch: Callable[[], list[JobView]] = lambda: [client.status(target)]  # noqa: E731
    except NotFoundError:
        try:
            client.batch(target)
        except NotFoundError:
            raise NotFoundError(f"no job or batch {target!r}") from None
        fetch = lambda: client.batch(target).jobs  # noqa: E731
    if not watching:
        console.print(job_table(fetch(), title=target))
        return 0
    return outcome(watch(fetch, interval=interval, retry_for=retry_for))


def refuse_in_batch(**given: Any) -> None:
    """Options that belong to one job (its id, its downloads, its tunnel) make no sense for many."""
    named = [f"--{name.replace('_', '-')}" for name, value in given.items() if value]
    if named:
        raise InputError(
            f"{', '.join(named)} applies to one job, not to a batch of several specs or models",
            hint="submit that job on its own, or leave the option out",
        )
