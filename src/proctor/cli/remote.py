"""The remote commands: ``submit``, ``check``, ``status``, ``logs``, ``cancel``, ``results``,
``list``, ``delete``, ``resume``. Thin: each one calls ``proctor.client.Client`` and prints.

``submit`` also takes the Toolathlon client's options (``--mode``, ``--base-url``, ``--api-key``,
``--model-name``, ``--workers``, ``--output-file``, ``--log-file``, ``--server-log``,
``--traj-log``, ``--job-id``, ``--server-host``, ``--server-port``) so its users can switch without
relearning. API keys are read from ``--api-key-env NAME`` (preferred: nothing in shell history) or
``--api-key``; they are sent in the request body only and never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from proctor.batch import is_matrix
from proctor.cli._console import LazyConsole
from proctor.errors import EXIT_INTERRUPTED, EXIT_SAMPLE_ERRORS, InputError, NotFoundError, ProctorError

if TYPE_CHECKING:
    from proctor.client import Client

ServerOpt = Annotated[
    str | None, typer.Option("--server", "-s", help="Server URL (env PROCTOR_SERVER, or client.yaml).")
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Bearer token (env PROCTOR_TOKEN, or client.yaml).", show_default=False)
]
JobArg = Annotated[str, typer.Argument(help="The job's id.")]
RetryForOpt = Annotated[
    float,
    typer.Option(
        "--retry-for",
        min=0,
        help="Seconds --watch keeps retrying a server that stopped answering, then gives up (exit 1).",
    ),
]

console = LazyConsole()
err_console = LazyConsole(stderr=True)


def _client(server: str | None, token: str | None, host: str | None = None, port: int | None = None) -> Client:
    from proctor.client import Client  # httpx: imported only by the commands that talk to a server

    if server is None and (host or port):
        server = f"http://{host or '127.0.0.1'}:{port or 8080}"
    return Client(server, token)


def _key_overrides(api_key: str | None, api_key_env: list[str]) -> dict[str, str]:
    """``--api-key`` (subject) and ``--api-key-env [ROLE=]NAME`` → {role: key}; values never echoed."""
    keys: dict[str, str] = {}
    if api_key:
        keys["subject"] = api_key
    for item in api_key_env:
        role, sep, name = item.partition("=")
        if not sep:
            role, name = "subject", item
        value = os.environ.get(name)
        if not value:
            raise InputError(f"--api-key-env {item}: environment variable {name} is not set")
        keys[role] = value
    return keys


def _models(
    model: list[str], base_url: str | None, model_name: str | None, keys: dict[str, str]
) -> dict[str, dict[str, Any]]:
    from proctor.evals.spec import ModelTarget

    models: dict[str, dict[str, Any]] = {}
    for item in model:
        parsed = ModelTarget.parse(item)
        models[parsed.role] = {"base_url": parsed.url or None, "model": parsed.name}
    if base_url or model_name:
        models.setdefault("subject", {}).update(
            {k: v for k, v in (("base_url", base_url and base_url.rstrip("/")), ("model", model_name)) if v}
        )
    for role, key in keys.items():
        models.setdefault(role, {})["api_key"] = key
    return models


def submit(
    specs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Task spec YAML; its dataset is uploaded from beside it. Several specs (or one role given "
            "by several --model) are queued as one batch: every spec with every model.",
            metavar="SPEC",
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    server_host: Annotated[str | None, typer.Option("--server-host", help="Server host (with --server-port).")] = None,
    server_port: Annotated[int | None, typer.Option("--server-port", help="Server port.")] = None,
    template: Annotated[str | None, typer.Option(help="Run a command template the admin registered.")] = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Template parameter KEY=VALUE.")] = [],  # noqa: B006
    model: Annotated[list[str], typer.Option("--model", "-m", help="ROLE=URL@NAME for a model role.")] = [],  # noqa: B006
    base_url: Annotated[str | None, typer.Option("--base-url", help="Subject's endpoint URL.")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", help="Subject's model name.")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Subject's API key (prefer --api-key-env).", show_default=False)
    ] = None,
    api_key_env: Annotated[
        list[str], typer.Option("--api-key-env", help="[ROLE=]VAR: send the key held in env var VAR.")
    ] = [],  # noqa: B006
    mode: Annotated[
        str, typer.Option("--mode", help="public (server calls the model) or private (tunnel).")
    ] = "public",
    private: Annotated[bool, typer.Option("--private", help="Same as --mode private.")] = False,
    private_role: Annotated[
        list[str],
        typer.Option(
            "--private-role", help="Role served through the tunnel (repeatable; each may be its own local model)."
        ),
    ] = [],  # noqa: B006
    workers: Annotated[int | None, typer.Option("--workers", "--concurrency", help="Samples in flight.")] = None,
    limit: Annotated[int | None, typer.Option(help="Run only the first N samples.")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Re-run samples that errored.")] = False,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Resume this job id (or choose the id).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Minutes the job may run (server caps it).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Use a dataset registered on the server.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where results go (default ./proctor-JOB).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the job id and return.")] = False,
    output_file: Annotated[Path | None, typer.Option("--output-file", help="Copy eval_stats.json here.")] = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Write the followed log here.")] = None,
    server_log: Annotated[Path | None, typer.Option("--server-log", help="Copy the job's process log here.")] = None,
    traj_log: Annotated[Path | None, typer.Option("--traj-log", help="Copy traj_log_all.jsonl here.")] = None,
    interval: Annotated[float, typer.Option(help="A batch: seconds between refreshes of its table.", min=0.1)] = 2.0,
) -> None:
    """Submit a job, follow its logs with a progress bar, and download its results.

    A batch (several specs, or several --model for one role) is watched as one table instead.
    """
    job_options: dict[str, Any] = dict(
        limit=limit,
        concurrency=workers,
        retry_errors=retry_errors,
        timeout=timeout * 60 if timeout else None,
        dataset=dataset,
    )
    if is_matrix(specs or [], model):  # a batch: cli/batches.py
        from proctor.cli.batches import refuse_in_batch, submit_batch

        refuse_in_batch(
            template=template,
            private=private or mode == "private",
            private_role=private_role,
            job_id=job_id,
            out=out,
            output_file=output_file,
            log_file=log_file,
            server_log=server_log,
            traj_log=traj_log,
        )
        keys = _key_overrides(api_key, api_key_env)
        with _client(server, token, server_host, server_port) as client:
            raise typer.Exit(
                submit_batch(
                    client,
                    specs or [],
                    model,
                    models_for=lambda values: _models(values, base_url, model_name, keys),
                    check_roles=_check_roles,
                    detach=detach,
                    interval=interval,
                    **job_options,
                )
            )
    spec = specs[0] if specs else None
    if spec is None and template is None:
        raise InputError("give a task spec file, or --template NAME for a command job")
    if mode not in ("public", "private"):
        raise InputError("--mode must be 'public' or 'private'")
    is_private = private or mode == "private"
    if private_role and not is_private:
        raise InputError("--private-role only makes sense with --private (or --mode private)")
    if out is not None:  # checked before the job is queued, not when its results arrive
        from proctor._files import ensure_directory

        ensure_directory(out, what="download directory (--out)")
    models = _models(model, base_url, model_name, _key_overrides(api_key, api_key_env))
    if spec is not None:
        _check_roles(spec, [*models, *private_role])
    roles = private_role or (["subject"] if is_private else [])
    local: LocalModels | None = None
    if is_private:
        # Everything the tunnel needs is checked before anything is queued on the server.
        local = _local_models(roles, models, spec)
        # The endpoint and key of a private role stay on this machine: only the name is sent.
        for role in roles:
            name = models.get(role, {}).get("model")
            models.pop(role, None)
            if name:
                models[role] = {"model": name}
    params = {}
    for item in param:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--param {item!r}: expected KEY=VALUE")
        params[key] = value
    client = _client(server, token, server_host, server_port)
    with client:
        answer = client.submit(
            spec,
            template=template,
            params=params or None,
            models=models,
            private=is_private,
            private_roles=roles or None,
            job_id=job_id,
            **job_options,
        )
        job = answer.job
        for warning in answer.warnings:
            err_console.print(f"[yellow]warning:[/] {warning}")
        position = job.queue_position
        console.print(f"job {job.id} {job.state}" + (f" (queue position {position})" if position else ""))
        agent = None
        if local is not None:
            agent = _start_tunnel_agent(client, job.id, answer.tunnel_secret, local)
        if detach:
            if agent is not None:
                err_console.print("private mode: the tunnel runs while this command runs; not detaching")
            else:
                console.print(f"follow it with: proctor logs {job.id} -f")
                return
        try:
            final = _follow(client, job.id, log_file=log_file)
        except KeyboardInterrupt:
            if agent is not None:
                err_console.print(_tunnel_stopped(job.id))
            else:
                err_console.print(f"\nstopped following; the job goes on. Follow again: proctor logs {job.id} -f")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        finally:
            if agent is not None:
                agent.stop()
        status = client.status(job.id)
        dest = out or Path(f"proctor-{job.id}")
        paths = client.download_results(job.id, dest)
        _copy_named(dest, output_file=output_file, server_log=server_log, traj_log=traj_log)
        note = f" — {status.note}" if status.note else ""
        console.print(f"job {job.id} {final}{note}; {len(paths)} file(s) downloaded")
        # The report in the job's log leaves out the server's path; this copy is the run's here
        # (a proctor job's run directory is its `out/`, which `analyze` and `rescore` take).
        run_dir = dest / "out" if (dest / "out" / "ledger.sqlite").is_file() else dest
        console.print(f"run directory: {run_dir.resolve()}", soft_wrap=True, markup=False)
        if final != "succeeded":
            raise typer.Exit(EXIT_SAMPLE_ERRORS)


def _check_roles(spec: Path, roles: list[str]) -> None:
    """A role the spec never uses (``--model judg=...``) is a typo: refused before anything is queued.

    A spec that does not load here is left for the server to judge, which says why.
    """
    from proctor.errors import SpecError
    from proctor.evals.spec import load_spec

    try:
        used = load_spec(spec).roles_used()
    except SpecError:
        return
    unknown = [role for role in dict.fromkeys(roles) if role not in used]
    if unknown:
        raise InputError(
            f"the spec uses no role {', '.join(map(repr, unknown))}; its roles are: {', '.join(used)}",
            hint="check --model ROLE=..., --api-key-env ROLE=VAR and --private-role",
        )


def _tunnel_stopped(job_id: str) -> str:
    return (
        f"\nstopped serving the tunnel; job {job_id} goes on and waits for it. Serve it again with "
        f"`proctor tunnel {job_id} --model URL` (PROCTOR_TUNNEL_SECRET: the secret shown at submission), "
        f"or stop it: proctor cancel {job_id}"
    )


class _AgentThread:
    """The tunnel agent on its own event loop in a daemon thread, beside the log follower."""

    def __init__(self, target: Any, **kwargs: Any) -> None:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=target, kwargs={**kwargs, "stop_event": self._stop}, name="proctor-tunnel", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@dataclass(frozen=True)
class LocalModel:
    """The submitter's model that a private job's tunnel serves; never sent to the server."""

    url: str
    api_key: str | None = field(default=None, repr=False)


LocalModels = dict[str, LocalModel]
"""Private role -> the local model that serves it (roles may share one)."""


def _local_models(roles: list[str], flag_models: dict[str, dict[str, Any]], spec: Path | None) -> LocalModels:
    """Where each private role's calls go on this machine, and with which key.

    From the flags (``--base-url``, ``--model ROLE=URL@NAME``, ``--api-key(-env)``), else from the
    spec (``models.<role>.base_url`` and the variable its ``api_key_env`` names). Roles may name
    different local models: the agent sends each role's calls to its own.
    """
    from proctor.client import spec_local_endpoints

    from_spec = spec_local_endpoints(spec, roles) if spec is not None else {}
    chosen: dict[str, LocalModel] = {}
    for role in roles:
        flags, named = flag_models.get(role, {}), from_spec.get(role, {})
        url = flags.get("base_url") or named.get("base_url")
        if not url:
            raise InputError(
                f"private mode needs the local model's URL for role {role!r}",
                hint=f"give --base-url URL (or --model {role}=URL@NAME), or models.{role}.base_url in the spec",
            )
        if not re.match(r"^https?://[^\s/]+", url):
            raise InputError(f"the local model URL of role {role!r} must start with http:// or https://")
        key = flags.get("api_key")
        env_name = named.get("api_key_env")
        if key is None and env_name:
            key = os.environ.get(env_name)
            if not key:
                raise InputError(
                    f"models.{role}.api_key_env names {env_name}, which is not set here",
                    hint=f"export {env_name}=... (the key stays on this machine), or give --api-key-env VAR",
                )
        chosen[role] = LocalModel(url.rstrip("/"), key)
    return chosen


def _role_models(local: LocalModels) -> dict[str, tuple[str, str | None]] | None:
    """The agent's per-role routes, needed only when the roles' local models differ."""
    if len(set(local.values())) < 2:
        return None
    return {role: (m.url, m.api_key) for role, m in local.items()}


def _start_tunnel_agent(client: Client, job_id: str, tunnel_secret: str | None, local: LocalModels) -> Any:
    """Serve the job's private roles from their local models through ``proctor.tunnel``, in-process.

    The tunnel secret, the local URL and the key are handed over in memory. Only on an
    interactive terminal is the secret shown (once), so that the job can be served from
    elsewhere with ``proctor tunnel`` if this command stops; it never goes to a file or log.
    """
    from proctor.tunnel.agent import run_agent_sync

    if not tunnel_secret:
        with contextlib.suppress(ProctorError):
            client.cancel(job_id)  # a private job nobody can serve would only wait for its deadline
        raise ProctorError("the server returned no tunnel secret for this private job; it was cancelled")
    if err_console.is_terminal:
        err_console.print(
            f"[dim]tunnel secret (shown once; to serve this job from elsewhere: "
            f"PROCTOR_TUNNEL_SECRET=... proctor tunnel {job_id} --model URL):[/] {tunnel_secret}"
        )
    first = next(iter(local.values()))  # calls that name no role (e.g. a command job's) go here
    return _AgentThread(
        run_agent_sync,
        server_url=client.server,
        job_id=job_id,
        token=client.token or "",
        tunnel_secret=tunnel_secret,
        model_url=first.url,
        api_key=first.api_key,
        role_models=_role_models(local),
        log=lambda line: err_console.print(f"[dim]tunnel:[/] {line}"),
    )


def _follow(client: Client, job_id: str, *, log_file: Path | None, last_event_id: int | None = None) -> str:
    """Print the job's log as it comes, with a progress bar from its PROCTOR_PROGRESS lines."""
    from proctor.evals.progress import progress_record

    final = "unknown"
    sink = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("errors {task.fields[errors]}  acc {task.fields[acc]}"),
        TimeRemainingColumn(),
        console=console.real,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task(job_id[:8], total=None, errors=0, acc="-")
    try:
        with progress:
            for event in client.follow(job_id, last_event_id=last_event_id):
                if event.event == "end":
                    final = _state_of(event.data)
                    break
                for line in event.data.split("\n"):
                    record = progress_record(line)
                    if record is not None:
                        acc = record.get("accuracy")
                        progress.update(
                            task,
                            total=record.get("total"),
                            completed=record.get("done") or 0,
                            errors=record.get("errors", 0),
                            acc="-" if acc is None else f"{acc:.3f}",
                        )
                        continue
                    progress.console.print(line, markup=False)
                    if sink is not None:
                        sink.write(line + "\n")
    finally:
        if sink is not None:
            sink.close()
    return final


