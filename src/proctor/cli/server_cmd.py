"""``proctor serve`` and ``proctor server token create``: running and administering a server.

Flags win over the config file (``--config server.yaml``), which wins over the defaults. The
config file is also where an admin registers command templates, datasets and cleanup hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Server config YAML (templates, datasets, hooks, any setting).")
]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Data directory (job store, job directories, server.log).")
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL (default SQLite in --data; env PROCTOR_DATABASE_URL, read in settings.py).",
    ),
]


def serve_command(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080; 0 picks a free one).")] = None,
    data: DataOpt = None,
    slots: Annotated[int | None, typer.Option(help="Jobs run at the same time (default 1).")] = None,
    queue_max: Annotated[int | None, typer.Option("--queue-max", help="Queued jobs before 503 (default 100).")] = None,
    job_timeout: Annotated[
        float | None, typer.Option("--job-timeout", help="Minutes a job may run (default 240).")
    ] = None,
    open_mode: Annotated[
        bool | None, typer.Option("--open/--no-open", help="No tokens: identify clients by IP (public demos).")
    ] = None,
    rate_limit: Annotated[
        str | None, typer.Option("--rate-limit", help="Jobs per user (or IP) and window, e.g. 3/24h.")
    ] = None,
    database_url: DbOpt = None,
    token_cache_seconds: Annotated[
        float | None,
        typer.Option("--token-cache-seconds", help="A revoked token stops working within this time (default 10)."),
    ] = None,
    tunnel_grace: Annotated[
        float | None,
        typer.Option(
            "--tunnel-grace",
            help="Private mode: seconds without a tunnel client before a job shows waiting_for_tunnel (default 30).",
        ),
    ] = None,
    tunnel_deadline: Annotated[
        float | None,
        typer.Option(
            "--tunnel-deadline",
            help="Private mode: seconds a model call may wait for the tunnel and the model (default 900).",
        ),
    ] = None,
    tunnel_max_inflight: Annotated[
        int | None,
        typer.Option(
            "--tunnel-max-inflight", help="Private mode: model calls forwarded at once per job (default 256)."
        ),
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            "--lease-seconds",
            help="Fleet: seconds without a lease renewal before another server takes a job over (default 30).",
        ),
    ] = None,
    config: ConfigOpt = None,
    no_sandbox: Annotated[
        bool,
        typer.Option(
            "--no-sandbox",
            help="Run jobs without the bubblewrap sandbox: ONLY on a trusted single-user machine "
            "(any job could then take over the server).",
        ),
    ] = False,
    ready_line: Annotated[
        str | None, typer.Option("--ready-line", hidden=True, help="Print this once listening ({port}).")
    ] = None,
) -> None:
    """Run the job server (FastAPI + uvicorn): API, queue, logs, results; OpenAPI at /docs."""
    from proctor.server.serve import serve
    from proctor.server.settings import load_settings

    settings = load_settings(
        config,
        host=host,
        port=port,
        data_dir=data,
        slots=slots,
        queue_max=queue_max,
        job_timeout=job_timeout * 60 if job_timeout is not None else None,
        open=open_mode,
        rate_limit=rate_limit,
        database_url=database_url,
        token_cache_seconds=token_cache_seconds,
        tunnel_grace=tunnel_grace,
        tunnel_request_deadline=tunnel_deadline,
        tunnel_max_inflight=tunnel_max_inflight,
        lease_seconds=lease_seconds,
    )
    if no_sandbox:
        settings = settings.model_copy(update={"sandbox": settings.sandbox.model_copy(update={"enabled": False})})
    check_sandbox(settings.sandbox.enabled)
    from proctor.executors.on_server import check_ray_address

    check_ray_address(settings.ray_address, sandboxed=settings.sandbox.enabled)
    serve(settings, on_ready=ready_line)


def check_sandbox(enabled: bool) -> None:
    """Refuse to serve without a working sandbox (naming the package), or warn loudly when it is off."""
    from proctor import sandbox

    if enabled:
        sandbox.require()
        return
    banner = "!" * 78
    typer.echo(
        f"{banner}\nWARNING: --no-sandbox: jobs run as this server's user with its view of the machine.\n"
        "Any job (and any model-written python-tool code) can read other jobs, the job store and\n"
        "this server's environment, and take the server over. Use this only on a trusted\n"
        f"single-user machine.\n{banner}",
        err=True,
    )


def token_create(
    name: Annotated[str, typer.Argument(help="Who the token is for (shown as the owner of their jobs).")],
    admin: Annotated[bool, typer.Option("--admin", help="May see, cancel and delete every job.")] = False,
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a bearer token; it is printed once and stored only as a sha256 digest."""
    with _job_store(data, database_url, config) as store:
        token = store.create_token(name, admin=admin)
    typer.echo(token)
    typer.echo(f"token for {name!r}{' (admin)' if admin else ''}: shown once, keep it secret", err=True)


def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name, as given to `token create`.")],
    data: DataOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: a running server refuses it within --token-cache-seconds (default 10)."""
    from proctor.errors import NotFoundError

    with _job_store(data, database_url, config) as store:
        if not store.revoke_token(name):
            raise NotFoundError(f"no token named {name!r}", hint="`proctor server token list` shows the names")
    typer.echo(f"revoked the token {name!r}", err=True)


def token_list(data: DataOpt = None, database_url: DbOpt = None, config: ConfigOpt = None) -> None:
    """List tokens by name (the tokens themselves are not stored)."""
    import datetime

    with _job_store(data, database_url, config) as store:
        tokens = store.list_tokens()
    for t in tokens:
        created = datetime.datetime.fromtimestamp(t["created_at"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{t['name']}\t{'admin' if t['admin'] else 'user'}\t{created}")


@contextlib.contextmanager
def _job_store(data: Path | None, database_url: str | None, config: Path | None) -> Iterator[Any]:
    from proctor._files import ensure_directory
    from proctor.server.settings import load_settings
    from proctor.server.store import JobStore

    settings = load_settings(config, data_dir=data, database_url=database_url)
    ensure_directory(settings.data_dir, what="data directory (--data)")
    store = JobStore(settings.store_url)
    try:
        yield store
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``server`` group (``server token create``) to ``app``."""
    app.command("serve")(serve_command)
    server_app = typer.Typer(help="Administer a proctor server.", no_args_is_help=True)
    token_app = typer.Typer(help="API tokens of a proctor server.", no_args_is_help=True)
    token_app.command("create")(token_create)
    token_app.command("revoke")(token_revoke)
    token_app.command("list")(token_list)
    server_app.add_typer(token_app, name="token")
    app.add_typer(server_app, name="server")


def serve_main() -> None:
    """Entry point of ``python -m proctor.server``: ``serve``'s options, errors printed like the CLI's."""
    import sys

    from proctor.errors import EXIT_INTERRUPTED, ProctorError

    app = typer.Typer(add_completion=False)
    app.command()(serve_command)
    import click

    try:
        app(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ProctorError as exc:
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["register", "serve_command", "serve_main", "token_create"]