def _state_of(data: str) -> str:
    import json

    try:
        return str(json.loads(data).get("state", "unknown"))
    except ValueError:
        return "unknown"


def _copy_named(dest: Path, *, output_file: Path | None, server_log: Path | None, traj_log: Path | None) -> None:
    """Copy the Toolathlon-named files out of the downloaded results (run files live in ``out/``)."""
    for target, name in ((output_file, "eval_stats.json"), (server_log, "job.log"), (traj_log, "traj_log_all.jsonl")):
        found = next((path for path in (dest / "out" / name, dest / name) if path.is_file()), None)
        if target is not None and found is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)


def check(server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Is the server up, idle or busy? Slots, queue, version; your jobs and others' (anonymized)."""
    with _client(server, token) as client:
        info = client.server_info()
    console.print(
        f"{client.server}: [bold]{info.status}[/] · proctor {info.version} · "
        f"{info.running}/{info.slots} slots busy · queue {info.queue_length}/{info.queue_max}"
        + (" · open mode" if info.open else "")
        + (f" · rate limit {info.rate_limit}" if info.rate_limit else "")
    )
    if info.you:
        console.print(f"you are {info.you}")
    if info.jobs:
        from rich.table import Table

        table = Table("job", "state", "queue", "yours")
        for job in info.jobs:
            table.add_row(job["id"], job["state"], str(job.get("queue_position") or ""), "yes" if job["mine"] else "")
        console.print(table)


def status(
    job_id: Annotated[str, typer.Argument(help="The job's id, or a batch's.")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live table until every job is final.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes (--watch).", min=0.1)] = 2.0,
    retry_for: RetryForOpt = 300.0,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """A job's state, exit code, note and progress; a batch's jobs as a table (--watch: live)."""
    from proctor.cli.batches import status_of

    with _client(server, token) as client:
        try:
            job = None if watch else client.status(job_id)
        except NotFoundError:
            job = None
        if job is None:
            raise typer.Exit(status_of(client, job_id, watching=watch, interval=interval, retry_for=retry_for))
    from rich.table import Table

    from proctor.evals.progress import describe

    table = Table(show_header=False)
    for key in ("id", "owner", "kind", "state", "queue_position", "exit_code", "note", "attempts"):
        if getattr(job, key) is not None:
            table.add_row(key, str(getattr(job, key)))
    if job.progress is not None:
        table.add_row("progress", describe(job.progress))
    if job.waiting_for:
        table.add_row("waiting for", ", ".join(job.waiting_for))
    console.print(table)


def logs(
    job_id: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
    offset: Annotated[int, typer.Option(help="Start at this byte offset.")] = 0,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a job's log (stdout and stderr of its process); -f follows it live."""
    with _client(server, token) as client:
        if follow:
            final = _follow(client, job_id, log_file=None, last_event_id=offset or None)
            err_console.print(f"job {job_id} {final}")
            return
        from proctor.evals.progress import progress_record

        # The engine's PROCTOR_PROGRESS lines are for machines (status, submit's bar): left out.
        # A line may straddle two pages, so the last partial line waits for the next page.
        partial = ""
        while True:
            page = client.logs(job_id, offset=offset)
            lines = (partial + page.data).split("\n")
            partial = lines.pop()
            sys.stdout.writelines(line + "\n" for line in lines if progress_record(line) is None)
            if page.eof or page.next_offset == offset:
                break
            offset = page.next_offset
        if partial and progress_record(partial) is None:
            sys.stdout.write(partial)
        sys.stdout.flush()


def cancel(job_id: JobArg, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Cancel a job: its whole process group is killed and cleanup hooks run."""
    with _client(server, token) as client:
        job = client.cancel(job_id)
    console.print(f"job {job_id} {job.state}")


def results(
    job_id: JobArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory (default ./proctor-JOB).")] = None,
    tar: Annotated[bool, typer.Option("--tar", help="Download one JOB.tar.gz instead of the files.")] = False,
    file: Annotated[
        str | None, typer.Option("--file", help="Only this artifact, e.g. out/eval_stats.json (kept at DIR/out/...).")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Download a job's artifacts (eval_stats.json, samples.jsonl, logs, ...)."""
    dest = out or Path(f"proctor-{job_id}")
    with _client(server, token) as client:
        if tar:
            path = client.download_tar(job_id, dest / f"{job_id}.tar.gz")
            console.print(f"{path}")
        elif file:
            console.print(str(client.download_artifact(job_id, file, dest)))
        else:
            paths = client.download_results(job_id, dest)
            console.print(f"{len(paths)} file(s) in {dest}")


def list_jobs(
    all_users: Annotated[bool, typer.Option("--all", help="Everyone's jobs (admins).")] = False,
    batch: Annotated[str | None, typer.Option("--batch", help="Only this batch's jobs.")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live table until every job is final.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes (--watch).", min=0.1)] = 2.0,
    retry_for: RetryForOpt = 300.0,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Your jobs on the server (--watch: a live table of their progress)."""
    with _client(server, token) as client:
        if watch:
            from proctor.cli.batches import outcome
            from proctor.cli.batches import watch as watch_jobs

            raise typer.Exit(
                outcome(
                    watch_jobs(
                        lambda: client.list(all_users=all_users, batch=batch), interval=interval, retry_for=retry_for
                    )
                )
            )
        jobs = client.list(all_users=all_users, batch=batch)
    from rich.table import Table

    table = Table("job", "state", "kind", "owner", "exit", "note")
    for job in jobs:
        table.add_row(
            job.id,
            job.state,
            job.kind,
            job.owner,
            "" if job.exit_code is None else str(job.exit_code),
            job.note or "",
        )
    console.print(table)


def delete(job_id: JobArg, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Forget a stopped job and delete its files on the server."""
    with _client(server, token) as client:
        client.delete(job_id)
    console.print(f"job {job_id} deleted")


def resume(
    job_id: JobArg,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Subject's key.", show_default=False)] = None,
    api_key_env: Annotated[
        list[str], typer.Option("--api-key-env", help="[ROLE=]VAR: re-supply the key held in env var VAR.")
    ] = [],  # noqa: B006
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Also re-run errored samples.")] = False,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="Private job: the local model's URL (else from --spec).")
    ] = None,
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="Private job: ROLE=URL[@NAME] of the local model.")
    ] = [],  # noqa: B006
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Private job: read the local model's URL and key variable here.")
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Private job: write the followed log here.")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Queue a stopped job again (e.g. after a server restart lost its key); finished samples are kept.

    A private-mode job gets a new tunnel secret: this command then serves its model calls from
    the local model (like ``submit --private``) and follows its log until it ends.
    """
    keys = _key_overrides(api_key, api_key_env)
    with _client(server, token) as client:
        roles: list[str] = list(client.status(job_id).private_roles)
        local: LocalModels | None = None
        if roles:
            flag_models = _models(model, base_url, None, {r: k for r, k in keys.items() if r in roles})
            local = _local_models(roles, flag_models, spec)
            keys = {r: k for r, k in keys.items() if r not in roles}  # a private role's key stays here
        elif base_url or model or spec:
            raise InputError(
                f"job {job_id} is not a private-mode job: --base-url, --model and --spec are for private jobs",
                hint="a public job keeps the endpoints it was submitted with; re-supply only its keys",
            )
        answer = client.resume(job_id, models={r: {"api_key": k} for r, k in keys.items()}, retry_errors=retry_errors)
        console.print(f"job {job_id} {answer.job.state}")
        if local is None:
            return
        agent = _start_tunnel_agent(client, job_id, answer.tunnel_secret, local)
        try:
            final = _follow(client, job_id, log_file=log_file)
        except KeyboardInterrupt:
            err_console.print(_tunnel_stopped(job_id))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        finally:
            agent.stop()
        status = client.status(job_id)
    note = f" — {status.note}" if status.note else ""
    console.print(f"job {job_id} {final}{note}; download the results with: proctor results {job_id}")
    if final != "succeeded":
        raise typer.Exit(EXIT_SAMPLE_ERRORS)


def register(app: typer.Typer) -> None:
    """Add the remote commands to ``app``."""
    app.command("submit")(submit)
    app.command("check")(check)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("results")(results)
    app.command("list")(list_jobs)
    app.command("delete")(delete)
    app.command("resume")(resume)


__all__ = ["ProctorError", "register"]
